"""The per-sample degradations (uint8 1 x 28 x 28 in and out, each changing what it should) and the
batched distortion."""

import pytest
import torch
from torchvision.transforms import v2

from models.augment import (
    ROBUSTNESS_VARIANTS,
    Degradations,
    add_noise,
    as_thumbnail,
    binarise,
    change_contrast,
    change_stroke,
    degrade_validation,
    lose_resolution,
)
from models.data import Digits, Distortion
from models.robustness import thumbnails_8x8


@pytest.fixture
def digit() -> torch.Tensor:
    """A soft-edged ring, like an MNIST zero: grey anti-aliased edges around a 255 core."""
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    radius = ((ys - 13.5) ** 2 + (xs - 13.5) ** 2).sqrt()
    ring = (1.5 - (radius - 7.0).abs() / 1.5).clamp(0, 1)
    return (ring * 255).round().to(torch.uint8).unsqueeze(0)


def _ink(image: torch.Tensor) -> int:
    return int((image > 127).sum())


def test_every_transform_keeps_shape_and_dtype(digit: torch.Tensor) -> None:
    outputs = [
        change_stroke(digit, 3, thicker=True),
        change_stroke(digit, 2, thicker=False),
        lose_resolution(digit, 8, "bilinear"),
        lose_resolution(digit, 12, "nearest"),
        binarise(digit, 0.5, reblur=True),
        change_contrast(digit, 0.6, 0.1),
        add_noise(digit, 0.05, torch.Generator().manual_seed(0)),
        Degradations(1.0, 1.0, (7, 16), 1.0, 1.0, 1.0)(digit),
        as_thumbnail(digit, 8, 1.25, 0.4, dark_on_light=True),
        Degradations(thumbnail_p=1.0)(digit),
    ]
    for out in outputs:
        assert out.shape == (1, 28, 28) and out.dtype == torch.uint8


def test_stroke_width_grows_and_shrinks(digit: torch.Tensor) -> None:
    assert _ink(change_stroke(digit, 3, thicker=True)) > _ink(digit) > _ink(change_stroke(digit, 2, thicker=False))


def test_an_erosion_that_would_erase_the_digit_is_skipped() -> None:
    hairline = torch.zeros(1, 28, 28, dtype=torch.uint8)
    hairline[0, 4:24, 14] = 255
    assert torch.equal(change_stroke(hairline, 2, thicker=False), hairline)


def test_resolution_loss_blurs_and_nearest_makes_blocks(digit: torch.Tensor) -> None:
    blurred = lose_resolution(digit, 8, "bilinear")
    assert not torch.equal(blurred, digit)
    assert int(blurred.max()) < 255 or _ink(blurred) != _ink(digit)
    blocky = lose_resolution(digit, 7, "nearest")
    assert torch.equal(blocky[0, 0::4, 0::4].repeat_interleave(4, 0).repeat_interleave(4, 1), blocky[0])  # 7x7 blocks of 4 px


def test_binarisation_leaves_two_levels(digit: torch.Tensor) -> None:
    assert set(binarise(digit, 0.4, reblur=False).unique().tolist()) == {0, 255}
    assert len(binarise(digit, 0.4, reblur=True).unique()) > 2  # the re-blur softens the edges again


@pytest.mark.parametrize("dark_on_light", [False, True])
def test_a_thumbnail_comes_back_as_the_service_serves_it(digit: torch.Tensor, dark_on_light: bool) -> None:
    out = as_thumbnail(digit, 8, 1.25, 0.4, dark_on_light=dark_on_light)[0]
    rows = torch.nonzero(out.amax(dim=1)).flatten()
    assert 18 <= int(rows[-1] - rows[0]) + 1 <= 20  # fitted to MNIST's 20 px box, white on black
    assert int(out[0].max()) == 0 and int(out.max()) == 255
    assert len(out.unique()) > 2  # the 1-bit thumbnail was enlarged smoothly, not in blocks


