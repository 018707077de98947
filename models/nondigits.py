"""Seeded synthetic non-digits: what a digit classifier must learn to call "not a digit".

Pure numpy and Pillow (no torch), so training, the is_digit threshold fitting and the tests
all draw from the same generator. Every image is rendered at a realistic upload size
(48-160 px) and then brought to the models' 28x28 form by the service's own
``core.preprocess.to_mnist``, so training sees exactly what serving would see.

Seeds (one generator per pool, never shared):

* ``TRAIN_SEED`` (0): the base of the outlier-exposure pools, epoch e drawing with seed 0 + e;
* ``VALIDATION_SEED`` (1_000_000): the pool that sets each model's is_digit threshold;
* ``EVALUATION_SEED`` (2_000_000): reserved for the reported test figures and the tests,
  never used to choose anything.

The "several digits side by side" kind pastes real MNIST digits; its caller passes the
digits of the matching split (training images for the training pool, validation images for
the validation pool, test images for the evaluation pool), so no pool leaks another split.

Glyphs that look like a digit are never drawn as letters: see ``EXCLUDED_GLYPHS``.
"""

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from core.errors import InputError
from core.preprocess import to_mnist

__all__ = [
    "EVALUATION_SEED",
    "EXCLUDED_GLYPHS",
    "FONT_DIR",
    "GLYPHS",
    "KINDS",
    "TRAIN_SEED",
    "VALIDATION_SEED",
    "nondigit_pool",
    "render_kind",
    "render_nondigit",
]

TRAIN_SEED = 0
VALIDATION_SEED = 1_000_000
EVALUATION_SEED = 2_000_000

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansCondensed-Bold.ttf",
)

# Digits themselves and every glyph that a 20x20 MNIST-style crop could turn into a digit:
# round ones (0), bars and hooks (1, 7), S/Z shapes (5, 2), loops over a stem (6, 8, 9),
# open-top and forked ones (4), and strokes a single slanted line (1).
EXCLUDED_GLYPHS = frozenset(
    "0123456789"
    "OoDQUuCc"  # 0
    "lIiJjL!|/\\()[]TtΓ"  # 1, 7
    "SsZz$§"  # 5, 2
    "BbGgqadeβδ&"  # 8, 6, 9
    "AYyh"  # 4
    "ΘΦΩθφ°"  # 0 with decoration
)
GLYPHS = "EFHKMNPRVWXfkmnprvwx#%*+=@~<>?{}^πλψΔΣΠ€"
assert not set(GLYPHS) & EXCLUDED_GLYPHS

CANVAS = (48, 160)  # side lengths of a rendered image, in pixels


@cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONT_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"font {path} is missing: the non-digit generator draws letters with the DejaVu fonts "
            "(Debian/Ubuntu: apt-get install fonts-dejavu-core)"
        )
    return ImageFont.truetype(str(path), size)


def _canvas(rng: np.random.Generator, wide: bool = False) -> tuple[Image.Image, ImageDraw.ImageDraw, int]:
    """A blank greyscale canvas; returns it, its drawer and the ink level (0 or 255)."""
    height = int(rng.integers(*CANVAS))
    width = int(height * rng.uniform(1.5, 3.0)) if wide else int(height * rng.uniform(0.8, 1.25))
    dark_ink = bool(rng.random() < 0.7)  # mostly dark ink on paper, as photos and canvases send
    paper = int(rng.integers(215, 256)) if rng.random() < 0.5 else 255
    background = paper if dark_ink else int(rng.integers(0, 40))
    image = Image.new("L", (width, height), background)
    return image, ImageDraw.Draw(image), 0 if dark_ink else 255


def _points(rng: np.random.Generator, n: int, width: int, height: int, margin: float = 0.1) -> list[tuple[float, float]]:
    xs = rng.uniform(margin * width, (1 - margin) * width, n)
    ys = rng.uniform(margin * height, (1 - margin) * height, n)
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]


def _stroke(rng: np.random.Generator, size: int) -> int:
    return max(1, int(size * rng.uniform(0.03, 0.12)))


