"""MNIST as uint8 tensors, the seeded validation split, and augmentation.

Images stay uint8 28x28 until a batch is formed: augmentation runs in DataLoader workers,
per sample (torchvision.transforms.v2) or, for a batched distortion, per batch with one
``grid_sample``; normalisation once per batch.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.datasets import MNIST
from torchvision.transforms import v2

from models.registry import MNIST_MEAN, MNIST_STD
from models.training.hyperparameter import hyperparameter

__all__ = ["AugmentedBatches", "AugmentedDigits", "Digits", "Distortion", "load_mnist", "normalise", "split_validation"]


@dataclass(frozen=True)
class Digits:
    images: torch.Tensor  # N x 28 x 28 uint8, white digit on black
    labels: torch.Tensor  # N int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Digits":
        return Digits(self.images[index], self.labels[index])


def load_mnist(data_dir: Path, *, train: bool, download: bool) -> Digits:
    """The official training (60k) or test (10k) set in torchvision's layout under ``data_dir``."""
    dataset = MNIST(str(data_dir), train=train, download=download)
    return Digits(dataset.data, dataset.targets.long())


def split_validation(digits: Digits, val_size: int, seed: int) -> tuple[Digits, Digits]:
    """A seeded (train, validation) split, identical for every architecture with the same seed."""
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed))
    return digits.subset(order[val_size:]), digits.subset(order[:val_size])


@dataclass(frozen=True)
class Distortion:
    """The per-sample geometric distortion: elastic (as Simard et al. 2003 did for MNIST) with
    probability elastic_p, then a random affine one.

    A section of the training recipe (``models.training.recipe``).
    """

    degrees: float = hyperparameter(12.0, "random rotation range (+-, degrees)")
    translate: float = hyperparameter(0.1, "random shift range (+-, a share of the side)")
    scale: tuple[float, float] = hyperparameter((0.85, 1.15), "random zoom range")
    shear: float = hyperparameter(8.0, "random shear range (+-, degrees)")
    elastic_p: float = hyperparameter(0.5, "probability of an elastic distortion")
    elastic_alpha: float = hyperparameter(34.0, "strength of the elastic distortion (pixels)")
    elastic_sigma: float = hyperparameter(4.0, "smoothness of the elastic distortion (pixels)")
    mode: Literal["per_image", "batched"] = hyperparameter(
        "per_image",
        "per_image: torchvision's ElasticTransform and RandomAffine on each image; batched: the same ranges drawn per "
        "image, applied to a whole batch with one grid_sample (one interpolation instead of two; ~20x less CPU)",
    )

    def transform(self) -> v2.Transform:
        affine = v2.RandomAffine(degrees=self.degrees, translate=(self.translate, self.translate), scale=self.scale, shear=self.shear)
        if self.elastic_p <= 0:
            return affine
        elastic = v2.RandomApply([v2.ElasticTransform(alpha=self.elastic_alpha, sigma=self.elastic_sigma)], p=self.elastic_p)
        return v2.Compose([elastic, affine])

    def distort_batch(self, images: torch.Tensor) -> torch.Tensor:
        """N x 1 x H x W uint8 -> the same, each image with its own rotation, shear, zoom and shift, and with
        probability ``elastic_p`` an elastic field (uniform noise, Gaussian-blurred, scaled as torchvision's), all
        in one sampling grid. Draws use torch's global generator (seeded per DataLoader worker)."""
        n, _, height, width = images.shape

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n)

        angle = torch.deg2rad(uniform(-self.degrees, self.degrees))
        shear = torch.tan(torch.deg2rad(uniform(-self.shear, self.shear)))
        scale = uniform(*self.scale)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # forward map (normalised coordinates): scale * rotation @ x-shear; the grid needs its inverse
        forward = torch.stack([torch.stack([cos, cos * shear - sin], 1), torch.stack([sin, sin * shear + cos], 1)], 1)
        forward = forward * scale[:, None, None]
        inverse = torch.linalg.inv(forward)
        shift = torch.stack([uniform(-2 * self.translate, 2 * self.translate) for _ in range(2)], 1)  # a side is 2 wide
        theta = torch.cat([inverse, -(inverse @ shift[:, :, None])], 2)
        grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
        if self.elastic_p > 0:
            grid = grid + self._elastic_field(n, height, width) * (torch.rand(n) < self.elastic_p)[:, None, None, None]
        distorted = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return distorted.round().clamp(0, 255).to(torch.uint8)

    def _elastic_field(self, n: int, height: int, width: int) -> torch.Tensor:
        """N x H x W x 2 displacements in normalised coordinates, as torchvision's ElasticTransform draws one."""
        size = int(8 * self.elastic_sigma + 1) | 1  # odd
        radius = size // 2
        offsets = torch.arange(size, dtype=torch.float32) - radius
        kernel = torch.exp(-(offsets**2) / (2 * self.elastic_sigma**2))
        kernel = kernel / kernel.sum()
        noise = torch.rand(n * 2, 1, height, width) * 2 - 1
        noise = F.conv2d(F.pad(noise, [radius, radius, 0, 0], mode="reflect"), kernel.view(1, 1, 1, size))
        noise = F.conv2d(F.pad(noise, [0, 0, radius, radius], mode="reflect"), kernel.view(1, 1, size, 1))
        strength = torch.tensor([self.elastic_alpha / width, self.elastic_alpha / height])
        field = noise.view(n, 2, height, width) * strength[None, :, None, None]
        return field.permute(0, 2, 3, 1)


class AugmentedBatches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Each item is a batch, for a DataLoader whose sampler yields lists of indices (``batch_size=None``):
    the images distorted together, then each passed through ``per_image``; N x 1 x 28 x 28 uint8 and N labels."""

    def __init__(self, digits: Digits, distortion: Distortion, per_image: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self.digits, self.distortion, self.per_image = digits, distortion, per_image

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        images = self.distortion.distort_batch(self.digits.images[index].unsqueeze(1))
        if self.per_image is not None:
            images = torch.stack([self.per_image(image) for image in images])
        return images, self.digits.labels[index]


class AugmentedDigits(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Each item is a freshly augmented 1 x 28 x 28 uint8 image and its label."""

    def __init__(self, digits: Digits, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self.digits = digits
        self.transform = transform

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.digits.images[index].unsqueeze(0)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.digits.labels[index]


def normalise(images: torch.Tensor) -> torch.Tensor:
    """N x [1 x] 28 x 28, uint8 (0-255) or float (0-1) -> float N x 1 x 28 x 28 with MNIST's mean and std."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    intensity = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return (intensity - MNIST_MEAN) / MNIST_STD
