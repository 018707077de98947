"""Turn an uploaded image file into what the networks were trained on.

MNIST digits are white on black, fitted into a 20x20 box with anti-aliasing, and placed
in 28x28 by their centre of mass. A 28x28 image that already is white on black passes
through untouched, so MNIST itself is served exactly as the models were evaluated. A
canvas drawing's alpha is its ink. Anything else is dark ink on paper as a camera or a
scanner delivers it: the paper's uneven light is divided out, the ink found by a threshold
between this picture's own paper and ink, specks dropped, and the ink kept soft; then the
digit is cropped, scaled and centred as MNIST's were.
"""

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from core.errors import InputError

__all__ = [
    "ALLOWED_FORMATS",
    "INK_THRESHOLD",
    "PREPROCESSING_VERSION",
    "PROCESS_SIZE",
    "Blank",
    "InkMap",
    "decode_image",
    "decode_upright",
    "frame_digit",
    "ink_map",
    "to_mnist",
]

# What ``to_mnist`` makes of an image, as a number: every checkpoint's metadata records the
# version its is_digit thresholds (and training data) were made with, and the server warns when
# they differ. tests/test_preprocess.py pins a fingerprint of the output per version, so a
# change of behaviour fails there until this is raised and the thresholds are refitted.
PREPROCESSING_VERSION = 1

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
SIZE = 28
BOX = 20
INK_THRESHOLD = 0.05  # weaker than this (on a 0-1 scale) is background noise, not ink
EXIF_FORMATS = ("JPEG", "WEBP", "TIFF")  # where an orientation tag is common; PNG says so in info
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr")  # read per channel: coloured ink
WORKING_SIZE = 1024  # larger images are first reduced to this: the digit ends up 20 px anyway
PROCESS_SIZE = 256  # paper photos are reduced to this (longer side) to find the ink: the digit ends up 20 px anyway


class Blank(InputError):
    """The image decoded but holds no ink: nothing to read, which is an answer, not an error."""


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Pillow-decoded first frame, upright per EXIF; refuses non-images and decompression bombs."""
    return decode_upright(data, max_pixels=max_pixels)[0]


def decode_upright(data: bytes, *, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """``decode_image``'s picture, and the uploaded image's own (width, height) once upright.

    The picture may be smaller than the upload (JPEG draft decoding, WORKING_SIZE); the size
    is what positions on the picture are scaled back to, to be given in the upload's pixels.

    Pillow's format parsers raise many exception types (OSError, ValueError, TypeError,
    struct.error, ...) on malformed files; for untrusted bytes each of them means the same
    thing, "not a decodable image", which is the client's error, not ours.
    """
    if not data:
        raise InputError("is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise InputError(f"is not a supported image; expected one of {', '.join(ALLOWED_FORMATS)}") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"is too large to decode: {exc}", status_code=413) from None
    except Exception as exc:
        raise InputError(f"could not be decoded: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(f"has {width}x{height} = {width * height} pixels, above the limit of {max_pixels}", status_code=413)
    upright = (width, height)
    try:
        image.draft("L", (WORKING_SIZE, WORKING_SIZE))  # JPEG: decode at a reduced scale (no-op elsewhere)
        image.load()  # the first frame of an animation
        if image.format in EXIF_FORMATS or "exif" in image.info:  # a PNG's eXIf chunk is in info once loaded
            loaded = image.size
            ImageOps.exif_transpose(image, in_place=True)
            if image.size != loaded:  # turned by a quarter: the upload's sides swap too
                upright = (height, width)
        return _reduced(image), upright
    except Exception as exc:
        raise InputError(f"could not be decoded as {image.format}: {exc}") from None


def _reduced(image: Image.Image) -> Image.Image:
    """At most WORKING_SIZE on the longer side, so a photo costs megabytes, not hundreds.

    Box filtering averages, so a thin stroke survives as a fainter one.
    """
    if max(image.size) <= WORKING_SIZE:
        return image
    if image.mode in ("1", "P"):
        image = image.convert("RGBA" if "transparency" in image.info else "L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    image.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    return image


def _converted(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError:  # e.g. LAB TIFFs, which Pillow cannot convert to greyscale or RGB
        raise InputError(f"has image mode {image.mode}, which cannot be read as a digit") from None


@dataclass(frozen=True)
class InkMap:
    """The ink of a whole picture: ``ink`` in [0, 1] (1 = stroke, 0 = background), every stroke kept
    (specks too), and whether the picture already was MNIST's own form (28x28, white on black)."""

    ink: np.ndarray
    white_on_black: bool


