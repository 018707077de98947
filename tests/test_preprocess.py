"""Preprocessing on synthetic images: every real-world form becomes an MNIST-like digit."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import weights
from core.errors import InputError
from core.preprocess import PREPROCESSING_VERSION, Blank, decode_image, to_mnist
from evaluation import corpus, mnist
from tests.conftest import encode_image, png_bytes, stroke_digit_one

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


def blurred(image: np.ndarray) -> np.ndarray:
    eight_bit = Image.fromarray(np.rint(image * 255).astype(np.uint8))
    return np.asarray(eight_bit.filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two 28x28 digits blurred by a pixel, at the best shift of at most one pixel.

    Centring by mass rounds to whole pixels, and pen widths differ: neither changes the digit.
    """
    first, second = blurred(a), blurred(b)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return max(float(np.corrcoef(np.roll(first, shift, axis=(0, 1)).ravel(), second.ravel())[0, 1]) for shift in shifts)


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
    assert similarity(result, reference_one()) > 0.99  # paper is denoised by a pixel's blur, alpha is taken as it is


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
def test_a_blank_image_is_blank(background: int) -> None:
    blank = np.full((50, 50), background, dtype=np.uint8)
    with pytest.raises(Blank, match="blank"):
        prepared(encode_image(Image.fromarray(blank)))


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


# --- the real-world corpus: every style comes back as its MNIST original ---------------------

# Mean similarity of a style's rendering, preprocessed, to the MNIST original: paper, scans and
# canvases keep the shape (0.97-0.99 on these digits; thresholding the raw inverted grey and
# cropping the whole picture gave 0.45-0.63 on paper); thumbnails of 8 or 16 px have lost detail
# that no preprocessing restores (0.80-0.96).
SIMILAR = {"paper": 0.95, "scan": 0.95, "canvas": 0.95, "low-resolution": 0.7}
DEV_DIGITS = 6  # training digits: the corpus reported renders test digits


@pytest.fixture(scope="module")
def dev_digits(data_dir: Path) -> mnist.Digits:
    train = mnist.load(data_dir, train=True)
    return mnist.Digits(train.images[:DEV_DIGITS], train.labels[:DEV_DIGITS])


@pytest.mark.parametrize("style", sorted(corpus.STYLES))
def test_every_style_preprocesses_into_its_mnist_original(style: str, dev_digits: mnist.Digits) -> None:
    scores = []
    for index, digit in enumerate(dev_digits.images):
        result = prepared(corpus.render(style, digit, seed=0, index=index))
        assert result.shape == (28, 28) and result.dtype == np.float32 and 0.0 <= result.min() <= result.max() <= 1.0
        scores.append(similarity(result, digit.astype(np.float32) / 255))
    assert np.mean(scores) >= SIMILAR[corpus.STYLES[style].family], [round(s, 3) for s in scores]


def test_the_corpus_is_deterministic_per_seed(dev_digits: mnist.Digits) -> None:
    digit = dev_digits.images[0]
    for style in corpus.STYLES:
        assert corpus.render(style, digit, seed=3, index=7) == corpus.render(style, digit, seed=3, index=7), style
    photos = [style for style, entry in corpus.STYLES.items() if entry.family == "paper"]
    assert all(corpus.render(s, digit, seed=3, index=7) != corpus.render(s, digit, seed=4, index=7) for s in photos)
    assert all(corpus.render(s, digit, seed=3, index=7) != corpus.render(s, digit, seed=3, index=8) for s in photos)


def test_styles_are_a_registry() -> None:
    style = corpus.register("test-grey-square", "paper", lambda digit, rng: encode_image(Image.fromarray(digit)), "a test style")
    try:
        assert corpus.STYLES["test-grey-square"] is style
        with pytest.raises(ValueError, match="already registered"):
            corpus.register("test-grey-square", "paper", style.render, "twice")
    finally:
        del corpus.STYLES["test-grey-square"]


