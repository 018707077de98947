"""The models on one device, a dynamic batcher each, and the one thread that runs torch.

Readiness is honest: it turns true only after every model is loaded *and* has run its
warm-up passes through the real batching path, and false again the moment shutdown
begins. All torch work (loading, warm-up, CUDA-graph capture, passes) runs in one
inference thread: each thread that runs a parallel torch op gets an OpenMP team of its
own, and two teams on a small machine slow a batch-1 pass several times
(tests/test_engine.py checks the thread). The one exception holds no team: the spare
passes of large requests' batches (``service.inference.batching``), on threads that run
torch with one thread each, on the cores left to HTTP.

A pass gets the cores the HTTP workers leave free (``Settings.inference_threads``), whatever
its size: a pass given every core ran up to ten times slower whenever another process held
one of them (OpenMP's team waits for its preempted thread at each barrier;
bench/results/threads-2core.json).

A pass that fails fails only its batch; when the device itself has failed (a sticky CUDA
error, ``loader.device_failure``), the engine turns unready, answers every later pass 503,
and stops its process with SIGTERM: the supervisor starts a new inference process (several
workers), or the orchestrator a new container (one), each with a fresh device.
"""

import asyncio
import dataclasses
import functools
import logging
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from core.preprocess import PREPROCESSING_VERSION
from core.spec import INPUT_SHAPE
from models.checkpoint import CheckpointError
from service.config import Settings
from service.errors import LoadRefused, ModelUnloaded, Overloaded
from service.inference.backend import BackendStatus
from service.inference.batching import DynamicBatcher, SparePasses
from service.inference.loader import ServedModel, device_failure, load_models, select_device
from service.inference.repository import RepositoryEntry, changed, verify_smoke
from service.metrics import Metrics

__all__ = ["Engine", "stop_this_process"]

log = logging.getLogger(__name__)

DEVICE_LOST_RETRY_S = 5  # Retry-After once the device has failed: about what a restart takes


def stop_this_process(reason: str) -> None:
    """The graceful stop a SIGTERM starts (readiness off, requests in flight answered, exit)."""
    os.kill(os.getpid(), signal.SIGTERM)