def ink_map(image: Image.Image, *, process_size: int = PROCESS_SIZE) -> InkMap:
    """The background removal of ``to_mnist`` on the whole picture, nothing dropped.

    Paper photos are reduced to ``process_size`` on the longer side first (a canvas's alpha
    is taken at its own size), so that several digits in one wide picture keep their detail.
    """
    ink, white_on_black = _ink(image, process_size=process_size, drop_specks=False)
    return InkMap(ink, white_on_black)


def _ink(image: Image.Image, *, process_size: int = PROCESS_SIZE, drop_specks: bool = True) -> tuple[np.ndarray, bool]:
    """Ink intensity in [0, 1] (1 = stroke), and whether the image already was white on black.

    ``process_size``: the longer side paper photos are reduced to; ``drop_specks``: keep only
    the digit's own strokes, as one digit is read.
    """
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        alpha = np.asarray(_converted(image, "RGBA"), dtype=np.float32)[..., 3] / 255.0
        if alpha.min() < 1.0:  # a transparent background: what was painted is the ink
            return alpha, False
    if max(image.size) > process_size and image.mode in ("L", "RGB"):  # a photo: 8-bit reduction is the cheapest
        scale = process_size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BOX)
    planes = _planes(image)
    grey = planes[0] if len(planes) == 1 else np.mean(planes, axis=0)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if 2 * np.count_nonzero(border > 0.5) <= border.size:  # mostly dark border: a light digit on black
        if grey.shape == (SIZE, SIZE):
            return grey, True  # MNIST's own form: served exactly as the models were evaluated
        planes = [1.0 - plane for plane in planes]
    return _paper_ink(planes, process_size, drop_specks), False


