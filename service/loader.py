"""Load every checkpoint onto the device, verified, and make it ready to serve.

Startup fails with one message naming the file when weights are missing, corrupt or do
not match their metadata: a server that cannot answer correctly must not report ready.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import load_classifier, load_ensemble
from models.registry import ARCHITECTURES, ENSEMBLE, MNIST_MEAN, MNIST_STD

__all__ = ["ServedModel", "load_models", "select_device"]

log = logging.getLogger(__name__)


def select_device(preference: str) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU; an explicit choice must exist."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if preference == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (preference == "cuda" and not cuda) or (preference == "mps" and not mps):
        raise RuntimeError(f"device {preference!r} was requested but is not available on this machine")
    return torch.device(preference)


@dataclass
class ServedModel:
    """A calibrated model on its device, with the metadata /model-info reports."""

    name: str
    module: nn.Module  # N x 1 x 28 x 28 normalised -> N x 10 probabilities
    metadata: dict[str, Any]
    device: torch.device
    weights_file: str | None
    sha256: str | None
    threads: int = 1  # torch intra-op threads

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities for pixel intensities in [0, 1]; runs in the runtime's one torch thread."""
        torch.set_num_threads(self.threads)  # OpenMP keeps this per calling thread: set it where the pass runs
        with torch.inference_mode():
            batch = (images.to(self.device, non_blocking=True) - MNIST_MEAN) / MNIST_STD
            return self.module(batch).float().cpu()


def load_models(weights_dir: Path, device: torch.device, threads: int = 1) -> dict[str, ServedModel]:
    members = {name: load_classifier(weights_dir, name) for name in ARCHITECTURES}
    served = {
        name: ServedModel(name, module.to(device), meta, device, f"{name}.pt", meta["sha256"], threads)
        for name, (module, meta) in members.items()
    }
    ensemble, meta = load_ensemble(
        weights_dir,
        {name: model.module for name, model in served.items()},
        {name: model.sha256 for name, model in served.items() if model.sha256},
    )
    served[ENSEMBLE] = ServedModel(ENSEMBLE, ensemble.to(device), meta, device, None, None, threads)
    for model in served.values():
        log.info("loaded %s on %s (%s)", model.name, device, model.sha256 or "members " + ", ".join(meta["members"]))
    return served
