"""MNIST digits rendered the ways people send them: photos of paper, scans, canvases, tiny icons.

Each style is a named render function ``(digit, rng) -> encoded image bytes`` in ``STYLES``;
``digit`` is a 28x28 uint8 array, white on black (an MNIST image), ``rng`` the only source
of randomness, so a style renders the same bytes for the same digit and seed. The source
digits are arrays, not a data set: the reported corpus renders MNIST *test* digits, threshold
tuning renders *training* digits only. Another source of shapes (e.g. non-digits) renders
through the same styles, and further styles are added with ``register``.

How a digit becomes ink: the MNIST image is cropped to its strokes, scaled up smoothly to
the style's size and turned into a pen stroke by a soft threshold of the smooth intensity
(a low level draws a thick pen, a high one a thin pen), so stroke edges are crisp but
anti-aliased, as a pen's are. That ink is composited as dark ink on lit paper
(``pixel = light * (paper * (1 - ink) + pen * ink)``), then the camera's noise and JPEG.
"""

import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["STYLES", "Style", "iter_rendered", "register", "render", "style_rng"]

Render = Callable[[np.ndarray, np.random.Generator], bytes]

PENS: dict[str, tuple[float, float, float]] = {  # reflectance of the ink, 0-255 per channel
    "black": (25.0, 25.0, 30.0),
    "blue": (25.0, 45.0, 150.0),
    "red": (185.0, 30.0, 35.0),
    "pencil": (95.0, 95.0, 100.0),
}


@dataclass(frozen=True)
class Style:
    """A named way of rendering; ``family`` groups styles under one accuracy target."""

    name: str
    family: str
    render: Render
    description: str


STYLES: dict[str, Style] = {}
TARGETS = {"paper": 0.99, "scan": 0.99, "canvas": 0.99, "low-resolution": 0.97}


def register(name: str, family: str, render_fn: Render, description: str) -> Style:
    """Add a style; names are unique so that results stay comparable across runs."""
    if name in STYLES:
        raise ValueError(f"style {name!r} is already registered")
    style = Style(name, family, render_fn, description)
    STYLES[name] = style
    return style


def style_rng(seed: int, style: str, index: int) -> np.random.Generator:
    """The generator for one image: a function of the seed, the style's name and the digit's index."""
    return np.random.default_rng([seed, zlib.crc32(style.encode()), index])


def render(style: str, digit: np.ndarray, seed: int, index: int) -> bytes:
    """One digit in one style, as the bytes of an image file."""
    return STYLES[style].render(digit, style_rng(seed, style, index))


def iter_rendered(style: str, digits: np.ndarray, seed: int) -> Iterator[bytes]:
    """Every digit of ``digits`` (N x 28 x 28 uint8) in ``style``, in order."""
    for index, digit in enumerate(digits):
        yield render(style, digit, seed, index)


# --- the digit as ink ---------------------------------------------------------------------