def _planes(image: Image.Image) -> list[np.ndarray]:
    """The image as one (grey) or three (colour) float32 planes in [0, 1], light = 1."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float32)
        grey = values / (65535.0 if values.max() > 255 else 255.0)
    elif image.mode == "F":
        grey = np.nan_to_num(np.asarray(image, dtype=np.float32))
    elif image.mode not in COLOUR_MODES:  # L, 1, LA, ...; and modes Pillow cannot read as light (LAB): refused
        grey_image = image if image.mode == "L" else _converted(image, "L")
        # frombuffer: Pillow's array interface costs more than the rest of a 28x28 decode
        grey = np.frombuffer(grey_image.tobytes(), np.uint8).reshape(grey_image.height, grey_image.width) / np.float32(255)
    else:
        rgb = image if image.mode == "RGB" else _converted(image, "RGB")
        channels = np.frombuffer(rgb.tobytes(), np.uint8).reshape(rgb.height, rgb.width, 3) / np.float32(255)
        if np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2]):
            return [np.ascontiguousarray(channels[..., 0])]
        return [np.ascontiguousarray(channels[..., c]) for c in range(3)]
    return [np.clip(grey, 0.0, 1.0, out=grey)]


# --- dark ink on paper ---------------------------------------------------------------------
#
# A camera or a scanner delivers the digit as dark ink on paper whose brightness is not 255
# and not even uniform. What the networks need is the ink alone: the paper's own brightness
# is estimated (it varies slowly) and divided out, so that every pixel says how much of the
# light the ink absorbed there. The colour channel in which the ink absorbs most counts (blue
# ink is dark in red light). A threshold between this image's own paper and its own ink
# (Otsu's) finds the strokes; connected strokes make components, and specks far smaller than
# the digit are dropped. What is kept is soft: the ink's absorption, stretched so that the
# ink's typical value is 1, with anti-aliased edges, as MNIST's strokes are.

SMALL_SIZE = 64  # smaller pictures are enlarged smoothly to at least this, so that pixels become strokes
SMALL_FLOOR = 0.03  # enlarging a thumbnail smoothly rings faintly around its strokes; less is not ink
BACKGROUND_CELLS = 32  # the paper's brightness is estimated on a grid of this many cells (longer side)
BACKGROUND_REACH = 4  # cells: ink strokes narrower than twice this vanish from the estimate
LIGHT_FLOOR = 0.6  # the paper is never estimated darker than this share of its brightest part
MIN_CONTRAST = 0.12  # an Otsu threshold below this is noise in an empty picture
MIN_INK = 0.2  # strokes that typically absorb less than this are the paper's grain and noise
MASK_CELLS = 48  # components are found on a grid of this many cells (longer side)
MIN_SHARE = 0.2  # a component with less of the ink than this share of the largest one is a speck...
NEAR_SHARE = 0.04  # ...unless it lies within the largest one's box and holds at least this share


def _paper_ink(planes: list[np.ndarray], process_size: int, drop_specks: bool) -> np.ndarray:
    """Dark ink on paper -> soft ink in [0, 1] on 0; only the digit's strokes with ``drop_specks``."""
    planes = _unblocked(planes)
    if max(planes[0].shape) < SMALL_SIZE:
        return _thumbnail_ink(planes)
    planes = _resized(planes, process_size)
    eight_bit = _denoised(np.max([_absorption(plane) for plane in planes], axis=0))
    values = np.asarray(eight_bit)
    cut = max(_otsu(eight_bit.histogram()), int(MIN_CONTRAST * 255))
    strokes = values > cut
    count = int(np.count_nonzero(strokes))
    if count == 0:
        return np.zeros(values.shape, np.float32)
    rank = (3 * (count - 1)) // 4
    level = float(np.partition(values[strokes], rank)[rank]) / 255.0  # the strokes' upper quartile
    if level < MIN_INK:  # what stands out is the paper's own grain, not a pen
        return np.zeros(values.shape, np.float32)
    low = 0.5 * (cut + 0.5) / 255.0
    soft = np.clip((values * np.float32(1 / 255) - low) / max(level - low, 1e-3), 0.0, 1.0)
    return soft * _significant(strokes, soft) if drop_specks else soft


def _thumbnail_ink(planes: list[np.ndarray]) -> np.ndarray:
    """A thumbnail, enlarged smoothly: its background is even, and each grey level is part of the shape."""
    planes = _resized(planes, PROCESS_SIZE)
    absorbed = np.max([1.0 - plane / max(float(plane.max()), 1e-3) for plane in planes], axis=0)
    return np.clip((absorbed - SMALL_FLOOR) / (1.0 - SMALL_FLOOR), 0.0, 1.0)


def _unblocked(planes: list[np.ndarray]) -> list[np.ndarray]:
    """A picture enlarged by repeating pixels (k x k blocks) brought back to its own pixels."""
    height, width = planes[0].shape
    edges = [height, width]
    for plane in planes:
        edges.extend(np.flatnonzero((plane[1:] != plane[:-1]).any(axis=1)) + 1)
        edges.extend(np.flatnonzero((plane[:, 1:] != plane[:, :-1]).any(axis=0)) + 1)
        if np.gcd.reduce(np.asarray(edges, dtype=np.int64)) == 1:
            return planes
    block = int(np.gcd.reduce(np.asarray(edges, dtype=np.int64)))
    return [np.ascontiguousarray(plane[::block, ::block]) for plane in planes]


def _resized(planes: list[np.ndarray], process_size: int) -> list[np.ndarray]:
    """Planes no larger than ``process_size``, and small ones enlarged smoothly to SMALL_SIZE."""
    height, width = planes[0].shape
    longest = max(height, width)
    if longest > process_size:
        scale, method = process_size / longest, Image.Resampling.BOX
    elif longest < SMALL_SIZE:
        scale, method = float(np.ceil(SMALL_SIZE / longest)), Image.Resampling.BICUBIC
    else:
        return planes
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = (np.asarray(Image.fromarray(plane, mode="F").resize(size, method), dtype=np.float32) for plane in planes)
    return [np.clip(plane, 0.0, 1.0) for plane in resized]  # bicubic overshoots at edges