def paper(shade: int, size: int = 300, *, seed: int = 0) -> np.ndarray:
    """Grey paper with sensor noise and light falling off to one side, no digit."""
    rng = np.random.default_rng(seed)
    light = np.linspace(1.0, 0.75, size, dtype=np.float32)[None, :]
    return np.clip(shade * light + rng.normal(0, 4, (size, size)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shade", [180, 210, 240])
def test_a_photo_of_blank_paper_is_blank(shade: int) -> None:
    with pytest.raises(Blank, match="blank"):
        prepared(encode_image(Image.fromarray(paper(shade)).convert("RGB"), "JPEG", quality=70))


def test_dark_ink_on_grey_unevenly_lit_paper_reads_as_on_white() -> None:
    page = paper(190).astype(np.float32)
    page[stroke_digit_one(300, thickness=30) > 0] *= 0.15  # a "1" in black pen
    result = prepared(encode_image(Image.fromarray(page.astype(np.uint8)), "JPEG", quality=75))
    assert_mnist_like(result)
    assert similarity(result, reference_one()) > 0.97


def test_coloured_ink_counts_by_its_darkest_channel() -> None:
    page = np.full((200, 200, 3), 235, np.uint8)
    page[stroke_digit_one(200, thickness=20) > 0] = (40, 60, 170)  # blue ink: light in blue, dark in red
    assert similarity(prepared(encode_image(Image.fromarray(page))), reference_one()) > 0.97


def test_specks_beside_the_digit_are_ignored() -> None:
    page = np.full((300, 300), 230, np.uint8)
    page[100:200, 140:152] = 20  # the digit
    page[10:13, 10:13] = 40  # dust in a corner
    page[280:284, 270:273] = 60
    result = prepared(encode_image(Image.fromarray(page)))
    assert_mnist_like(result)
    ys, _ = np.nonzero(result > 0.05)
    assert ys.max() - ys.min() + 1 == 20  # the digit alone fills the 20 px box


def test_a_pixel_repeated_enlargement_reads_as_its_source() -> None:
    small = (255 - stroke_digit_one(16, thickness=2)).astype(np.uint8)
    blocky = np.repeat(np.repeat(small, 9, axis=0), 9, axis=1)
    np.testing.assert_array_equal(prepared(encode_image(Image.fromarray(blocky))), prepared(encode_image(Image.fromarray(small))))


@pytest.mark.parametrize("side", [8, 16])
def test_tiny_sources_are_enlarged_smoothly(side: int) -> None:
    result = prepared(encode_image(Image.fromarray(stroke_digit_one(side, thickness=max(1, side // 8)))))
    assert_mnist_like(result)
    levels = np.unique(np.round(result[result > 0], 2))
    assert levels.size > 10  # anti-aliased, not blocks of one grey


# What ``to_mnist`` makes of a fixed set of inputs, per PREPROCESSING_VERSION: the is_digit
# thresholds in weights/*.json were fitted with the version they record, so a change of
# behaviour must come with a new version (and refitted thresholds), never silently.
FINGERPRINTS = {1: "08bd67eeb3c52f1b9a4a4e971fc11d41dc9c167d8f0398d83d4c8405d43ead9a"}


def fingerprint_inputs() -> list[bytes]:
    """Every path through the preprocessing: MNIST-like, canvas alpha, paper photos, thumbnails, 1-bit."""
    one = stroke_digit_one(28, thickness=3)
    big = stroke_digit_one(200, thickness=18)
    page = paper(200, 200, seed=3)
    page[big > 0] = 40
    rgba = np.zeros((120, 120, 4), np.uint8)
    rgba[..., 3] = np.asarray(Image.fromarray(stroke_digit_one(120, thickness=10)).rotate(15))
    thumbnail = np.asarray(Image.fromarray(255 - stroke_digit_one(64, thickness=8)).resize((8, 8), Image.Resampling.BOX))
    return [
        png_bytes(one),
        png_bytes(255 - big),
        encode_image(Image.fromarray(page).convert("RGB"), "JPEG", quality=80),
        encode_image(Image.fromarray(page), "PNG"),
        encode_image(Image.fromarray(rgba, "RGBA")),
        png_bytes(thumbnail),
        encode_image(Image.fromarray(255 - big).convert("1"), "PNG"),
        encode_image(Image.fromarray(big).rotate(30, expand=True).resize((90, 70)), "BMP"),
    ]


def preprocessing_fingerprint() -> str:
    outputs = [np.round(prepared(data) * 255).astype(np.uint8) for data in fingerprint_inputs()]
    return hashlib.sha256(b"".join(output.tobytes() for output in outputs)).hexdigest()


def test_the_preprocessing_version_names_its_behaviour() -> None:
    assert preprocessing_fingerprint() == FINGERPRINTS[PREPROCESSING_VERSION], (
        "core.preprocess changed what it makes of an image: raise PREPROCESSING_VERSION, record the new fingerprint here, "
        "and refit every is_digit threshold (python -m models.train --arch NAME --fit-is-digit)"
    )


def test_every_checkpoint_records_the_preprocessing_it_was_fitted_with() -> None:
    for name in ("inception", "resnet", "ensemble"):
        metadata = json.loads((weights.DIRECTORY / f"{name}.json").read_text())
        assert metadata["is_digit"]["preprocessing_version"] == PREPROCESSING_VERSION, name
