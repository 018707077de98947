"""Per-sample degradations that teach the digit rather than MNIST's pen and scanner.

MNIST digits all share one pen width, one anti-aliased 20x20 rendering and full contrast.
Real uploads do not: digits scanned at 8x8 or 16x16 and scaled up, thresholded 1-bit
images, faint or thick pens, grey paper. Each transform below takes and returns a
1 x 28 x 28 uint8 tensor (white digit on black), runs in a DataLoader worker with a few
small torch ops, and is applied with its own probability (``Degradations``), after the
affine/elastic distortion of ``models.data.augmentation``.

``degrade_validation`` is the fixed, deterministic version used to measure robustness on
the validation split (8x8, 16x16, 1-bit), so it never touches the test set.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "ROBUSTNESS_VARIANTS",
    "Degradations",
    "add_noise",
    "binarise",
    "change_contrast",
    "change_stroke",
    "degrade_validation",
    "lose_resolution",
]


def _as_float(image: torch.Tensor) -> torch.Tensor:
    return image.float().reshape(1, 1, 28, 28) / 255.0


def _as_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).reshape(1, 28, 28)


def change_stroke(image: torch.Tensor, kernel: int, thicker: bool) -> torch.Tensor:
    """Grey dilation (thicker) or erosion (thinner) with a kernel x kernel max/min filter.

    An even kernel is padded on the bottom/right only, so the digit moves by at most half a
    pixel. An erosion that would leave less than a third of the ink is skipped: a digit
    eroded to nothing is no longer a digit.
    """
    x = _as_float(image)
    low, high = (kernel - 1) // 2, kernel // 2
    padded = F.pad(x if thicker else -x, (low, high, low, high), value=0.0 if thicker else -1.0)
    out = F.max_pool2d(padded, kernel, stride=1)
    out = out if thicker else -out
    if not thicker and float(out.sum()) < float(x.sum()) / 3:
        return image
    return _as_uint8(out)


def lose_resolution(image: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Downsample to size x size (area average, as a scanner does) and upsample back (bilinear or nearest)."""
    small = F.interpolate(_as_float(image), size=(size, size), mode="area")
    if mode == "nearest":
        return _as_uint8(F.interpolate(small, size=(28, 28), mode="nearest"))
    return _as_uint8(F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False))


_BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).div(16).reshape(1, 1, 3, 3)


def binarise(image: torch.Tensor, threshold: float, reblur: bool) -> torch.Tensor:
    """1-bit: ink where the intensity exceeds ``threshold`` (0-1), optionally softened by a 3x3 blur."""
    x = (_as_float(image) > threshold).float()
    if reblur:
        x = F.conv2d(F.pad(x, (1, 1, 1, 1)), _BLUR)
    return _as_uint8(x)


def change_contrast(image: torch.Tensor, peak: float, background: float) -> torch.Tensor:
    """Ink scaled to ``peak`` (0-1) over a background lifted to ``background``: faint pen, grey paper."""
    x = _as_float(image)
    return _as_uint8(background + x * (peak - background))


def add_noise(image: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation ``sigma`` (0-1 scale), clipped."""
    x = _as_float(image)
    return _as_uint8(x + sigma * torch.randn(x.shape, generator=generator))


@dataclass(frozen=True)
class Degradations:
    """Probabilities and ranges of the per-sample degradations; a callable transform.

    Draws use torch's global generator, which the DataLoader seeds per worker from the
    training seed, so a run is reproducible for a given worker count.
    """

    stroke_p: float = 0.0
    lowres_p: float = 0.0
    lowres_sizes: tuple[int, int] = (7, 16)
    binarise_p: float = 0.0
    contrast_p: float = 0.0
    noise_p: float = 0.0

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        def draw() -> float:
            return float(torch.rand(()))

        if draw() < self.stroke_p:
            image = change_stroke(image, 2 + int(draw() < 0.3), thicker=draw() < 0.6)
        if draw() < self.lowres_p:
            low, high = self.lowres_sizes
            size = low + int(draw() * (high - low + 1))
            image = lose_resolution(image, min(size, high), "nearest" if draw() < 0.3 else "bilinear")
        if draw() < self.binarise_p:
            image = binarise(image, 0.2 + 0.5 * draw(), reblur=draw() < 0.4)
        if draw() < self.contrast_p:
            image = change_contrast(image, 0.5 + 0.5 * draw(), 0.15 * draw() if draw() < 0.5 else 0.0)
        if draw() < self.noise_p:
            image = add_noise(image, 0.02 + 0.08 * draw())
        return image

    @property
    def active(self) -> bool:
        return any(p > 0 for p in (self.stroke_p, self.lowres_p, self.binarise_p, self.contrast_p, self.noise_p))


ROBUSTNESS_VARIANTS = ("8x8", "16x16", "1-bit")


def degrade_validation(images: torch.Tensor, variant: str) -> torch.Tensor:
    """A fixed degradation of N x 28 x 28 uint8 images: scanned at 8x8 or 16x16 and scaled up, or 1-bit.

    Deterministic (area downsampling, bilinear upsampling, threshold at 0.5), so every
    checkpoint is measured on the same images.
    """
    x = images.float().unsqueeze(1) / 255.0
    if variant == "1-bit":
        out = (x > 0.5).float()
    else:
        size = int(variant.split("x")[0])
        small = F.interpolate(x, size=(size, size), mode="area")
        out = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1)
