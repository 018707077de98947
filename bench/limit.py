"""The models' own limit: forward passes in this process, no HTTP, no decoding, no batching logic.

Models are loaded through ``models.checkpoint`` exactly as ``service.loader`` loads them, on
the device the server would pick, with as many torch threads as the server would use, and
every pass applies the same normalisation and output conversion as ``ServedModel.forward``.
"""

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import load_classifier, load_ensemble
from models.registry import ARCHITECTURES, ENSEMBLE, MNIST_MEAN, MNIST_STD

__all__ = ["BATCH_SIZES", "Limit", "load_modules", "measure_limits", "server_threads"]

BATCH_SIZES = (1, 8, 32, 64, 128, 256)


@dataclass(frozen=True)
class Limit:
    model: str
    batch_size: int
    images_per_s: float  # batch size / median forward time: robust to a pass stalled by another process
    images_per_s_mean: float  # batch size x passes / total time
    forward_ms_p50: float  # median time of one forward pass of this batch size
    forward_ms_mean: float
    iterations: int


def server_threads(torch_threads: int) -> int:
    """What ``service.runtime.Runtime`` passes to ``torch.set_num_threads``."""
    return torch_threads or os.cpu_count() or 1


def load_modules(weights_dir: Path, device: torch.device) -> dict[str, nn.Module]:
    """inception, resnet and ensemble, verified and calibrated, as ``service.loader.load_models`` builds them."""
    members = {name: load_classifier(weights_dir, name) for name in ARCHITECTURES}
    modules: dict[str, nn.Module] = {name: module.to(device) for name, (module, _) in members.items()}
    ensemble, _ = load_ensemble(
        weights_dir, dict(modules), {name: meta["sha256"] for name, (_, meta) in members.items() if meta.get("sha256")}
    )
    modules[ENSEMBLE] = ensemble.to(device)
    return modules


def _forward(module: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The body of ``ServedModel.forward``."""
    with torch.inference_mode():
        batch = (images.to(device, non_blocking=True) - MNIST_MEAN) / MNIST_STD
        return module(batch).float().cpu()


def _measure(model: str, module: nn.Module, images: torch.Tensor, device: torch.device, warmup_s: float, measure_s: float) -> Limit:
    deadline = time.perf_counter() + warmup_s
    warm = 0
    while warm < 5 or time.perf_counter() < deadline:  # the first passes build oneDNN kernels and wake threads
        _forward(module, images, device)
        warm += 1
    times: list[float] = []
    while len(times) < 5 or sum(times) < measure_s:
        started = time.perf_counter()
        _forward(module, images, device)
        times.append(time.perf_counter() - started)
    total, median = sum(times), statistics.median(times)
    return Limit(
        model=model,
        batch_size=len(images),
        images_per_s=len(images) / median,
        images_per_s_mean=len(images) * len(times) / total,
        forward_ms_p50=1000 * median,
        forward_ms_mean=1000 * total / len(times),
        iterations=len(times),
    )


def measure_limits(
    modules: dict[str, nn.Module],
    images: torch.Tensor,
    device: torch.device,
    *,
    threads: int,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    warmup_s: float = 0.2,
    measure_s: float = 0.5,
) -> list[Limit]:
    """Images per second of each model at each batch size; ``images`` is N x 1 x 28 x 28 in [0, 1], N >= max batch size."""
    if len(images) < max(batch_sizes):
        raise ValueError(f"need at least {max(batch_sizes)} images, got {len(images)}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [
            _measure(name, module, images[:size].contiguous(), device, warmup_s, measure_s)
            for name, module in modules.items()
            for size in batch_sizes
        ]
    finally:
        torch.set_num_threads(previous)
