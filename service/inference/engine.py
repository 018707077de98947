"""The models on one device, a dynamic batcher each, and the one thread that runs torch.

Readiness is honest: it turns true only after every model is loaded *and* has run its
warm-up passes through the real batching path, and false again the moment shutdown
begins. All torch work (loading, warm-up, CUDA-graph capture, passes) runs in one
inference thread: each thread that runs a parallel torch op gets an OpenMP team of its
own, and two teams on a small machine slow a batch-1 pass several times
(tests/test_engine.py checks the thread).

Compute follows the load. A pass normally gets the cores the HTTP workers leave free
(``Settings.inference_threads``). A wide pass (``WIDE_PASS_IMAGES`` or more) that serves no
more requests than there are HTTP workers gets every core: the workers that sent those
requests are waiting on it, so the HTTP side is idle. Under a flood of small requests a
batch serves many requests, and HTTP keeps its cores. ``DIGITS_TORCH_THREADS`` fixes the
count for every pass instead.
"""

import asyncio
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from core.preprocess import PREPROCESSING_VERSION
from core.spec import INPUT_SHAPE
from service.config import Settings
from service.inference.backend import BackendStatus
from service.inference.batching import DynamicBatcher
from service.inference.loader import ServedModel, load_models, select_device
from service.metrics import Metrics

__all__ = ["WIDE_PASS_IMAGES", "Engine"]

WIDE_PASS_IMAGES = 64

log = logging.getLogger(__name__)


class Engine:
    """An ``InferenceBackend`` in this process; also what the inference process serves."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.device = select_device(settings.device)
        self.max_batch_size = settings.batch_limit(self.device.type)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.models: dict[str, ServedModel] = self._executor.submit(
            load_models, settings.weights_dir, self.device, settings.inference_threads()
        ).result()
        self.batchers: dict[str, DynamicBatcher] = {}
        self.ready = False
        self.draining = False
        for name, model in self.models.items():
            if metrics is not None:
                metrics.observe_model(name, model.sha256, str(self.device))

    async def start(self) -> None:
        for name, model in self.models.items():
            batcher = DynamicBatcher(
                name,
                functools.partial(self._forward, model),
                self._executor,
                max_batch_size=self.max_batch_size,
                max_wait_s=self.settings.max_batch_wait_ms / 1000,
                max_queue_images=self.settings.queue_limit(self.device.type),
                observer=self._metrics,
            )
            batcher.start()
            self.batchers[name] = batcher

    async def warm_up(self) -> None:
        """Capture CUDA graphs, run every batch size a request can produce, then report ready."""
        loop = asyncio.get_running_loop()
        sizes = sorted({1, self.max_batch_size})
        for name, model in self.models.items():
            await loop.run_in_executor(self._executor, model.capture_graphs, self.max_batch_size)
            for size in sizes:
                for _ in range(self.settings.warmup_batches):
                    await loop.run_in_executor(self._executor, functools.partial(model.forward, np.zeros((size, *INPUT_SHAPE), np.float32)))
            log.info("warmed up %s with batch sizes %s%s", name, sizes, " (CUDA graphs)" if model.graphs else "")
        self.ready = not self.draining
        log.info("ready: %s", ", ".join(self.models))

    def pass_threads(self, images: int, requests: int) -> int | None:
        """Intra-op threads for a pass of ``images`` serving ``requests``; None: the model's own."""
        if self.settings.torch_threads or images < WIDE_PASS_IMAGES or requests > self.settings.workers:
            return None
        return os.cpu_count() or 1

    def _forward(self, model: ServedModel, images: np.ndarray, requests: int) -> np.ndarray:
        return model.forward(images, self.pass_threads(len(images), requests))

    def status(self) -> BackendStatus:
        detail = ", ".join(self.models) if self.ready else "the models are still warming up"
        return BackendStatus(ready=self.ready and not self.draining, draining=self.draining, detail=detail)

    def begin_draining(self) -> None:
        self.draining = True

    async def predict(self, model: str, images: np.ndarray) -> np.ndarray:
        return await self.batchers[model].predict(images)

    async def describe(self) -> dict[str, Any]:
        return {
            "models": [self._card(name, served) for name, served in self.models.items()],
            "device": str(self.device),
            "max_batch_size": self.max_batch_size,
            "max_queue_images": self.settings.queue_limit(self.device.type),
            "torch_version": torch.__version__,
        }

    def _card(self, name: str, served: ServedModel) -> dict[str, Any]:
        meta = served.metadata
        stats = self.batchers[name].stats  # started before any caller can ask
        return {
            "name": name,
            "architecture": meta["architecture"],
            "parameters": meta["parameters"],
            "macs_per_image": meta["macs_per_image"],
            "device": str(served.device),
            "dtype": "float32",
            "cuda_graphs": served.graphs is not None,
            "weights": {"file": served.weights_file, "sha256": served.sha256, "members": meta.get("members")},
            "metrics": {k: v for k, v in meta["metrics"].items() if k != "confusion_matrix"},
            "calibration": meta["calibration"],
            "is_digit": meta.get("is_digit"),
            "preprocessing_version": PREPROCESSING_VERSION,
            "recipe": meta.get("recipe"),
            "batches": stats.batches,
            "images": stats.images,
            "mean_batch_size": round(stats.mean_batch_size, 3),
            "largest_batch": stats.largest_batch,
        }

    async def stop(self) -> None:
        self.begin_draining()
        for batcher in self.batchers.values():
            await batcher.stop()
        self._executor.shutdown(wait=True)
