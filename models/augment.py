"""Per-sample degradations that teach the digit rather than MNIST's pen and scanner.

MNIST digits all share one pen width, one anti-aliased 20x20 rendering and full contrast.
Real uploads do not: digits scanned at 8x8 or 16x16 and scaled up, thresholded 1-bit
images, faint or thick pens, grey paper. Each transform below takes and returns a
1 x 28 x 28 uint8 tensor (white digit on black), runs in a DataLoader worker with a few
small torch ops, and is applied with its own probability (``Degradations``), after the
affine/elastic distortion of ``models.data.Distortion``.

``as_thumbnail`` differs from the others: it sends a thumbnail of the digit through the
service's own ``to_mnist``, because what a model sees of an 8x8 upload is shaped as much
by that preprocessing (enlarging, cropping, fitting to 20 px) as by the thumbnail itself.

``degrade_validation`` is the fixed, deterministic version used to measure robustness on
the validation split (8x8, 16x16, 1-bit, an 8x8 1-bit thumbnail), so it never touches the
test set.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.errors import InputError
from core.preprocess import to_mnist
from models.training.hyperparameter import hyperparameter

__all__ = [
    "ROBUSTNESS_VARIANTS",
    "Degradations",
    "add_noise",
    "as_thumbnail",
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


def as_thumbnail(image: torch.Tensor, side: int, margin: float, threshold: float | None, dark_on_light: bool) -> torch.Tensor:
    """The digit as an uploaded thumbnail, as the service's preprocessing returns it.

    The ink's box, framed square with ``margin`` (1.0 = touching), area-averaged to
    ``side`` x ``side``; 1-bit where ``threshold`` (a share of the brightest pixel) is given;
    then ``core.preprocess.to_mnist``. A digit that vanishes is returned unchanged.
    """
    pixels = image.reshape(28, 28).numpy().astype(np.float32) / 255.0
    rows, cols = np.flatnonzero(pixels.max(axis=1) > 0), np.flatnonzero(pixels.max(axis=0) > 0)
    if rows.size == 0:
        return image
    crop = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    frame = int(np.ceil(max(crop.shape) * margin))
    square = np.zeros((frame, frame), np.float32)
    top, left = (frame - crop.shape[0]) // 2, (frame - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    small = np.asarray(Image.fromarray(square, mode="F").resize((side, side), Image.Resampling.BOX), dtype=np.float32)
    if threshold is not None:
        small = (small >= threshold * float(small.max())).astype(np.float32)
    if dark_on_light:
        small = 1.0 - small
    try:
        served = to_mnist(Image.fromarray(np.rint(np.clip(small, 0.0, 1.0) * 255).astype(np.uint8), mode="L"))
    except InputError:
        return image
    return _as_uint8(torch.from_numpy(served))


@dataclass(frozen=True)
class Degradations:
    """Per-sample degradations of the image, each with its own probability, after the geometric distortion.

    A section of the training recipe (``models.training.recipe``), and a callable transform.
    Draws use torch's global generator, which the DataLoader seeds per worker from the
    training seed, so a run is reproducible for a given worker count.
    """

    stroke_p: float = hyperparameter(0.0, "probability of a thicker or thinner stroke (2x2/3x3 max/min filter)")
    lowres_p: float = hyperparameter(0.0, "probability of a downsample-upsample round trip")
    lowres_sizes: tuple[int, int] = hyperparameter((7, 16), "range of the downsampled side (pixels)")
    binarise_p: float = hyperparameter(0.0, "probability of a random 1-bit threshold")
    contrast_p: float = hyperparameter(0.0, "probability of a fainter ink peak and a lifted background")
    noise_p: float = hyperparameter(0.0, "probability of Gaussian background noise")
    thumbnail_p: float = hyperparameter(0.0, "probability of a thumbnail (half of them 1-bit) as serving returns it")
    thumbnail_sides: tuple[int, int] = hyperparameter((6, 16), "range of the thumbnail's side (pixels)")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        def draw() -> float:
            return float(torch.rand(()))

        if draw() < self.stroke_p:
            image = change_stroke(image, 2 + int(draw() < 0.3), thicker=draw() < 0.6)
        if draw() < self.thumbnail_p:  # instead of the other degradations: it is what serving returns
            low, high = self.thumbnail_sides
            side = min(low + int(draw() * (high - low + 1)), high)
            threshold = 0.25 + 0.35 * draw() if draw() < 0.5 else None
            return as_thumbnail(image, side, 1.0 + 0.5 * draw(), threshold, dark_on_light=draw() < 0.5)
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
        return any(p > 0 for p in (self.stroke_p, self.lowres_p, self.binarise_p, self.contrast_p, self.noise_p, self.thumbnail_p))


ROBUSTNESS_VARIANTS = ("8x8", "16x16", "1-bit", "8x8 1-bit thumbnail")


def degrade_validation(images: torch.Tensor, variant: str) -> torch.Tensor:
    """A fixed degradation of N x 28 x 28 uint8 images: scanned at 8x8 or 16x16 and scaled up,
    1-bit, or an 8x8 1-bit thumbnail as serving sees it.

    Deterministic (area downsampling, bilinear upsampling, threshold at 0.5; the thumbnail
    framed with a 1.25 margin, thresholded at 0.4), so every checkpoint is measured on the
    same images.
    """
    if variant == "8x8 1-bit thumbnail":
        return torch.stack([as_thumbnail(image, 8, 1.25, 0.4, dark_on_light=False)[0] for image in images])
    x = images.float().unsqueeze(1) / 255.0
    if variant == "1-bit":
        out = (x > 0.5).float()
    else:
        size = int(variant.split("x")[0])
        small = F.interpolate(x, size=(size, size), mode="area")
        out = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1)
