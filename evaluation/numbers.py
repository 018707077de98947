"""Written numbers of 2-8 MNIST digits, read through the running HTTP service (``POST /read``).

    python -m evaluation.numbers                           # starts `python -m service` itself
    python -m evaluation.numbers --url http://host:8000 --per-style 100 --model resnet
    python -m evaluation.numbers --split train             # tuning renders training digits only

Nothing is stored: each number is generated from a seed. A number is a row of different
MNIST *test* digits (``--split test``), each drawn with ``evaluation.corpus.pen_ink`` at
about one height (a few percent apart, its centre a little off the line), side by side with
a gap between their inks ("apart"), or with one pair slid together until their strokes
touch ("touching"). The row is then rendered in a style: photographed on paper or scanned
(``evaluation.corpus.Photo``: paper, pen, light, noise, JPEG or 1 bit), or drawn on a
canvas (alpha = ink, or black on white). Each style renders numbers of its own (the same
lengths in turn, a touching pair in the same share), so that the rates rest on many different
numbers.

Each image goes to ``POST /read`` as a multipart ``files`` part, in batches, as a client
sends it. A number is read exactly when the reading's ``text`` is its digits; the digit
rate is 1 - (edit distance / digits), floored at 0, so a digit dropped or doubled costs one.
Written to ``--out`` (default ``evaluation/results/numbers.json``) with Markdown tables.
"""

import argparse
import json
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from evaluation import corpus, mnist
from evaluation.server import ROOT, add_server_flags, model_weights, server_url

__all__ = ["NUMBER_STYLES", "NumberSpec", "Scored", "edit_distance", "main", "number_ink", "number_specs", "render_number"]

LENGTHS = range(2, 9)
TARGET_LENGTHS = range(2, 7)  # the target: numbers of 2-6 digits standing apart read exactly...
TARGET = 0.97  # ...this often
TOUCHING_SHARE = 0.4  # of the numbers, this share has one touching pair


@dataclass(frozen=True)
class NumberSpec:
    """Which test digits (indices into the split), and which pair touches (its left digit; -1: none)."""

    indices: tuple[int, ...]
    touching: int


def number_specs(count: int, digits: int, seed: int, style: str = "") -> list[NumberSpec]:
    """``count`` numbers of ``style``, their lengths cycling through LENGTHS, digits drawn without repeats within a number."""
    rng = np.random.default_rng([seed, zlib.crc32(style.encode()), 0x6E756D])
    specs = []
    for index in range(count):
        length = LENGTHS[index % len(LENGTHS)]
        chosen = tuple(int(i) for i in rng.choice(digits, size=length, replace=False))
        touching = int(rng.integers(0, length - 1)) if rng.random() < TOUCHING_SHARE else -1
        specs.append(NumberSpec(chosen, touching))
    return specs


# --- a row of digits as ink ---------------------------------------------------------------


def _columns(ink: np.ndarray) -> tuple[int, int]:
    cols = np.flatnonzero(ink.max(axis=0) > 0.05)
    return int(cols[0]), int(cols[-1]) + 1


def _touch_left(previous: np.ndarray, at: tuple[int, int], ink: np.ndarray, row: int, start: int) -> int:
    """The largest column left of ``start`` at which ``ink`` (its top at ``row``) touches ``previous``
    (at ``at``: top, left), diagonally included."""
    grown = np.pad(previous > 0.5, 1)  # one pixel more on every side: 8-neighbours touch
    grown = grown | np.roll(grown, 1, 0) | np.roll(grown, -1, 0)
    grown = grown | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
    gy, gx = at[0] - 1, at[1] - 1
    mask = ink > 0.5
    y0, y1 = max(gy, row), min(gy + grown.shape[0], row + mask.shape[0])
    for x in range(start, gx - mask.shape[1], -1):
        x0, x1 = max(gx, x), min(gx + grown.shape[1], x + mask.shape[1])
        if y0 < y1 and x0 < x1 and (grown[y0 - gy : y1 - gy, x0 - gx : x1 - gx] & mask[y0 - row : y1 - row, x0 - x : x1 - x]).any():
            return x
    return start