def test_the_8x8_robustness_set_is_each_digit_as_an_8x8_grey_thumbnail(digit: torch.Tensor) -> None:
    digits = Digits(torch.stack([digit[0], digit[0].flip(1)]), torch.tensor([0, 7]))
    out = thumbnails_8x8(digits)
    assert out.images.shape == (2, 28, 28) and out.images.dtype == torch.uint8 and torch.equal(out.labels, digits.labels)
    assert torch.equal(out.images[0], as_thumbnail(digit, 8, 1.0, None, dark_on_light=False)[0])
    assert not torch.equal(out.images[0], digit[0])


def test_a_thumbnail_of_nothing_is_left_as_it_was() -> None:
    blank = torch.zeros(1, 28, 28, dtype=torch.uint8)
    assert torch.equal(as_thumbnail(blank, 8, 1.25, 0.4, dark_on_light=False), blank)


def test_contrast_lowers_the_peak_and_lifts_the_background(digit: torch.Tensor) -> None:
    out = change_contrast(digit, 0.6, 0.1)
    assert int(out.max()) == round(0.6 * 255)
    assert int(out.min()) == round(0.1 * 255)


def test_noise_changes_the_background(digit: torch.Tensor) -> None:
    out = add_noise(digit, 0.05, torch.Generator().manual_seed(0))
    assert int(out[digit == 0].max()) > 0


def test_degradations_with_zero_probability_change_nothing(digit: torch.Tensor) -> None:
    assert not Degradations().active
    assert torch.equal(Degradations()(digit), digit)


@pytest.mark.parametrize("variant", ROBUSTNESS_VARIANTS)
def test_validation_degradation_is_deterministic(digit: torch.Tensor, variant: str) -> None:
    batch = digit.repeat(3, 1, 1)
    first, second = degrade_validation(batch, variant), degrade_validation(batch, variant)
    assert first.shape == (3, 28, 28) and first.dtype == torch.uint8
    assert torch.equal(first, second) and not torch.equal(first, batch)


def _batch(digit: torch.Tensor, n: int) -> torch.Tensor:
    return digit.unsqueeze(0).repeat(n, 1, 1, 1)  # N x 1 x 28 x 28


def test_a_batched_distortion_with_empty_ranges_changes_nothing(digit: torch.Tensor) -> None:
    still = Distortion(degrees=0.0, translate=0.0, scale=(1.0, 1.0), shear=0.0, elastic_p=0.0, mode="batched")
    assert torch.equal(still.distort_batch(_batch(digit, 4)), _batch(digit, 4))


def test_a_batched_distortion_draws_each_image_its_own_and_keeps_the_ink(digit: torch.Tensor) -> None:
    torch.manual_seed(0)
    distorted = Distortion(mode="batched").distort_batch(_batch(digit, 16))
    assert distorted.shape == (16, 1, 28, 28) and distorted.dtype == torch.uint8
    assert len({image.numpy().tobytes() for image in distorted}) == 16
    ink = distorted.float().sum((1, 2, 3)) / digit.float().sum()
    assert bool(((ink > 0.6) & (ink < 1.5)).all())  # zoom 0.85-1.15 scales the area by 0.72-1.32


def test_a_batched_distortion_is_reproducible_from_the_global_seed(digit: torch.Tensor) -> None:
    distortion = Distortion(mode="batched")
    torch.manual_seed(3)
    first = distortion.distort_batch(_batch(digit, 8))
    torch.manual_seed(3)
    assert torch.equal(distortion.distort_batch(_batch(digit, 8)), first)


def test_the_batched_elastic_field_is_as_strong_as_torchvisions() -> None:
    """Displacements, in pixels, of torchvision's ElasticTransform and of the batched field, alpha 34 and sigma 4."""
    torch.manual_seed(0)
    ramp = torch.arange(28.0).repeat(28, 1)[None]  # each pixel holds its x coordinate
    elastic = v2.ElasticTransform(alpha=34.0, sigma=4.0)
    theirs = torch.stack([elastic(ramp) - ramp for _ in range(200)])[..., 6:22, 6:22].std()
    ours = (Distortion(mode="batched")._elastic_field(200, 28, 28)[..., 0] * 14)[:, 6:22, 6:22].std()
    assert 0.8 < float(ours / theirs) < 1.25
