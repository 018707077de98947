"""MNIST read straight from torchvision's layout (``MNIST/raw/*-ubyte``) with numpy alone.

The corpus and its scoring run without torch or torchvision, like the HTTP workers.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Digits", "load"]

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049


@dataclass(frozen=True)
class Digits:
    """``images``: N x 28 x 28 uint8, white digit on black; ``labels``: N int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    raw = path.read_bytes()
    header = np.frombuffer(raw[:4], ">i4")[0]
    if header != magic:
        raise ValueError(f"{path} is not an IDX file with magic {magic} (found {header})")
    dims = int(raw[3])
    shape = tuple(int(n) for n in np.frombuffer(raw[4 : 4 + 4 * dims], ">i4"))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(data_dir: Path, *, train: bool) -> Digits:
    """The official training (60k) or test (10k) set under ``data_dir``/MNIST/raw."""
    prefix = "train" if train else "t10k"
    raw = Path(data_dir) / "MNIST" / "raw"
    images = _read_idx(raw / f"{prefix}-images-idx3-ubyte", IMAGE_MAGIC)
    labels = _read_idx(raw / f"{prefix}-labels-idx1-ubyte", LABEL_MAGIC).astype(np.int64)
    return Digits(images, labels)
