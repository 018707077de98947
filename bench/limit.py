"""The models' own limit: forward passes in this process, no HTTP, no decoding, no batching logic.

Models are loaded by ``service.inference.loader`` and run by ``ServedModel.forward`` (numpy
in, numpy out), the code the inference thread runs for each pass, on the device the server
would pick, with as many torch threads as the server would use (``ServedModel`` sets them
for each pass).
"""

import statistics
import time
from dataclasses import dataclass

import numpy as np

from service.inference.loader import ServedModel

__all__ = ["BATCH_SIZES", "Limit", "measure_limits"]

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


def _measure(model: ServedModel, images: np.ndarray, warmup_s: float, measure_s: float) -> Limit:
    deadline = time.perf_counter() + warmup_s
    warm = 0
    while warm < 5 or time.perf_counter() < deadline:  # the first passes build oneDNN kernels and wake threads
        model.forward(images)
        warm += 1
    times: list[float] = []
    while len(times) < 5 or sum(times) < measure_s:
        started = time.perf_counter()
        model.forward(images)
        times.append(time.perf_counter() - started)
    total, median = sum(times), statistics.median(times)
    return Limit(
        model=model.name,
        batch_size=len(images),
        images_per_s=len(images) / median,
        images_per_s_mean=len(images) * len(times) / total,
        forward_ms_p50=1000 * median,
        forward_ms_mean=1000 * total / len(times),
        iterations=len(times),
    )


def measure_limits(
    models: list[ServedModel],
    images: np.ndarray,
    *,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    warmup_s: float = 0.2,
    measure_s: float = 0.5,
) -> list[Limit]:
    """Images per second of each model at each batch size; ``images`` is N x 1 x 28 x 28 float32 in [0, 1], N >= max batch size."""
    if len(images) < max(batch_sizes):
        raise ValueError(f"need at least {max(batch_sizes)} images, got {len(images)}")
    return [_measure(model, np.ascontiguousarray(images[:size]), warmup_s, measure_s) for model in models for size in batch_sizes]
