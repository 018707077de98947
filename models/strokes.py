"""A stroke-based synthesiser of handwritten digits, in the many ways people write them.

Each digit is a pen trajectory (``models.stroke_glyphs``: control points of centripetal
Catmull-Rom curves, one list per pen stroke, in each style people use). Per sample, at
random: the control points are jittered (stroke proportions), the trajectory slanted,
stretched (aspect ratio), rotated and elastically distorted, and drawn with a round pen
whose width varies along the stroke (pressure); the drawing is anti-aliased (supersampled,
then box-reduced), white on black, and framed by the service's own
``core.preprocess.to_mnist``, so a synthesised digit is what serving would make of the
same drawing uploaded. Two degradations come with a small probability: the digit
stretched to fill a square box (as some scanners store digits) and a thick marker pen.

No font is involved anywhere: every digit comes from the trajectories alone.

Deterministic per (seed, index): ``synthesise(seed, index)`` draws from a generator seeded
with both, so any item of any pool can be rebuilt on its own (in any DataLoader worker).
The label of item ``index`` is ``index % 10``, so every ten consecutive items hold each
class once.

    python -m models.strokes --samples docs/stroke-samples.png
    python -m models.strokes --score evaluation/results/strokes.json
"""

import argparse
import itertools
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from core.preprocess import to_mnist
from models.data import Digits
from models.stroke_glyphs import VARIANTS, Stroke, Variant

__all__ = ["MARKER_P", "STRETCHED_P", "StrokeDigits", "drawn_digits", "render", "synthesise", "variants_of"]

STRETCHED_P = 0.06  # share of synthesised digits stretched to fill a square box
MARKER_P = 0.08  # share drawn with a thick marker
LONG_SIDE = 64  # pixels of the drawing's longer side before framing: to_mnist reduces it to 20
SUPERSAMPLE = 3  # the pen is drawn at this multiple, then box-reduced: anti-aliased edges
STEP = 0.015  # spacing of the dense trajectory, in glyph heights: a third of the pen's radius or less
PEN_RADIUS = (0.05, 0.08)  # of the longer side: 2-3.2 px wide once framed to 20 px, as MNIST's pens
MARKER_RADIUS = (0.11, 0.16)


@cache
def variants_of(label: int) -> tuple[Variant, ...]:
    """The styles of one digit class, in ``VARIANTS``' order."""
    return tuple(variant for variant in VARIANTS if variant.label == label)


