"""Turn an uploaded image file into what the networks were trained on.

MNIST digits are white on black, fitted into a 20x20 box with anti-aliasing, and placed
in 28x28 by their centre of mass. A canvas drawing or a photo of paper is brought to the
same form: alpha or inverted luminance becomes ink, the ink is cropped, scaled and
centred. A 28x28 image that already is white on black passes through untouched, so MNIST
itself is served exactly as the models were evaluated.
"""

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InputError

__all__ = ["ALLOWED_FORMATS", "decode_image", "describe", "to_mnist"]

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
SIZE = 28
BOX = 20
INK_THRESHOLD = 0.05  # weaker than this (on a 0-1 scale) is background noise, not ink
EXIF_FORMATS = ("JPEG", "WEBP", "TIFF")  # where an orientation tag is common; PNG says so in info
WORKING_SIZE = 1024  # larger images are first reduced to this: the digit ends up 20 px anyway


def describe(index: int, filename: str | None) -> str:
    """How an error message names an input: its position and, where known, its file name."""
    if filename:
        safe = filename.replace("\n", " ")[:100]
        return f"image {index} ({safe!r})"
    return f"image {index}"


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Pillow-decoded first frame, upright per EXIF; refuses non-images and decompression bombs.

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
    try:
        image.draft("L", (WORKING_SIZE, WORKING_SIZE))  # JPEG: decode at a reduced scale (no-op elsewhere)
        image.load()  # the first frame of an animation
        if image.format in EXIF_FORMATS or "exif" in image.info:  # a PNG's eXIf chunk is in info once loaded
            ImageOps.exif_transpose(image, in_place=True)
        return _reduced(image)
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


def _ink(image: Image.Image) -> tuple[np.ndarray, bool]:
    """Ink intensity in [0, 1] (1 = stroke), and whether the image already was white on black."""
    try:
        return _ink_of_mode(image)
    except ValueError:  # e.g. LAB or YCbCr TIFFs, which Pillow cannot convert to greyscale
        raise InputError(f"has image mode {image.mode}, which cannot be read as a greyscale digit") from None


def _ink_of_mode(image: Image.Image) -> tuple[np.ndarray, bool]:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        alpha = np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
        if alpha.min() < 1.0:  # a transparent background: what was painted is the ink
            return alpha, False
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float32)
        grey = values / (65535.0 if values.max() > 255 else 255.0)
    elif image.mode == "F":
        grey = np.nan_to_num(np.asarray(image, dtype=np.float32))
    else:
        grey_image = image if image.mode == "L" else image.convert("L")
        # frombuffer: Pillow's array interface costs more than the rest of a 28x28 decode
        grey = np.frombuffer(grey_image.tobytes(), np.uint8).reshape(grey_image.height, grey_image.width) / np.float32(255)
    grey = np.clip(grey, 0.0, 1.0, out=grey)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if 2 * np.count_nonzero(border > 0.5) > border.size:  # mostly light border: dark ink on paper or canvas
        return 1.0 - grey, False
    return grey, True


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


def to_mnist(image: Image.Image) -> np.ndarray:
    """A 28x28 float32 array in [0, 1], white digit on black, as the models expect."""
    ink, white_on_black = _ink(image)
    peak = float(ink.max())
    if peak <= INK_THRESHOLD:
        raise InputError("is blank: no digit found (every pixel has the background colour)")
    if white_on_black and ink.shape == (SIZE, SIZE):
        return ink
    return _centre_by_mass(_fit_box(ink / peak))
