"""The running service's shared state: models, their batchers, readiness.

Readiness is honest: it turns true only after every model is loaded *and* has run its
warm-up batches through the real batching path, and false again the moment shutdown
begins.
"""

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import anyio
import torch

from models.registry import INPUT_SHAPE
from service.batching import DynamicBatcher
from service.config import Settings
from service.errors import Overloaded
from service.loader import ServedModel, load_models, select_device
from service.metrics import Metrics

__all__ = ["Runtime", "wants_inference_thread"]

log = logging.getLogger(__name__)


class _EventLoopExecutor(Executor):
    """Runs each call at once, in the calling thread: the event loop's."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


def wants_inference_thread(settings: Settings, device: torch.device) -> bool:
    """``auto``: a dedicated thread unless on a CPU with one torch thread. A GPU pass ends in
    a device sync, and parallel CPU passes release the GIL long enough to overlap HTTP work."""
    if settings.inference_thread != "auto":
        return settings.inference_thread == "on"
    return device.type != "cpu" or settings.inference_threads() > 1


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = select_device(settings.device)
        # One thread does all of torch's work, loading included: forward passes on one device
        # run one at a time anyway, and each thread that runs a parallel torch op gets its own
        # OpenMP team. With a second team (from loading in the main thread) on a 2-core machine
        # a batch-1 forward pass took 2.3 ms instead of 0.45 (bench/README.md).
        # Which thread: a dedicated one lets the event loop parse and decode the next requests
        # during a pass, but every torch op of the pass then takes the GIL back from the busy
        # event loop. On a CPU with one torch thread the event loop itself is faster: 1.4-1.5x
        # the images/s at concurrency 32 and a third off the idle latency (bench/README.md).
        # It blocks the loop for a pass (at most ~25 ms: 128 images through the ensemble).
        self.inference_thread = wants_inference_thread(settings, self.device)
        self._executor: Executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference") if self.inference_thread else _EventLoopExecutor()
        )
        self.models: dict[str, ServedModel] = self._executor.submit(
            load_models, settings.weights_dir, self.device, settings.inference_threads()
        ).result()
        self.batchers: dict[str, DynamicBatcher] = {}
        self.ready = False
        self.draining = False
        self.faults_to_inject = 0  # test hook, armed only through DIGITS_FAULT_INJECTION
        for name, model in self.models.items():
            self.metrics.model_info.labels(name).info({"sha256": model.sha256 or "", "device": str(self.device)})

    async def start(self) -> None:
        # Decoding a large image needs memory; one decode per core bounds both memory and CPU.
        self.decode_limiter = anyio.CapacityLimiter(os.cpu_count() or 1)
        for name, model in self.models.items():
            batcher = DynamicBatcher(
                name,
                functools.partial(self._forward, model),
                self._executor,
                max_batch_size=self.settings.max_batch_size,
                max_wait_s=self.settings.max_batch_wait_ms / 1000,
                max_queue_images=self.settings.max_queue_images,
                observer=self.metrics,
            )
            batcher.start()
            self.metrics.track_queue(name, batcher.queued_images)
            self.batchers[name] = batcher

    async def warm_up(self) -> None:
        """Run every batch size a request can produce through each model, then report ready."""
        loop = asyncio.get_running_loop()
        sizes = sorted({1, self.settings.max_batch_size})
        for name, model in self.models.items():
            for size in sizes:
                for _ in range(self.settings.warmup_batches):
                    await loop.run_in_executor(self._executor, self._warm_up_pass, model, size)
            log.info("warmed up %s with batch sizes %s", name, sizes)
        self.ready = not self.draining
        log.info("ready: %s", ", ".join(self.models))

    @staticmethod
    def _warm_up_pass(model: ServedModel, size: int) -> None:
        model.forward(torch.zeros(size, *INPUT_SHAPE))  # zeros made here: filling them is a parallel op too

    def _forward(self, model: ServedModel, images: torch.Tensor) -> torch.Tensor:
        if self.faults_to_inject > 0:
            self.faults_to_inject -= 1
            raise RuntimeError(f"injected fault in a forward pass of {model.name} ({len(images)} images)")
        return model.forward(images)

    async def predict(self, name: str, images: torch.Tensor) -> torch.Tensor:
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):  # unlike wait_for, no extra task
                return await self.batchers[name].predict(images)
        except TimeoutError:
            raise Overloaded(f"inference on {name!r} did not finish within {self.settings.request_timeout_s} s") from None

    def begin_draining(self) -> None:
        self.draining = True
        self.ready = False

    async def stop(self) -> None:
        self.begin_draining()
        for batcher in self.batchers.values():
            await batcher.stop()
        self._executor.shutdown(wait=True)
