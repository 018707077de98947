"""Turning what callers hold (paths, image bytes, binary files, PIL images, numpy arrays) into upload parts.

Pillow and numpy are not dependencies: an object of theirs can only exist once its library
is imported, so both are looked up in ``sys.modules`` and never imported here eagerly. A
numpy array is written as a PNG by this module itself, so arrays need no Pillow.
"""

from __future__ import annotations

import io
import math
import mimetypes
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TypeAlias

from digits_client.errors import DigitsInputError

if TYPE_CHECKING:
    import numpy.typing as npt
    from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "ImageInput", "Part", "parts"]

IMAGE_SUFFIXES: Final = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File name suffixes of the formats the server decodes."""

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image | npt.NDArray[Any]"
"""One image: a file path, an image file's bytes, an open binary file, a PIL image, or a 2-D array."""

Part: TypeAlias = tuple[str, tuple[str, bytes, str]]
"""One multipart part as httpx takes it: ``("files", (filename, content, content_type))``."""

_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)
# Modes a PNG holds as they are; others (CMYK, F, ...) are converted first.
_PNG_MODES: Final = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def parts(images: ImageInput | Sequence[ImageInput]) -> list[Part]:
    """One part named ``files`` per image, in order; a lone image is the same as a list of one."""
    items: list[ImageInput] = list(images) if isinstance(images, list | tuple) else [images]  # type: ignore[list-item]
    if not items:
        raise DigitsInputError("no images given")
    return [_part(item, index) for index, item in enumerate(items)]


def _part(item: ImageInput, index: int) -> Part:
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DigitsInputError(f"image {index}: cannot read {str(path)!r}: {exc.strerror or exc}") from exc
        return "files", (path.name, data, _content_type(path.name))
    if isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
        name = _bytes_name(data)
        return "files", (name, data, _content_type(name))
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(item, numpy.ndarray):
        return "files", ("array.png", _array_png(item, index), "image/png")
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(item, pil.Image):
        name = Path(str(getattr(item, "filename", "") or "image")).with_suffix(".png").name
        return "files", (name, _pil_png(item), "image/png")
    if callable(getattr(item, "read", None)):
        data = item.read()  # type: ignore[union-attr]
        if not isinstance(data, bytes):
            raise DigitsInputError(f"image {index}: the file object gave {type(data).__name__}, not bytes; open it in binary mode")
        name = Path(str(getattr(item, "name", "") or "")).name or _bytes_name(data)
        return "files", (name, data, _content_type(name))
    raise DigitsInputError(
        f"image {index}: unsupported type {type(item).__name__}; "
        "expected a path, image file bytes, a binary file, a PIL image or a numpy array"
    )


def _bytes_name(data: bytes) -> str:
    """A file name for anonymous bytes, so server messages can say which input and what kind it was."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "bytes.webp"
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return "bytes" + suffix
    return "bytes"


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _pil_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _array_png(array: npt.NDArray[Any], index: int) -> bytes:
    """Lossless PNG of a 2-D array: uint8 (or integers in 0..255), bool, or floats in [0, 1]."""
    import numpy as np  # already imported: the caller made the array

    if array.ndim != 2:
        hint = "; for a stack of images pass list(array)" if array.ndim == 3 else ""
        raise DigitsInputError(f"image {index}: expected a 2-D (height x width) array, got shape {array.shape}{hint}")
    if array.size == 0:
        raise DigitsInputError(f"image {index}: the array is empty (shape {array.shape})")
    if array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        low, high = float(array.min()), float(array.max())
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > 1:
            raise DigitsInputError(f"image {index}: float arrays must hold values in [0, 1], got {low:g} .. {high:g}")
        pixels = np.rint(array * 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DigitsInputError(f"image {index}: integer arrays must hold values in 0 .. 255, got {low} .. {high}")
        pixels = array.astype(np.uint8, copy=False)
    else:
        raise DigitsInputError(f"image {index}: unsupported array dtype {array.dtype}; use uint8 or floats in [0, 1]")
    height, width = pixels.shape
    return gray_png(np.ascontiguousarray(pixels).tobytes(), width, height)


def gray_png(pixels: bytes, width: int, height: int) -> bytes:
    """An 8-bit greyscale PNG of ``width * height`` row-major bytes (PNG spec: IHDR, one IDAT, IEND; no filtering)."""
    if len(pixels) != width * height:
        raise ValueError(f"{len(pixels)} bytes for a {width}x{height} image")
    rows = b"".join(b"\x00" + pixels[y * width : (y + 1) * width] for y in range(height))  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # bit depth 8, greyscale, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 6)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