def _span(points: np.ndarray, step: float) -> np.ndarray:
    """A dense polyline through ``points`` (n x 2, n >= 2): a centripetal Catmull-Rom curve, no cusps or loops
    between its control points; the end tangents are those of points mirrored past the ends."""
    if len(points) == 2:
        count = max(2, int(np.ceil(np.linalg.norm(points[1] - points[0]) / step)) + 1)
        return points[0] + np.linspace(0.0, 1.0, count)[:, None] * (points[1] - points[0])
    padded = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    pieces = [points[:1]]
    for p0, p1, p2, p3 in (padded[i : i + 4] for i in range(len(points) - 1)):
        t1 = np.linalg.norm(p1 - p0) ** 0.5 + 1e-6
        t2 = t1 + np.linalg.norm(p2 - p1) ** 0.5 + 1e-6
        t3 = t2 + np.linalg.norm(p3 - p2) ** 0.5 + 1e-6
        count = max(1, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(t1, t2, count + 1)[1:, None]
        a1 = (t1 - t) / t1 * p0 + t / t1 * p1
        a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
        a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
        b1 = (t2 - t) / t2 * a1 + t / t2 * a2
        b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
        pieces.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
    return np.vstack(pieces)


def _trajectory(stroke: Stroke, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """The dense path of one pen stroke, its control points jittered; smooth pieces meet at corners."""
    points = np.array([point[:2] for point in stroke], dtype=np.float64)
    points += rng.normal(0.0, jitter, points.shape)
    corners = [0, *(i for i, point in enumerate(stroke) if len(point) == 3 and 0 < i < len(stroke) - 1), len(stroke) - 1]
    pieces = [_span(points[start : end + 1], STEP) for start, end in itertools.pairwise(corners)]
    return np.vstack([pieces[0], *(piece[1:] for piece in pieces[1:])])


def _placed(path: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stroke drawn after a pen lift: put down a little off its place, a little longer or shorter."""
    centre = path.mean(axis=0)
    return centre + rng.normal(0.0, 0.035, 2) + (path - centre) * float(np.exp(rng.normal(0.0, 0.12)))


def _shaped(paths: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The writer's hand: aspect ratio, slant, rotation, then a smooth elastic displacement."""
    aspect = float(np.exp(rng.normal(0.0, 0.18)))
    slant = rng.normal(0.18, 0.15)  # x shift per unit of height, towards the right at the top
    angle = np.deg2rad(rng.normal(0.0, 5.0))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rotation @ np.array([[aspect, -slant], [0.0, 1.0]])
    waves = rng.uniform(0.6, 1.6, 3)[:, None] * _unit(rng.uniform(0.0, 2 * np.pi, 3))  # cycles per glyph height
    phases = rng.uniform(0.0, 2 * np.pi, 3)
    amplitudes = rng.uniform(0.0, 0.03) * rng.normal(0.0, 1.0, (3, 2)) / np.sqrt(3)
    shaped = []
    for path in paths:
        moved = (path - (0.3, 0.5)) @ linear.T
        shaped.append(moved + np.sin(2 * np.pi * moved @ waves.T + phases) @ amplitudes)
    return shaped


def _unit(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _pressure(path: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relative pen width along one stroke: a slow swell, thinner where the pen lands and lifts."""
    lengths = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    s = lengths / max(float(lengths[-1]), 1e-6)
    swell = 1.0 + rng.uniform(0.0, 0.25) * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * s + rng.uniform(0.0, 1.0)))
    ends = np.minimum(lengths, lengths[-1] - lengths) / 0.06
    landing = rng.uniform(0.5, 1.0)
    return np.asarray(swell * (landing + (1.0 - landing) * np.clip(ends, 0.0, 1.0)))


def _draw(paths: list[np.ndarray], widths: list[np.ndarray], radius: float) -> Image.Image:
    """White ink on black, the longer side LONG_SIDE px; a round pen of ``radius`` (a share of the longer side)."""
    everything = np.vstack(paths)
    low, high = everything.min(axis=0), everything.max(axis=0)
    scale = LONG_SIDE * SUPERSAMPLE / max(float((high - low).max()), 1e-3)
    pen = radius * LONG_SIDE * SUPERSAMPLE
    margin = int(np.ceil(1.5 * pen)) + 2 * SUPERSAMPLE
    size = np.ceil((high - low) * scale).astype(int) + 2 * margin
    size = SUPERSAMPLE * -(-size // SUPERSAMPLE)  # whole pixels once reduced
    canvas = Image.new("L", (int(size[0]), int(size[1])), 0)
    draw = ImageDraw.Draw(canvas)
    for path, width in zip(paths, widths, strict=True):
        pixels = (path - low) * scale + margin
        radii = pen * width
        for (x, y), r in zip(pixels.tolist(), radii.tolist(), strict=True):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return canvas.reduce(SUPERSAMPLE)


def _stretched(image: Image.Image) -> Image.Image:
    """The drawing cropped to its ink and stretched to a square, as some scanners store a digit."""
    box = image.getbbox()
    assert box is not None  # every glyph has ink
    crop = image.crop(box)
    side = max(crop.size)
    return crop.resize((side, side), Image.Resampling.BILINEAR)


def render(variant: Variant, rng: np.random.Generator, *, stretched: bool = False, marker: bool = False) -> np.ndarray:
    """One random drawing of ``variant``, framed as MNIST frames a digit: 28 x 28 float32 in [0, 1]."""
    strokes = [*variant.strokes, *(stroke for p, stroke in variant.optional if rng.random() < p)]
    jitter = rng.uniform(0.01, 0.035)
    paths = [_trajectory(stroke, rng, jitter) for stroke in strokes]
    paths = _shaped([paths[0], *(_placed(path, rng) for path in paths[1:])], rng)
    widths = [_pressure(path, rng) for path in paths]
    image = _draw(paths, widths, rng.uniform(*(MARKER_RADIUS if marker else PEN_RADIUS)))
    if stretched:
        image = _stretched(image)
    return to_mnist(image)


def synthesise(seed: int, index: int) -> tuple[np.ndarray, int]:
    """Item ``index`` of the pool ``seed``: a digit of class ``index % 10`` in one of its styles, at random."""
    rng = np.random.default_rng((seed, index))
    label = index % 10
    styles = variants_of(label)
    variant = styles[int(rng.integers(len(styles)))]
    stretched, marker = bool(rng.random() < STRETCHED_P), bool(rng.random() < MARKER_P)
    return render(variant, rng, stretched=stretched, marker=marker), label


class StrokeDigits(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``length`` synthesised digits, items ``offset`` .. ``offset + length - 1`` of the pool ``seed``:
    each a 1 x 28 x 28 float32 tensor in [0, 1] (white on black, framed as MNIST) and its int64 label.
    With ``transform`` (a per-image augmentation of ``models.augment``), each image is passed
    through it as 1 x 28 x 28 uint8 and returned as it answers."""

    def __init__(self, length: int, seed: int, offset: int = 0, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.length, self.seed, self.offset, self.transform = length, seed, offset, transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthesised digits")
        image, label = synthesise(self.seed, self.offset + index)
        drawn = torch.from_numpy(image).unsqueeze(0)
        if self.transform is not None:
            drawn = self.transform((drawn * 255.0).round().to(torch.uint8))
        return drawn, torch.tensor(label, dtype=torch.long)


def drawn_digits(count: int, seed: int) -> Digits:
    """Items 0 .. ``count`` - 1 of the pool ``seed`` as uint8 digits (a fixed set to measure on)."""
    images = np.stack([synthesise(seed, index)[0] for index in range(count)])
    return Digits(torch.from_numpy(np.rint(images * 255).astype(np.uint8)), torch.arange(count) % 10)


def main(argv: list[str] | None = None) -> int:
    from models import stroke_report  # matplotlib and the weights: only for these commands

    parser = argparse.ArgumentParser(
        prog="python -m models.strokes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=Path, metavar="PNG", help="write a grid of samples: a row per style, and the two degradations")
    parser.add_argument("--score", type=Path, metavar="JSON", help="score the committed weights per style and write the figures")
    parser.add_argument("--per-variant", type=int, default=2000, metavar="N", help="digits scored per style [default: 2000]")
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"), metavar="DIR", help="[default: weights]")
    args = parser.parse_args(argv)
    if args.samples is None and args.score is None:
        parser.error("nothing to do: give --samples PNG and/or --score JSON")
    if args.samples is not None:
        stroke_report.plot_samples(args.samples)
    if args.score is not None:
        command = " ".join(["python -m models.strokes", *(sys.argv[1:] if argv is None else argv)])
        stroke_report.write_scores(args.score, args.weights_dir, args.per_variant, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
