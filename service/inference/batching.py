"""Dynamic batching: concurrent requests for one model share forward passes.

A fixed batching delay adds latency to every request at low load, so a batch is
dispatched as soon as the model is free; requests that arrive while a forward pass runs
queue up and form the next, larger batch. ``max_wait_s`` (default 0) optionally holds a
free model a little longer to let a batch fill.

Compute follows the load: when the queue holds full batches made of large requests' chunks
(at most ``LARGE_REQUEST_CHUNKS`` requests in a batch), the HTTP side has little to do, so
up to ``SparePasses.limit`` more such batches run at the same time on spare threads of one
torch thread each, on the cores the HTTP side would otherwise hold. Batches of many small
requests never do: under a flood of single images those cores parse HTTP.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service import tracing
from service.errors import Overloaded

__all__ = ["BatchObserver", "BatchStats", "DynamicBatcher", "Forward", "SparePasses"]

log = logging.getLogger(__name__)


@dataclass
class _Item:
    images: np.ndarray  # n x 1 x 28 x 28, n <= max_batch_size
    future: asyncio.Future[np.ndarray]
    trace: Any  # the request's tracing context (None when tracing is off)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Observed batching, reported by /model-info."""

    batches: int = 0
    images: int = 0
    largest_batch: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.images / self.batches if self.batches else 0.0


class BatchObserver(Protocol):
    def observe_batch(self, model: str, size: int, queue_waits_s: list[float], inference_s: float) -> None: ...

    def observe_queue(self, model: str, images: int) -> None: ...


Forward = Callable[[np.ndarray], np.ndarray]
"""A pass over N x 1 x 28 x 28 images -> N x 10 probabilities."""

LARGE_REQUEST_CHUNKS = 2  # a full batch of at most this many queued chunks comes from large requests
MIN_SPARE_BATCH = 32  # smaller passes are not worth a thread; 32 images run at 77-96% of 128's rate (bench/results/cpu-2core-run1.json)


@dataclass(frozen=True)
class SparePasses:
    """Where passes beside the main one run: ``forward`` on ``executor``, at most ``limit`` at a time."""

    forward: Forward
    executor: Executor
    limit: int


class DynamicBatcher:
    """Queues images for one model and runs them in batches on ``executor``."""

    def __init__(
        self,
        name: str,
        forward: Forward,
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue_images: int,
        observer: BatchObserver | None = None,
        spare: SparePasses | None = None,
    ) -> None:
        self.name = name
        self._forward = forward
        self._executor = executor
        self._spare = spare
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_images = max_queue_images
        self._observer = observer
        self._queue: deque[_Item] = deque()
        self._queued_images = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Overloaded("the server is shutting down"))
        self._queue.clear()
        self._set_queued(0)

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (n x 10) for ``images`` (n x 1 x 28 x 28), in order.

        A request larger than ``max_batch_size`` is split into several forward passes. If
        the caller gives up (timeout, disconnect), its chunks not yet started are dropped.
        """
        count = len(images)
        if self._queued_images + count > self.max_queue_images:
            raise Overloaded(
                f"model {self.name!r} has {self._queued_images} images queued; "
                f"{count} more would exceed the queue limit of {self.max_queue_images}"
            )
        loop = asyncio.get_running_loop()
        step = self.max_batch_size
        trace = tracing.current_context()
        items = [_Item(images[start : start + step], loop.create_future(), trace) for start in range(0, count, step)]
        self._queue.extend(items)
        self._set_queued(self._queued_images + count)
        self._wakeup.set()
        try:
            if len(items) == 1:
                return await items[0].future
            return np.concatenate(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                item.future.cancel()  # no-op for finished ones; queued ones are skipped

    def _set_queued(self, images: int) -> None:
        self._queued_images = images
        if self._observer is not None:
            self._observer.observe_queue(self.name, images)

    def _large_batch_waits(self) -> bool:
        """Whether the queue's head is a full batch of at most LARGE_REQUEST_CHUNKS live chunks."""
        size = chunks = 0
        for item in self._queue:
            if item.future.done():
                continue
            size += len(item.images)
            chunks += 1
            if size >= self.max_batch_size or chunks > LARGE_REQUEST_CHUNKS:
                break
        return size == self.max_batch_size and chunks <= LARGE_REQUEST_CHUNKS

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        taken = 0
        while self._queue and size + len(self._queue[0].images) <= self.max_batch_size:
            item = self._queue.popleft()
            taken += len(item.images)
            if item.future.done():  # its request was abandoned
                continue
            batch.append(item)
            size += len(item.images)
        self._set_queued(self._queued_images - taken)
        return batch

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait_s > 0 and self._queued_images < self.max_batch_size:
                await asyncio.sleep(self.max_wait_s)
            spare = self._spare if self._spare and self.max_batch_size >= MIN_SPARE_BATCH and self._large_batch_waits() else None
            batch = self._take_batch()
            if not batch:
                continue
            passes = [self._run_batch(batch)]
            while spare is not None and len(passes) <= spare.limit and self._large_batch_waits():
                passes.append(self._run_batch(self._take_batch(), spare))
            await asyncio.gather(*passes)

    @staticmethod
    def _joined(chunks: list[np.ndarray]) -> np.ndarray:
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    async def _run_batch(self, batch: list[_Item], spare: SparePasses | None = None) -> None:
        """One pass over the batch: on the main executor, or on a spare one."""
        size = sum(len(item.images) for item in batch)
        started = time.perf_counter()
        forward, executor = (spare.forward, spare.executor) if spare else (self._forward, self._executor)
        try:
            chunks = [item.images for item in batch]
            probabilities = await asyncio.get_running_loop().run_in_executor(executor, lambda: forward(self._joined(chunks)))
        except Exception as exc:  # a failed forward fails only this batch's requests
            log.exception("forward pass of %s failed for a batch of %d images", self.name, size)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finished = time.perf_counter()
        self.stats.batches += 1
        self.stats.images += size
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        if self._observer is not None:
            self._observer.observe_batch(self.name, size, [started - item.enqueued for item in batch], finished - started)
        tracing.record_pass([item.trace for item in batch], [item.enqueued for item in batch], started, finished, size)
        offset = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result(probabilities[offset : offset + len(item.images)])
            offset += len(item.images)
