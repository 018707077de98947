"""The running service's shared state: models, their batchers, readiness.

Readiness is honest: it turns true only after every model is loaded *and* has run its
warm-up batches through the real batching path, and false again the moment shutdown
begins.
"""

import asyncio
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import anyio
import torch

from models.registry import INPUT_SHAPE
from service.batching import DynamicBatcher
from service.config import Settings
from service.errors import Overloaded
from service.loader import ServedModel, load_models, select_device
from service.metrics import Metrics

__all__ = ["Runtime", "event_loop_pass_images"]

log = logging.getLogger(__name__)


def event_loop_pass_images(settings: Settings, device: torch.device) -> int:
    """Passes of at most this many images run on the event loop, larger ones in the inference thread.

    With the thread, every torch op of a pass (~100) releases the GIL for its kernel and must
    take it back from the busy event loop, and each pass crosses threads twice. On the loop a
    pass has neither, but the loop parses nothing while it runs. Measured on 2 cores
    (bench/README.md): idle latency -30-45 % and c32 throughput up to +45 % in interleaved
    runs, but a worse c32 p99 in some full runs, so it is off unless asked for. Only with one
    torch thread on the CPU: a parallel pass would give the loop thread an OpenMP team of its
    own, and a GPU pass ends in a device sync.
    """
    if settings.event_loop_pass_images > 0 and not (device.type == "cpu" and settings.inference_threads() == 1):
        raise RuntimeError(
            "DIGITS_EVENT_LOOP_PASS_IMAGES > 0 needs the CPU and one torch thread (DIGITS_TORCH_THREADS=1): "
            "torch ops in a second thread would get an OpenMP team of their own"
        )
    return settings.event_loop_pass_images


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = select_device(settings.device)
        # One inference thread does all of torch's work, loading included: forward passes on
        # one device run one at a time anyway, and each thread that runs a parallel torch op
        # gets its own OpenMP team. With a second team (from loading in the main thread) on a
        # 2-core machine a batch-1 forward pass took 2.3 ms instead of 0.45 (bench/README.md).
        # The one exception, small passes on the event loop (DIGITS_EVENT_LOOP_PASS_IMAGES), is
        # allowed only with one torch thread, where no op starts a team.
        self.event_loop_pass_images = event_loop_pass_images(settings, self.device)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
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
                event_loop_pass_images=self.event_loop_pass_images,
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