def _letters(rng: np.random.Generator, digits: np.ndarray | None) -> Image.Image:
    """One to four printed letters or symbols, none of them digit-like."""
    image, draw, ink = _canvas(rng, wide=bool(rng.random() < 0.4))
    count = 1 if rng.random() < 0.6 else int(rng.integers(2, 5))
    text = "".join(rng.choice(list(GLYPHS), count))
    size = int(image.height * rng.uniform(0.5, 0.85))
    font = _font(str(rng.choice(FONT_FILES)), size)
    draw.text((image.width / 2, image.height / 2), text, fill=ink, font=font, anchor="mm")
    return image


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, steps: int = 24) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 1.0, steps)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return [(float(x), float(y)) for x, y in curve]


def _scribble(rng: np.random.Generator, digits: np.ndarray | None) -> Image.Image:
    """A pen scribble: chained quadratic Bezier curves through 6-11 random points (fewer can draw a digit)."""
    image, draw, ink = _canvas(rng)
    points = np.array(_points(rng, int(rng.integers(6, 12)), image.width, image.height))
    path: list[tuple[float, float]] = []
    for a, b, c in zip(points[:-2], points[1:-1], points[2:], strict=True):
        path += _bezier((a + b) / 2, b, (b + c) / 2)
    draw.line(path, fill=ink, width=_stroke(rng, image.height), joint="curve")
    return image


def _star(cx: float, cy: float, radius: float, points: int, turn: float) -> list[tuple[float, float]]:
    angles = turn + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, radius, radius * 0.45)
    return [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for r, a in zip(radii, angles, strict=True)]


def _shape(rng: np.random.Generator, digits: np.ndarray | None) -> Image.Image:
    """Discs, bullseyes, rectangles, triangles, stars and crosses, outlined or filled.

    A plain ring is left out on purpose: fitted into 20x20 it is a zero.
    """
    image, draw, ink = _canvas(rng)
    w, h = image.width, image.height
    width = _stroke(rng, h)
    filled = bool(rng.random() < 0.5)
    fill, outline = (ink, ink) if filled else (None, ink)
    kind = int(rng.integers(6))
    box = (w * rng.uniform(0.05, 0.3), h * rng.uniform(0.05, 0.3), w * rng.uniform(0.7, 0.95), h * rng.uniform(0.7, 0.95))
    if kind == 0:
        draw.ellipse(box, fill=ink)
    elif kind == 1:
        for shrink in (0.0, 0.2, 0.4):
            x0, y0, x1, y1 = box
            dx, dy = (x1 - x0) * shrink / 2, (y1 - y0) * shrink / 2
            draw.ellipse((x0 + dx, y0 + dy, x1 - dx, y1 - dy), outline=ink, width=max(1, width // 2))
        draw.line([(box[0], (box[1] + box[3]) / 2), (box[2], (box[1] + box[3]) / 2)], fill=ink, width=max(1, width // 2))
    elif kind == 2:
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    elif kind == 3:
        draw.polygon(_points(rng, 3, w, h, 0.05), fill=fill, outline=outline, width=width)
    elif kind == 4:
        star = _star(w / 2, h / 2, min(w, h) * rng.uniform(0.3, 0.48), int(rng.integers(5, 8)), rng.uniform(0, np.pi))
        draw.polygon(star, fill=fill, outline=outline, width=width)
    else:
        draw.line([(box[0], box[1]), (box[2], box[3])], fill=ink, width=width)
        draw.line([(box[0], box[3]), (box[2], box[1])], fill=ink, width=width)
    return image


def _noise(rng: np.random.Generator, digits: np.ndarray | None) -> Image.Image:
    """Uniform, speckle or smooth (upsampled) noise over the whole patch."""
    height = int(rng.integers(*CANVAS))
    width = int(height * rng.uniform(0.8, 1.25))
    kind = int(rng.integers(3))
    if kind == 0:
        values = rng.uniform(0, 255, (height, width))
    elif kind == 1:
        values = np.where(rng.random((height, width)) < rng.uniform(0.02, 0.2), 255.0, 0.0)
    else:
        small = rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.float32)
        values = np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.Resampling.BICUBIC))
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")


def _several_digits(rng: np.random.Generator, digits: np.ndarray | None) -> Image.Image:
    """Two or three MNIST digits side by side (white on black, as MNIST stores them)."""
    if digits is None or len(digits) == 0:
        return _letters(rng, digits)
    count = int(rng.integers(2, 4))
    chosen = [digits[int(i)] for i in rng.integers(0, len(digits), count)]
    gap = np.zeros((28, int(rng.integers(0, 6))), dtype=np.uint8)
    row = np.concatenate([part for digit in chosen for part in (digit, gap)][:-1], axis=1)
    scale = float(rng.uniform(1.5, 4.0))
    image = Image.fromarray(row, mode="L")
    return image.resize((int(row.shape[1] * scale), int(28 * scale)), Image.Resampling.BILINEAR)


def _blob(rng: np.random.Generator, digits: np.ndarray | None) -> Image.Image:
    """Irregular filled ink blobs: thresholded smooth noise."""
    height = int(rng.integers(*CANVAS))
    width = int(height * rng.uniform(0.8, 1.25))
    small = rng.uniform(0, 1, (int(rng.integers(3, 7)), int(rng.integers(3, 7)))).astype(np.float32)
    field = np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.Resampling.BICUBIC))
    mask = field > np.quantile(field, rng.uniform(0.5, 0.85))
    ink = bool(rng.random() < 0.5)
    return Image.fromarray(np.where(mask == ink, 255, 0).astype(np.uint8), mode="L")


