"""Preprocessing on synthetic images: every real-world form becomes an MNIST-like digit."""

import io

import numpy as np
import pytest
from PIL import Image

from service.errors import InputError
from service.preprocess import decode_image, to_mnist
from tests.conftest import encode_image, stroke_digit_one

LIMIT = 25_000_000
NOISE = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
NOISE_PNG = encode_image(NOISE)
NOISE_JPEG = encode_image(NOISE, "JPEG")


def prepared(data: bytes) -> np.ndarray:
    return to_mnist(decode_image(data, max_pixels=LIMIT))


def assert_mnist_like(result: np.ndarray) -> None:
    """28x28 in [0, 1], ink inside the central 20x20 box region, centre of mass near the centre."""
    assert result.shape == (28, 28) and result.dtype == np.float32
    assert result.min() >= 0.0 and result.max() <= 1.0 and result.max() > 0.9
    ys, xs = np.nonzero(result > 0.05)
    assert ys.min() >= 2 and ys.max() <= 25 and xs.min() >= 2 and xs.max() <= 25
    rows, cols = np.indices(result.shape)
    com = ((rows * result).sum() / result.sum(), (cols * result).sum() / result.sum())
    assert com == pytest.approx((13.5, 13.5), abs=1.0)


def reference_one() -> np.ndarray:
    return prepared(encode_image(Image.fromarray(stroke_digit_one(200, thickness=20))))


def test_mnist_sized_white_on_black_passes_through_unchanged() -> None:
    rng = np.random.default_rng(0)
    digit = (rng.random((28, 28)) * 255).astype(np.uint8)
    digit[:3] = 0  # a dark border, like MNIST
    digit[-3:] = 0
    digit[:, :3] = 0
    digit[:, -3:] = 0
    np.testing.assert_array_equal(prepared(encode_image(Image.fromarray(digit))), digit.astype(np.float32) / 255)


def test_dark_ink_on_paper_is_inverted() -> None:
    light = 255 - stroke_digit_one(200, thickness=20)
    result = prepared(encode_image(Image.fromarray(light)))
    assert_mnist_like(result)
    np.testing.assert_allclose(result, reference_one(), atol=1e-5)


def test_rgba_canvas_uses_alpha_as_ink() -> None:
    rgba = np.zeros((200, 200, 4), dtype=np.uint8)  # transparent black background
    rgba[..., 3] = stroke_digit_one(200, thickness=20)  # strokes painted black, opaque
    result = prepared(encode_image(Image.fromarray(rgba, mode="RGBA")))
    assert_mnist_like(result)
    np.testing.assert_allclose(result, reference_one(), atol=1e-5)


def test_huge_canvas_with_small_off_centre_digit() -> None:
    canvas = np.full((1500, 2000), 255, dtype=np.uint8)
    canvas[100:200, 1700:1712] = 0  # a thin dark "1" near the top right corner
    result = prepared(encode_image(Image.fromarray(canvas)))
    assert_mnist_like(result)
    assert np.count_nonzero(result > 0.5) < 28 * 6  # it stays a thin stroke, scaled to 20 px tall
    ys, _ = np.nonzero(result > 0.05)
    assert ys.max() - ys.min() + 1 == 20


def test_one_bit_image() -> None:
    bits = Image.fromarray(stroke_digit_one(100, thickness=10) > 0).convert("1")
    assert bits.mode == "1"
    assert_mnist_like(prepared(encode_image(bits)))


def test_palette_image() -> None:
    palette = Image.fromarray(np.stack([stroke_digit_one(100, thickness=10)] * 3, axis=-1)).convert("P")
    assert palette.mode == "P"
    assert_mnist_like(prepared(encode_image(palette)))


def test_sixteen_bit_image() -> None:
    sixteen = Image.fromarray(stroke_digit_one(64, thickness=6).astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    assert_mnist_like(prepared(encode_image(sixteen)))


@pytest.mark.parametrize(("fmt", "mode", "options"), [("JPEG", "RGB", {"quality": 95}), ("PNG", "L", {})])
def test_exif_orientation_is_applied(fmt: str, mode: str, options: dict[str, int]) -> None:
    # A horizontal bar stored sideways with EXIF "rotate 90": upright it is vertical.
    sideways = Image.fromarray(stroke_digit_one(100, thickness=10).T.copy())
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    result = prepared(encode_image(sideways.convert(mode), fmt, exif=exif, **options))
    ys, xs = np.nonzero(result > 0.5)
    assert ys.max() - ys.min() > 3 * (xs.max() - xs.min())  # tall, not wide


def test_jpeg_rgb_photo_of_paper() -> None:
    rgb = np.stack([255 - stroke_digit_one(300, thickness=30)] * 3, axis=-1)
    assert_mnist_like(prepared(encode_image(Image.fromarray(rgb), "JPEG", quality=80)))


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP", "TIFF"])
def test_other_formats(fmt: str) -> None:
    assert_mnist_like(prepared(encode_image(Image.fromarray(stroke_digit_one(56, thickness=6)), fmt)))


@pytest.mark.parametrize("background", [0, 255])
def test_blank_image_is_refused(background: int) -> None:
    blank = np.full((50, 50), background, dtype=np.uint8)
    with pytest.raises(InputError, match="blank") as info:
        prepared(encode_image(Image.fromarray(blank)))
    assert info.value.status_code == 422


def test_too_many_pixels_is_refused_before_decoding() -> None:
    data = encode_image(Image.new("L", (6000, 5000)))
    with pytest.raises(InputError, match="pixels, above the limit") as info:
        decode_image(data, max_pixels=LIMIT)
    assert info.value.status_code == 413


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, world", "not a supported image"),
        (NOISE_PNG[: len(NOISE_PNG) // 2], "could not be decoded as PNG"),
        (NOISE_JPEG[: len(NOISE_JPEG) // 2], "could not be decoded as JPEG"),
    ],
)
def test_undecodable_input(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_image(data, max_pixels=LIMIT)


def test_svg_is_not_an_accepted_format() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><rect width="5" height="20"/></svg>'
    with pytest.raises(InputError, match="not a supported image"):
        decode_image(svg, max_pixels=LIMIT)


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.fromarray(stroke_digit_one(56, thickness=6)), Image.fromarray(np.zeros((56, 56), np.uint8))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert_mnist_like(prepared(buffer.getvalue()))
