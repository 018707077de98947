"""MNIST as uint8 tensors, the seeded validation split, and per-sample augmentation.

Images stay uint8 28x28 until a batch is formed: augmentation runs per sample in a
DataLoader worker (torchvision.transforms.v2), normalisation once per batch.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets import MNIST
from torchvision.transforms import v2

from models.registry import MNIST_MEAN, MNIST_STD
from models.training.hyperparameter import hyperparameter

__all__ = ["AugmentedDigits", "Digits", "Distortion", "load_mnist", "normalise", "split_validation"]


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

    def transform(self) -> v2.Transform:
        affine = v2.RandomAffine(degrees=self.degrees, translate=(self.translate, self.translate), scale=self.scale, shear=self.shear)
        if self.elastic_p <= 0:
            return affine
        elastic = v2.RandomApply([v2.ElasticTransform(alpha=self.elastic_alpha, sigma=self.elastic_sigma)], p=self.elastic_p)
        return v2.Compose([elastic, affine])


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