def _absorption(plane: np.ndarray) -> np.ndarray:
    """How much of the paper's light the ink took, in [0, 1]: 1 - pixel / paper."""
    paper = _paper_brightness(plane)
    return np.clip(1.0 - plane / paper, 0.0, 1.0)


def _paper_brightness(plane: np.ndarray) -> np.ndarray:
    """The paper's brightness under each pixel: a morphological closing on a coarse grid.

    Block maxima on a grid, then a max and a min filter (the closing, which removes dark
    strokes narrower than the filter), then bilinear enlargement back to the picture. A
    floor at LIGHT_FLOOR of the brightest paper keeps a stroke wider than the filter (a
    digit filling the picture) from being taken for a shadow.
    """
    height, width = plane.shape
    cell = max(1, int(np.ceil(max(height, width) / BACKGROUND_CELLS)))
    blocks = _block_max(plane, cell)
    closed = _spread(_spread(blocks, BACKGROUND_REACH, np.maximum), BACKGROUND_REACH, np.minimum)
    paper = np.asarray(Image.fromarray(closed, mode="F").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    floor = LIGHT_FLOOR * float(blocks.max())
    return np.maximum(paper, max(floor, 1e-3))


def _block_max(plane: np.ndarray, cell: int) -> np.ndarray:
    """The maximum of each ``cell`` x ``cell`` block (edges repeated to whole blocks)."""
    height, width = plane.shape
    rows, cols = -(-height // cell), -(-width // cell)
    if rows * cell != height or cols * cell != width:
        plane = np.pad(plane, ((0, rows * cell - height), (0, cols * cell - width)), mode="edge")
    by_rows = plane[0::cell].copy()  # strided slices: far faster than a reduction over a 4-D view
    for offset in range(1, cell):
        np.maximum(by_rows, plane[offset::cell], out=by_rows)
    blocks = by_rows[:, 0::cell].copy()
    for offset in range(1, cell):
        np.maximum(blocks, by_rows[:, offset::cell], out=blocks)
    return blocks


def _spread(values: np.ndarray, reach: int, extreme: np.ufunc) -> np.ndarray:
    """A square max or min filter reaching ``reach`` cells each way (edges repeated), as two 1-D passes."""
    height, width = values.shape
    rows = np.pad(values, ((reach, reach), (0, 0)), mode="edge")
    result = rows[:height].copy()
    for offset in range(1, 2 * reach + 1):
        extreme(result, rows[offset : offset + height], out=result)
    cols = np.pad(result, ((0, 0), (reach, reach)), mode="edge")
    result = cols[:, :width].copy()
    for offset in range(1, 2 * reach + 1):
        extreme(result, cols[:, offset : offset + width], out=result)
    return result


def _denoised(absorbed: np.ndarray) -> Image.Image:
    """8 bits of absorption, blurred by a pixel: sensor noise and JPEG ringing, not strokes, vanish."""
    eight_bit = Image.fromarray(np.rint(absorbed * 255).astype(np.uint8), mode="L")
    if max(absorbed.shape) < 2 * SMALL_SIZE:
        return eight_bit
    return eight_bit.filter(ImageFilter.BoxBlur(1))


def _otsu(histogram: list[int]) -> int:
    """Otsu's threshold of a 256-bin histogram: the level k for which ``<= k`` and ``> k`` separate best."""
    counts = np.asarray(histogram, dtype=np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(counts)
    mass = np.cumsum(counts * levels)
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * weight - total * mass) ** 2 / (weight * (total - weight))
    return int(np.argmax(np.nan_to_num(between[:-1], nan=0.0, posinf=0.0)))


def _significant(strokes: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """1 where the ink belongs to the digit, 0 on specks: components on a coarse grid."""
    height, width = strokes.shape
    cell = max(1, int(np.ceil(max(height, width) / MASK_CELLS)))
    occupied = _block_max(strokes, cell)
    mass = np.asarray(Image.fromarray(soft, mode="F").reduce(cell), dtype=np.float32)  # block means: shares are what count
    labels = _components(occupied)
    count = int(labels.max()) + 1
    masses = np.bincount(labels.ravel(), weights=mass.ravel(), minlength=count)
    masses[0] = 0.0
    largest = int(np.argmax(masses))
    keep = masses >= MIN_SHARE * masses[largest]
    keep |= _near(labels, largest, count) & (masses >= NEAR_SHARE * masses[largest])
    keep[0] = False
    cells = Image.fromarray(keep[labels].astype(np.uint8), mode="L").filter(ImageFilter.MaxFilter(3))  # the strokes' soft edges
    rows, cols = labels.shape
    return np.asarray(cells.resize((cols * cell, rows * cell), Image.Resampling.NEAREST), dtype=np.float32)[:height, :width]


def _near(labels: np.ndarray, largest: int, count: int) -> np.ndarray:
    """Which components have a cell inside the largest component's bounding box."""
    rows, cols = np.nonzero(labels == largest)
    inside = labels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    near = np.zeros(count, dtype=bool)
    near[np.unique(inside)] = True
    return near


def _components(occupied: np.ndarray) -> np.ndarray:
    """8-connected components of a small boolean grid: 0 = empty, 1..n = component.

    Each cell takes the smallest index among its neighbours and then the label of the cell
    that index names (pointer jumping), until nothing changes: a few passes for any shape.
    """
    height, width = occupied.shape
    empty = height * width
    index = np.arange(empty, dtype=np.int64).reshape(height, width)
    labels = np.where(occupied, index, empty)
    while True:
        padded = np.pad(labels, 1, constant_values=empty)
        smallest = labels.copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(smallest, padded[dy : dy + height, dx : dx + width], out=smallest)
        smallest = np.where(occupied, smallest, empty)
        flat = np.append(smallest.ravel(), empty)
        jumped = flat[flat[smallest]]
        if np.array_equal(jumped, labels):
            break
        labels = jumped
    dense = np.unique(labels, return_inverse=True)[1].reshape(height, width) + 1
    dense[labels == empty] = 0
    return dense


def _fit_box(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink and scale its longer side to 20 px, keeping the aspect ratio."""
    rows = np.flatnonzero(ink.max(axis=1) > INK_THRESHOLD)
    cols = np.flatnonzero(ink.max(axis=0) > INK_THRESHOLD)
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(crop.astype(np.float32), mode="F").resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _centre_by_mass(box: np.ndarray) -> np.ndarray:
    """Place ``box`` in 28x28 so that its centre of mass lands on the centre."""
    height, width = box.shape
    total = float(box.sum())
    ys, xs = np.indices(box.shape)
    com_y = float((ys * box).sum()) / total
    com_x = float((xs * box).sum()) / total
    top = int(np.clip(round(SIZE / 2 - 0.5 - com_y), 0, SIZE - height))
    left = int(np.clip(round(SIZE / 2 - 0.5 - com_x), 0, SIZE - width))
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = box
    return canvas


def frame_digit(ink: np.ndarray) -> np.ndarray:
    """Ink of one digit (any size, some of it above INK_THRESHOLD) framed as MNIST frames a digit:
    its peak made 1, cropped to the ink, the longer side scaled to 20 px, centred by mass in 28x28."""
    return _centre_by_mass(_fit_box(ink / float(ink.max())))


def to_mnist(image: Image.Image) -> np.ndarray:
    """A 28x28 float32 array in [0, 1], white digit on black, as the models expect."""
    ink, white_on_black = _ink(image)
    peak = float(ink.max())
    if peak <= INK_THRESHOLD:
        raise Blank("is blank: no digit found (every pixel has the background colour)")
    if white_on_black and ink.shape == (SIZE, SIZE):
        return ink
    return frame_digit(ink)
