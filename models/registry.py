"""Served model names, what builds each network, and the input normalisation they share."""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from core.spec import ARCHITECTURE_NAMES, CLASSES, ENSEMBLE, INPUT_SHAPE, MNIST_MEAN, MNIST_STD, SERVED_MODELS
from models.inception import InceptionNet
from models.residual import ResidualNet

__all__ = [
    "ARCHITECTURES",
    "CLASSES",
    "ENSEMBLE",
    "INPUT_SHAPE",
    "MNIST_MEAN",
    "MNIST_STD",
    "SERVED_MODELS",
    "Architecture",
    "build",
]


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    constructor: Callable[[], nn.Module]


ARCHITECTURES: dict[str, Architecture] = {
    "inception": Architecture(
        "inception",
        "InceptionNet: conv5x5 -> InceptionA(10) -> conv5x5 -> InceptionA(20) -> fc (course lesson)",
        InceptionNet,
    ),
    "resnet": Architecture(
        "resnet",
        "ResidualNet: conv5x5 -> ResidualBlock(16) -> conv5x5 -> ResidualBlock(32) -> fc (course lesson)",
        ResidualNet,
    ),
}
assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES


def build(arch: str) -> nn.Module:
    """A freshly initialised network for a single-network architecture name."""
    try:
        return ARCHITECTURES[arch].constructor()
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}") from None