def _lines(rng: np.random.Generator, digits: np.ndarray | None) -> Image.Image:
    """Three or more parallel lines, a grid, or hatching (one line alone would be a 1)."""
    image, draw, ink = _canvas(rng)
    w, h = image.width, image.height
    width = max(1, _stroke(rng, h) // 2)
    count = int(rng.integers(3, 8))
    kind = int(rng.integers(3))
    offsets = np.linspace(0.1, 0.9, count)
    if kind in (0, 1):
        for f in offsets:
            draw.line([(0.05 * w, f * h), (0.95 * w, f * h)], fill=ink, width=width)
    if kind == 1 or (kind == 0 and rng.random() < 0.5):
        for f in offsets:
            draw.line([(f * w, 0.05 * h), (f * w, 0.95 * h)], fill=ink, width=width)
    if kind == 2:
        for f in np.linspace(-0.5, 1.0, 2 * count):
            draw.line([(f * w, 0.05 * h), ((f + 0.5) * w, 0.95 * h)], fill=ink, width=width)
    return image


def _screenshot(rng: np.random.Generator, digits: np.ndarray | None) -> Image.Image:
    """A wide page-like image: boxes and lines of small text."""
    image, draw, ink = _canvas(rng, wide=True)
    w, h = image.width, image.height
    for _ in range(int(rng.integers(1, 4))):
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        draw.rectangle((x0, y0, x1, y1), outline=ink, width=1)
    font = _font(str(rng.choice(FONT_FILES)), max(8, h // 6))
    for y in np.linspace(0.15, 0.85, int(rng.integers(2, 5))):
        text = "".join(rng.choice(list(GLYPHS + "      "), int(rng.integers(6, 16))))
        draw.text((0.05 * w, y * h), text, fill=ink, font=font, anchor="lm")
    return image


Renderer = Callable[[np.random.Generator, np.ndarray | None], Image.Image]
KINDS: dict[str, Renderer] = {
    "letters": _letters,
    "scribble": _scribble,
    "shape": _shape,
    "noise": _noise,
    "several_digits": _several_digits,
    "blob": _blob,
    "lines": _lines,
    "screenshot": _screenshot,
}


def render_kind(kind: str, rng: np.random.Generator, digits: np.ndarray | None = None) -> Image.Image:
    """One image of ``kind``; ``digits`` (N x 28 x 28 uint8) feeds "several_digits"."""
    image = KINDS[kind](rng, digits)
    if rng.random() < 0.3:  # a soft scan or a photo
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    return image


def render_nondigit(rng: np.random.Generator, digits: np.ndarray | None = None) -> Image.Image:
    """One non-digit of a kind drawn uniformly, at its rendered size (not yet 28x28)."""
    return render_kind(str(rng.choice(list(KINDS))), rng, digits)


def nondigit_pool(count: int, seed: int, digits: np.ndarray | None = None) -> np.ndarray:
    """``count`` non-digits as the models see them: N x 28 x 28 uint8, white on black.

    Deterministic for a seed (and digits). An image the service would refuse as blank is
    redrawn, as serving would never pass it to a model.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((count, 28, 28), dtype=np.uint8)
    for i in range(count):
        while True:
            try:
                array = to_mnist(render_nondigit(rng, digits))
                break
            except InputError:
                continue
        out[i] = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    return out