def number_ink(images: np.ndarray, touching: int, rng: np.random.Generator, height: int, level: float) -> np.ndarray:
    """The digits (k x 28 x 28 MNIST images) in a row as pen ink in [0, 1], ``height`` px tall each (give or take).

    Digits stand 0.15-0.45 of the height apart (between their inks); the pair starting at
    ``touching`` is slid together until their strokes touch, and 0-2 px further.
    """
    inks = [corpus.pen_ink(image, max(8, round(height * rng.uniform(0.94, 1.06))), level=level) for image in images]
    tops = [round(height * rng.uniform(-0.05, 0.05)) - ink.shape[0] // 2 for ink in inks]  # centres about on one line
    lefts: list[int] = []
    cursor = 0  # the column after the previous digits' ink
    for i, ink in enumerate(inks):
        first, last = _columns(ink)
        if i == 0:
            left = -first
        elif i - 1 == touching:
            left = _touch_left(inks[i - 1], (tops[i - 1], lefts[-1]), ink, tops[i], cursor + 1 - first) - int(rng.integers(0, 3))
        else:
            left = cursor + round(height * rng.uniform(0.15, 0.45)) - first
        lefts.append(left)
        cursor = max(cursor, left + last)
    top, origin = min(tops), min(lefts)
    line = np.zeros(
        (
            max(t - top + ink.shape[0] for t, ink in zip(tops, inks, strict=True)),
            max(x - origin + ink.shape[1] for x, ink in zip(lefts, inks, strict=True)),
        ),
        np.float32,
    )
    for left, row, ink in zip(lefts, tops, inks, strict=True):
        window = line[row - top : row - top + ink.shape[0], left - origin : left - origin + ink.shape[1]]
        np.maximum(window, ink, out=window)
    return line


# --- styles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NumberStyle:
    name: str
    family: str
    description: str
    photo: corpus.Photo | None  # None: a canvas
    transparent: bool = False


def _sheet(line: np.ndarray, rng: np.random.Generator, margin: tuple[float, float]) -> np.ndarray:
    """The row on a sheet with margins of ``margin`` (shares of the row's height) on every side."""
    rows, cols = line.shape
    top, bottom, left, right = (round(rows * rng.uniform(*margin)) for _ in range(4))
    sheet = np.zeros((rows + top + bottom, cols + left + right), np.float32)
    sheet[top : top + rows, left : left + cols] = line
    return sheet


def _photo(spec: corpus.Photo, coverage: np.ndarray, rng: np.random.Generator) -> bytes:
    """The ink as ``corpus.photo`` shoots a digit: pen on tinted paper, light, noise, then JPEG, PNG or 1 bit."""
    if spec.rotate:
        coverage = corpus._rotated(coverage, corpus._uniform(rng, (-spec.rotate, spec.rotate)))
    coverage = coverage * corpus._uniform(rng, spec.pen_strength)
    height, width = coverage.shape
    if spec.specks:
        corpus._specks(coverage, int(rng.integers(1, spec.specks + 1)), rng)
    paper = corpus._uniform(rng, spec.paper) * (1 + (rng.uniform(-0.03, 0.03, size=3) if spec.tint else np.zeros(3)))
    pen = np.asarray(corpus.PENS[str(rng.choice(spec.pens))], np.float32)
    surface = paper[None, None, :] * (1 - coverage[..., None]) + pen[None, None, :] * coverage[..., None]
    if spec.uneven:
        surface = surface * corpus._light((height, width), spec.uneven, rng)[..., None]
    sigma = corpus._uniform(rng, spec.noise)
    if sigma > 0:
        surface = surface + rng.normal(0, sigma, surface.shape)
    pixels = np.clip(np.rint(surface), 0, 255).astype(np.uint8)
    if spec.one_bit:
        grey = pixels.mean(axis=2)
        return corpus._encode(Image.fromarray(grey > 0.5 * (grey.max() + grey.min())).convert("1"), "PNG")
    if spec.jpeg is None:
        return corpus._encode(Image.fromarray(pixels, mode="RGB"), "PNG")
    return corpus._encode(Image.fromarray(pixels, mode="RGB"), "JPEG", quality=int(rng.integers(spec.jpeg[0], spec.jpeg[1] + 1)))


def _canvas(transparent: bool, coverage: np.ndarray) -> bytes:
    alpha = np.rint(coverage * 255).astype(np.uint8)
    if transparent:
        rgba = np.zeros((*alpha.shape, 4), np.uint8)
        rgba[..., 3] = alpha
        return corpus._encode(Image.fromarray(rgba, mode="RGBA"), "PNG")
    return corpus._encode(Image.fromarray(255 - alpha, mode="L").convert("RGB"), "PNG")


_PAPER = partial(corpus.Photo, digit=(40, 110))
NUMBER_STYLES: dict[str, NumberStyle] = {
    style.name: style
    for style in (
        NumberStyle("paper", "paper", "black pen on off-white to grey paper, JPEG", _PAPER(paper=(180.0, 250.0))),
        NumberStyle("paper-uneven", "paper", "light falling off across the page", _PAPER(paper=(200.0, 250.0), uneven=0.3)),
        NumberStyle("paper-noisy", "paper", "strong sensor noise and heavy JPEG", _PAPER(noise=(5.0, 9.0), jpeg=(50, 65))),
        NumberStyle("paper-specks", "paper", "dust and dots beside the digits", _PAPER(specks=8)),
        NumberStyle("pen-blue", "paper", "blue ballpoint", _PAPER(pens=("blue",))),
        NumberStyle("pencil", "paper", "grey pencil, fainter", _PAPER(pens=("pencil",), pen_strength=(0.6, 0.9))),
        NumberStyle("scan-clean", "scan", "clean white scan, PNG", _PAPER(paper=(245.0, 255.0), noise=(0.0, 1.0), jpeg=None, tint=False)),
        NumberStyle(
            "scan-rotated",
            "scan",
            "scan rotated up to 3 degrees",
            _PAPER(paper=(240.0, 255.0), noise=(0.5, 2.0), jpeg=(85, 95), rotate=3.0),
        ),
        NumberStyle(
            "scan-1bit", "scan", "black-and-white (1-bit) scan", _PAPER(paper=(240.0, 255.0), noise=(0.0, 2.0), jpeg=None, one_bit=True)
        ),
        NumberStyle("canvas-rgba", "canvas", "HTML canvas export: transparent, alpha = ink", None, transparent=True),
        NumberStyle("canvas-white", "canvas", "black drawing on a white canvas", None),
    )
}


def render_number(style: str, images: np.ndarray, touching: int, rng: np.random.Generator, height: int | None = None) -> bytes:
    """One number (its digits as k x 28 x 28 MNIST images) in one style, as the bytes of an image file;
    ``height``: the digits' height in pixels (default: drawn from the style's range)."""
    entry = NUMBER_STYLES[style]
    if entry.photo is None:  # drawn with a mouse or a finger: a thick pen, digits about a third of the canvas
        drawn = int(rng.integers(60, 121))
        line = number_ink(images, touching, rng, height or drawn, corpus._uniform(rng, (0.3, 0.5)))
        return _canvas(entry.transparent, _sheet(line, rng, (0.15, 0.6)))
    spec = entry.photo
    drawn = int(rng.integers(spec.digit[0], spec.digit[1] + 1))
    line = number_ink(images, touching, rng, height or drawn, corpus._uniform(rng, spec.level))
    return _photo(spec, _sheet(line, rng, (0.2, 0.8)), rng)


def iter_numbers(style: str, specs: list[NumberSpec], digits: mnist.Digits, seed: int) -> Iterator[bytes]:
    for index, spec in enumerate(specs):
        yield render_number(style, digits.images[list(spec.indices)], spec.touching, corpus.style_rng(seed, "number-" + style, index))


# --- scoring through HTTP -------------------------------------------------------------------


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest digits dropped, added or changed to turn ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


@dataclass(frozen=True)
class Scored:
    """One number as read: its style, its digits, what was read, and whether a pair touched."""

    style: str
    truth: str
    read: str
    touching: bool

    @property
    def exact(self) -> bool:
        return self.read == self.truth

    @property
    def digit_rate(self) -> float:
        return max(0.0, 1.0 - edit_distance(self.truth, self.read) / len(self.truth))


def _part(name: str, data: bytes) -> tuple[str, tuple[str, bytes, str]]:
    kind = ("jpg", "image/jpeg") if data.startswith(b"\xff\xd8\xff") else ("png", "image/png")
    return ("files", (f"{name}.{kind[0]}", data, kind[1]))


def read_numbers(http: httpx.Client, model: str, images: list[bytes], names: list[str], batch: int) -> list[str]:
    """The text ``POST /read`` gives for each image, sent ``batch`` images per request."""
    texts: list[str] = []
    for start in range(0, len(images), batch):
        parts = [_part(name, data) for name, data in zip(names[start : start + batch], images[start : start + batch], strict=True)]
        response = http.post("/read", params={"model": model}, files=parts)
        response.raise_for_status()  # no image of this set is the client's error: any 4xx here is a bug
        texts.extend(reading["text"] for reading in response.json()["readings"])
    return texts


def _summary(scored: list[Scored]) -> dict[str, float | int]:
    if not scored:
        return {"numbers": 0, "exact": 0.0, "digit_rate": 0.0, "length_right": 0.0}
    return {
        "numbers": len(scored),
        "exact": sum(s.exact for s in scored) / len(scored),
        "digit_rate": sum(s.digit_rate for s in scored) / len(scored),
        "length_right": sum(len(s.read) == len(s.truth) for s in scored) / len(scored),
    }


def _cell(scored: list[Scored]) -> str:
    summary = _summary(scored)
    return f"{summary['exact']:.1%} ({summary['numbers']})" if summary["numbers"] else "-"


def tables(scored: list[Scored]) -> dict[str, str]:
    """Markdown: exact-match rate (numbers) by group, by style and by length; digit rates beside."""
    short = [s for s in scored if len(s.truth) in TARGET_LENGTHS]
    groups = {
        "apart, 2-6 digits": [s for s in short if not s.touching],
        "apart, 7-8 digits": [s for s in scored if len(s.truth) not in TARGET_LENGTHS and not s.touching],
        "one touching pair, 2-6 digits": [s for s in short if s.touching],
        "one touching pair, 7-8 digits": [s for s in scored if len(s.truth) not in TARGET_LENGTHS and s.touching],
        "all": scored,
    }
    lines = ["| numbers | read exactly | digits read | as many digits as written | count |", "| --- | --- | --- | --- | --- |"]
    for name, members in groups.items():
        summary = _summary(members)
        lines.append(
            f"| {name} | {summary['exact']:.1%} | {summary['digit_rate']:.1%} | {summary['length_right']:.1%} | {summary['numbers']} |"
        )
    style_lines = ["| style | family | apart, 2-6 digits | apart, 7-8 | touching, 2-6 | touching, 7-8 | digits read |"]
    style_lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for name, style in NUMBER_STYLES.items():
        own = [s for s in scored if s.style == name]
        if not own:
            continue
        cells = [
            _cell([s for s in own if (len(s.truth) in TARGET_LENGTHS) == short_ and s.touching == touching])
            for touching in (False, True)
            for short_ in (True, False)
        ]
        style_lines.append(f"| `{name}` | {style.family} | {' | '.join(cells)} | {_summary(own)['digit_rate']:.1%} |")
    length_lines = ["| digits | apart | one touching pair |", "| --- | --- | --- |"]
    for length in LENGTHS:
        own = [s for s in scored if len(s.truth) == length]
        length_lines.append(f"| {length} | {_cell([s for s in own if not s.touching])} | {_cell([s for s in own if s.touching])} |")
    return {"groups": "\n".join(lines), "styles": "\n".join(style_lines), "lengths": "\n".join(length_lines)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_flags(parser)
    parser.add_argument("--per-style", type=int, default=280, help="numbers rendered in every style (lengths 2-8 in turn)")
    parser.add_argument("--styles", nargs="+", choices=sorted(NUMBER_STYLES), help="default: every style")
    parser.add_argument("--batch", type=int, default=16, help="images per request")
    parser.add_argument("--out", type=Path, default=ROOT / "evaluation" / "results" / "numbers.json", help="where the JSON result goes")
    return parser


def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """Render and read every chosen style's numbers through the server at ``url``; the JSON-ready result."""
    digits = mnist.load(args.data_dir, train=args.split == "train")
    started = time.perf_counter()
    scored: list[Scored] = []
    with httpx.Client(base_url=url, timeout=300) as http:
        weights = model_weights(http)
        for style in args.styles or list(NUMBER_STYLES):
            specs = number_specs(args.per_style, len(digits), args.seed, style)
            truths = ["".join(str(int(digits.labels[i])) for i in spec.indices) for spec in specs]
            images = list(iter_numbers(style, specs, digits, args.seed))
            texts = read_numbers(http, args.model, images, [f"{style}-{i}" for i in range(len(images))], args.batch)
            own = [Scored(style, truth, text, spec.touching >= 0) for truth, text, spec in zip(truths, texts, specs, strict=True)]
            scored.extend(own)
            summary = _summary([s for s in own if not s.touching and len(s.truth) in TARGET_LENGTHS])
            print(f"{style:14s} apart 2-6: {summary['exact']:.1%}", file=sys.stderr, flush=True)
    target = _summary([s for s in scored if not s.touching and len(s.truth) in TARGET_LENGTHS])
    return {
        "command": "python -m evaluation.numbers " + " ".join(sys.argv[1:]),
        "model": args.model,
        "split": args.split,
        "seed": args.seed,
        "per_style": args.per_style,
        "weights_sha256": weights,
        "wall_s": round(time.perf_counter() - started, 1),
        "target": {"numbers": "apart, 2-6 digits", "exact": TARGET, "met": target["exact"] >= TARGET, **target},
        "touching": _summary([s for s in scored if s.touching]),
        "apart": _summary([s for s in scored if not s.touching]),
        "tables": tables(scored),
        "errors": {
            style: [
                f"{s.truth} -> {s.read or '(nothing)'}{' (touching)' if s.touching else ''}"
                for s in scored
                if s.style == style and not s.exact
            ]
            for style in args.styles or list(NUMBER_STYLES)
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with server_url(args, "numbers") as url:
        result = run(args, url)
    for table in result["tables"].values():
        print(table + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