class Engine:
    """An ``InferenceBackend`` in this process; also what the inference process serves."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.device = select_device(settings.device)
        self.max_batch_size = settings.batch_limit(self.device.type)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._spare_passes = settings.spare_passes(self.device.type)
        self._spare_executor = (
            ThreadPoolExecutor(max_workers=self._spare_passes, thread_name_prefix="inference-spare") if self._spare_passes else None
        )
        self.models: dict[str, ServedModel] = self._executor.submit(
            load_models, settings.weights_dir, self.device, settings.inference_threads(), self.max_batch_size
        ).result()
        self.batchers: dict[str, DynamicBatcher] = {}
        self.unloaded: set[str] = set()
        self.weights_generation = 0
        self._loading = asyncio.Lock()
        self.ready = False
        self.draining = False
        self.device_lost: str | None = None  # why the device failed, once it has
        self.on_device_lost: Callable[[str], None] = stop_this_process
        for name, model in self.models.items():
            if metrics is not None:
                metrics.observe_model(name, model.sha256, str(self.device))

    async def start(self) -> None:
        for name in self.models:
            batcher = DynamicBatcher(
                name,
                functools.partial(self._forward, name),  # the model is looked up per pass: a load swaps it
                self._executor,
                max_batch_size=self.max_batch_size,
                max_wait_s=self.settings.max_batch_wait_ms / 1000,
                max_queue_images=self.settings.queue_limit(self.device.type),
                observer=self._metrics,
                spare=self._spare(name),
            )
            batcher.start()
            self.batchers[name] = batcher

    async def warm_up(self) -> None:
        """Capture CUDA graphs, run every batch size a request can produce, then report ready."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._warm, self.models)
        self.ready = not self.draining
        log.info("ready: %s", ", ".join(self.models))

    def _warm(self, models: dict[str, ServedModel]) -> None:
        """On the inference thread: graphs (CUDA) or a traced pass (CPU), then ``warmup_batches`` passes of each batch size."""
        sizes = sorted({1, self.max_batch_size})
        for name, model in models.items():
            model.capture_graphs(self.max_batch_size)
            model.trace()
            for size in sizes:
                for _ in range(self.settings.warmup_batches):
                    model.forward(np.zeros((size, *INPUT_SHAPE), np.float32))
            how = " (CUDA graphs)" if model.graphs else " (traced)" if model.traced else ""
            log.info("warmed up %s with batch sizes %s%s", name, sizes, how)

    # The model repository ------------------------------------------------------------------

    async def load(self, name: str | None) -> list[str]:
        """Re-read the weights directory for ``name`` (None: SIGHUP's reload of them all) and serve
        what changed, once verified; the names swapped. Raises ``LoadRefused`` and keeps serving the
        old set when it fails."""
        async with self._loading:
            candidate = await asyncio.get_running_loop().run_in_executor(self._executor, self._candidate)
            swapped = changed(self.models, candidate)
            for changed_name in swapped:
                self.models[changed_name] = candidate[changed_name]
                if self._metrics is not None:
                    self._metrics.observe_model(changed_name, candidate[changed_name].sha256, str(self.device))
            self.weights_generation += bool(swapped)
            self.unloaded.discard(name or "")
            done = f"swapped {', '.join(swapped)}" if swapped else "the served weights are the ones on disk"
            log.info("loaded %s: %s", name or "every model", done)
            return swapped

    def reload_on_sighup(self, then: Callable[[], None] = lambda: None) -> None:
        """With model control on, SIGHUP loads the weights on disk as ``load`` does (``then`` after
        a load that swapped weights); a refused set is logged and the served one keeps serving."""
        if self.settings.model_control != "explicit":
            return

        async def reload() -> None:
            try:
                if await self.load(None):
                    then()
            except LoadRefused as exc:
                log.error("SIGHUP: the weights on disk were not loaded: %s", exc)

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))

    def _candidate(self) -> dict[str, ServedModel]:
        """On the inference thread: the weights on disk, loaded, warmed and smoke-checked."""
        try:
            candidate = load_models(self.settings.weights_dir, self.device, self.settings.inference_threads(), self.max_batch_size)
        except CheckpointError as exc:
            raise LoadRefused(str(exc)) from None
        self._warm(candidate)
        verify_smoke(candidate)
        return candidate

    async def unload(self, name: str) -> None:
        """``name`` answers 404 until it is loaded again; the others, the ensemble included, keep serving."""
        self.unloaded.add(name)
        log.info("unloaded %s", name)

    async def repository_index(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(self._entry(name, model)) for name, model in self.models.items()]

    def _entry(self, name: str, model: ServedModel) -> RepositoryEntry:
        if name in self.unloaded:
            return RepositoryEntry(name, "UNAVAILABLE", "unloaded", model.sha256)
        if not self.ready:
            return RepositoryEntry(name, "UNAVAILABLE", "warming up", model.sha256)
        return RepositoryEntry(name, "READY", "", model.sha256)

    def _spare(self, name: str) -> SparePasses | None:
        if self._spare_executor is None:
            return None
        forward = functools.partial(self._forward, name, threads=1)
        return SparePasses(forward, self._spare_executor, self._spare_passes)

    def _forward(self, name: str, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        """On the inference thread (or a spare one): one pass; a failure that leaves the device unusable stops the process."""
        if self.device_lost is not None:
            raise Overloaded(self._lost_detail(), retry_after_s=DEVICE_LOST_RETRY_S)
        try:
            return self.models[name].forward(images, threads)
        except Exception:
            failure = device_failure(self.device)
            if failure is None:  # the device still works: only this batch failed
                raise
            self.device_lost = failure
            log.critical("%s: stopping this process so that it restarts with a fresh device", self._lost_detail())
            self.on_device_lost(failure)
            raise Overloaded(self._lost_detail(), retry_after_s=DEVICE_LOST_RETRY_S) from None

    def _lost_detail(self) -> str:
        return f"the {self.device} device failed ({self.device_lost}) and can run no more passes; the service is restarting"

    def status(self) -> BackendStatus:
        if self.device_lost is not None:
            return BackendStatus(False, self.draining, self._lost_detail(), self.weights_generation)
        detail = ", ".join(self.models) if self.ready else "the models are still warming up"
        return BackendStatus(
            ready=self.ready and not self.draining, draining=self.draining, detail=detail, weights_generation=self.weights_generation
        )

    def begin_draining(self) -> None:
        self.draining = True

    async def predict(self, model: str, images: np.ndarray) -> np.ndarray:
        if model in self.unloaded:
            raise ModelUnloaded(model)
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
            "traced": served.traced is not None,
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
        if self._spare_executor is not None:
            self._spare_executor.shutdown(wait=True)