def _crop_to_ink(digit: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(digit.max(axis=1) > 0)
    cols = np.flatnonzero(digit.max(axis=0) > 0)
    if rows.size == 0:
        return digit.astype(np.float32) / 255.0
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255.0


def _smooth_step(values: np.ndarray, level: float, softness: float) -> np.ndarray:
    t = np.clip((values - (level - softness)) / (2 * softness), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def pen_ink(digit: np.ndarray, height: int, *, level: float = 0.45, thicken: int = 0) -> np.ndarray:
    """The digit ``height`` px tall as pen ink in [0, 1]: smooth upscaling, then a soft threshold.

    ``level`` is where the smooth intensity becomes ink (lower: thicker pen); ``thicken`` px
    more are added on every side by a max filter, for felt pens.
    """
    crop = _crop_to_ink(digit)
    rows, cols = crop.shape
    width = max(1, round(cols * height / rows))
    pad = 2
    framed = np.pad(crop, pad)
    scale = height / rows
    size = (width + round(2 * pad * scale), height + round(2 * pad * scale))
    smooth = np.asarray(Image.fromarray(framed, mode="F").resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    softness = 0.5 / max(1.0, scale) + 0.04  # about one output pixel of anti-aliased edge
    ink = _smooth_step(smooth, level, softness)
    if thicken > 0:
        image = Image.fromarray(np.rint(ink * 255).astype(np.uint8), mode="L").filter(ImageFilter.MaxFilter(2 * thicken + 1))
        ink = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32) / 255.0
    return ink


def _largest_height(digit: np.ndarray, picture: tuple[int, int], share: float = 0.8) -> int:
    """The tallest the digit may be drawn so that its ink, margin included, fits ``share`` of the picture."""
    rows, cols = _crop_to_ink(digit).shape
    margin = 1 + 4 / rows  # pen_ink's frame of 2 source pixels on each side
    return max(8, int(share * min(picture[0] / margin, picture[1] * rows / cols / margin)))


def _rotated(ink: np.ndarray, degrees: float) -> np.ndarray:
    image = Image.fromarray(ink, mode="F").rotate(degrees, Image.Resampling.BICUBIC, expand=True)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


# --- paper, light, camera -----------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """How a page is shot: paper grey, pen, digit size and place, light, noise, file format."""

    paper: tuple[float, float] = (180.0, 250.0)  # grey level of the paper, 0-255
    pens: tuple[str, ...] = ("black",)
    picture: tuple[int, int] = (112, 400)  # side lengths of the picture, px
    digit: tuple[int, int] = (80, 300)  # digit height, px (at most 0.85 of the shorter side)
    level: tuple[float, float] = (0.35, 0.55)  # pen threshold: lower is thicker
    thicken: tuple[float, float] = (0.0, 0.0)  # felt pens: this share of the digit height more on every side
    uneven: float = 0.0  # strength of the light's gradient and vignette
    noise: tuple[float, float] = (1.5, 5.0)  # sensor noise sigma, 0-255
    jpeg: tuple[int, int] | None = (60, 90)
    rotate: float = 0.0  # at most this many degrees either way
    at_edge: bool = False  # the digit touches the picture's border
    specks: int = 0  # dust and dots of ink beside the digit
    one_bit: bool = False
    tint: bool = True  # paper slightly warm or cool
    pen_strength: tuple[float, float] = (0.9, 1.0)  # how fully the pen covers the paper


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _light(shape: tuple[int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Illumination in (0, 1]: a linear gradient in a random direction plus a vignette."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys = ys / max(1, height - 1) - 0.5
    xs = xs / max(1, width - 1) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys) + 0.5  # 0..1 across the picture, roughly
    cy, cx = rng.uniform(-0.25, 0.25, size=2)
    vignette = ((xs - cx) ** 2 + (ys - cy) ** 2) * 2.0
    gradient_share = rng.uniform(0.4, 0.8)
    light = 1.0 - strength * (gradient_share * np.clip(ramp, 0, 1) + (1 - gradient_share) * np.clip(vignette, 0, 1))
    return light.astype(np.float32)


def _place(picture: tuple[int, int], ink: np.ndarray, rng: np.random.Generator, at_edge: bool) -> tuple[int, int]:
    height, width = picture
    rows, cols = ink.shape
    top = int(rng.integers(0, max(1, height - rows + 1)))
    left = int(rng.integers(0, max(1, width - cols + 1)))
    if at_edge:
        side = int(rng.integers(4))
        top = [0, height - rows, top, top][side]
        left = [left, left, 0, width - cols][side]
    return top, left


def _specks(mask: np.ndarray, count: int, rng: np.random.Generator) -> None:
    height, width = mask.shape
    for _ in range(count):
        radius = rng.uniform(0.8, 2.5)
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        y0, y1 = max(0, int(y - 3)), min(height, int(y + 4))
        x0, x1 = max(0, int(x - 3)), min(width, int(x + 4))
        ys, xs = np.mgrid[y0:y1, x0:x1]
        dot = np.clip(radius + 0.5 - np.hypot(ys - y, xs - x), 0, 1) * rng.uniform(0.4, 0.9)
        mask[y0:y1, x0:x1] = np.maximum(mask[y0:y1, x0:x1], dot)


def photo(spec: Photo, digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The digit in pen on a sheet of paper, as a camera or a scanner delivers it."""
    height, width = (int(rng.integers(spec.picture[0], spec.picture[1] + 1)) for _ in range(2))
    longest = min(spec.digit[1], _largest_height(digit, (height, width)))
    digit_height = int(rng.integers(min(spec.digit[0], longest), longest + 1))
    ink = pen_ink(digit, digit_height, level=_uniform(rng, spec.level), thicken=round(digit_height * _uniform(rng, spec.thicken)))
    if spec.rotate:
        ink = _rotated(ink, _uniform(rng, (-spec.rotate, spec.rotate)))
    ink = ink[:height, :width]
    top, left = _place((height, width), ink, rng, spec.at_edge)
    coverage = np.zeros((height, width), np.float32)
    coverage[top : top + ink.shape[0], left : left + ink.shape[1]] = ink * _uniform(rng, spec.pen_strength)
    if spec.specks:
        _specks(coverage, int(rng.integers(1, spec.specks + 1)), rng)
    paper = _uniform(rng, spec.paper) * (1 + (rng.uniform(-0.03, 0.03, size=3) if spec.tint else np.zeros(3)))
    pen = np.asarray(PENS[str(rng.choice(spec.pens))], np.float32)
    surface = paper[None, None, :] * (1 - coverage[..., None]) + pen[None, None, :] * coverage[..., None]
    if spec.uneven:
        surface = surface * _light((height, width), spec.uneven, rng)[..., None]
    sigma = _uniform(rng, spec.noise)
    if sigma > 0:
        surface = surface + rng.normal(0, sigma, surface.shape)
    pixels = np.clip(np.rint(surface), 0, 255).astype(np.uint8)
    if spec.one_bit:
        grey = pixels.mean(axis=2)
        return _encode(Image.fromarray(grey > 0.5 * (grey.max() + grey.min())).convert("1"), "PNG")
    image = Image.fromarray(pixels, mode="RGB")
    if spec.jpeg is None:
        return _encode(image, "PNG")
    return _encode(image, "JPEG", quality=int(rng.integers(spec.jpeg[0], spec.jpeg[1] + 1)))


def _encode(image: Image.Image, fmt: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --- canvases -----------------------------------------------------------------------------


def canvas(transparent: bool, digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A finger or mouse drawing: an HTML canvas export (alpha = ink) or black on a white canvas."""
    side = int(rng.integers(200, 401))
    longest = _largest_height(digit, (side, side))
    ink = pen_ink(digit, int(rng.integers(min(side // 2, longest), longest + 1)), level=_uniform(rng, (0.3, 0.5)))
    ink = ink[:side, :side]
    top, left = _place((side, side), ink, rng, at_edge=False)
    alpha = np.zeros((side, side), np.float32)
    alpha[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    alpha_u8 = np.rint(alpha * 255).astype(np.uint8)
    if transparent:
        rgba = np.zeros((side, side, 4), np.uint8)
        rgba[..., 3] = alpha_u8
        return _encode(Image.fromarray(rgba, mode="RGBA"), "PNG")
    return _encode(Image.fromarray(255 - alpha_u8, mode="L").convert("RGB"), "PNG")


# --- low resolution and 1-bit -------------------------------------------------------------


def small_digit(digit: np.ndarray, side: int) -> np.ndarray:
    """The digit filling a ``side`` x ``side`` square with a margin, area-averaged, in [0, 1]."""
    crop = _crop_to_ink(digit)
    rows, cols = crop.shape
    frame = int(np.ceil(max(rows, cols) * 1.25))
    square = np.zeros((frame, frame), np.float32)
    top, left = (frame - rows) // 2, (frame - cols) // 2
    square[top : top + rows, left : left + cols] = crop
    image = Image.fromarray(square, mode="F").resize((side, side), Image.Resampling.BOX)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


def low_resolution(side: int, one_bit: bool, upscale: bool, digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A thumbnail-sized digit, grey or thresholded to 1 bit, either polarity, small or blown up blocky."""
    small = small_digit(digit, side)
    if one_bit:
        small = (small >= 0.4 * float(small.max())).astype(np.float32)
    if rng.random() < 0.5:  # dark on light
        small = 1.0 - small
    pixels = np.rint(small * 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="L")
    if upscale:
        factor = int(rng.integers(max(2, 64 // side), 256 // side + 1))
        image = image.resize((side * factor, side * factor), Image.Resampling.NEAREST)
    if one_bit:
        image = image.convert("1", dither=Image.Dither.NONE)
    return _encode(image, "PNG")


# --- the registry -------------------------------------------------------------------------


def _register_photos() -> None:
    photos: list[tuple[str, str, Photo, str]] = [
        ("paper-240", "paper", Photo(paper=(235, 248)), "black pen on off-white paper, JPEG"),
        ("paper-210", "paper", Photo(paper=(200, 220)), "black pen on light grey paper, JPEG"),
        ("paper-180", "paper", Photo(paper=(175, 190)), "black pen on grey paper, JPEG"),
        ("paper-uneven", "paper", Photo(paper=(200, 250), uneven=0.3), "light falling off across the page (gradient and vignette)"),
        ("paper-noisy", "paper", Photo(noise=(5.0, 9.0), jpeg=(50, 65)), "strong sensor noise and heavy JPEG"),
        ("paper-specks", "paper", Photo(specks=8), "dust and dots beside the digit"),
        ("pen-blue", "paper", Photo(pens=("blue",)), "blue ballpoint"),
        ("pen-red", "paper", Photo(pens=("red",)), "red pen"),
        ("pencil", "paper", Photo(pens=("pencil",), pen_strength=(0.6, 0.9)), "grey pencil, fainter"),
        ("pen-thin", "paper", Photo(level=(0.6, 0.7), digit=(150, 300)), "fine liner: thin strokes on a large digit"),
        ("pen-thick", "paper", Photo(level=(0.3, 0.4), thicken=(0.01, 0.03)), "felt marker: thick strokes"),
        ("paper-small-digit", "paper", Photo(picture=(300, 400), digit=(40, 70)), "a small digit in a large photo"),
        ("paper-edge", "paper", Photo(at_edge=True), "the digit touching the picture's border"),
        ("scan-clean", "scan", Photo(paper=(245, 255), noise=(0.0, 1.0), jpeg=None, tint=False), "clean white scan, PNG"),
        ("scan-rotated", "scan", Photo(paper=(240, 255), noise=(0.5, 2.0), jpeg=(85, 95), rotate=8.0), "scan rotated up to 8 degrees"),
        ("scan-1bit", "scan", Photo(paper=(240, 255), noise=(0.0, 2.0), jpeg=None, one_bit=True), "black-and-white (1-bit) scan"),
    ]
    for name, family, spec, description in photos:
        register(name, family, partial(photo, spec), description)


def _register_others() -> None:
    register("canvas-rgba", "canvas", partial(canvas, True), "HTML canvas export: transparent, alpha = ink")
    register("canvas-white", "canvas", partial(canvas, False), "black drawing on a white canvas")
    register("lowres-8", "low-resolution", partial(low_resolution, 8, False, False), "8x8 grey thumbnail, either polarity")
    register("lowres-16", "low-resolution", partial(low_resolution, 16, False, False), "16x16 grey thumbnail, either polarity")
    register("lowres-16-up", "low-resolution", partial(low_resolution, 16, False, True), "16x16 grey, blown up blocky")
    register("onebit-16", "low-resolution", partial(low_resolution, 16, True, False), "16x16, 1 bit, either polarity")
    register("onebit-16-up", "low-resolution", partial(low_resolution, 16, True, True), "16x16, 1 bit, blown up blocky")
    register("onebit-8-up", "low-resolution", partial(low_resolution, 8, True, True), "8x8, 1 bit, blown up blocky")


_register_photos()
_register_others()
