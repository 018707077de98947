"""The per-sample degradations: uint8 1 x 28 x 28 in and out, each changing what it should."""

import pytest
import torch

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
