"""The dynamic batcher on its own, with a stand-in forward function we can observe; and the handler's
wait on it ending when the client leaves."""

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.errors import InputError
from service.config import Settings
from service.connections import Departure
from service.errors import Overloaded
from service.handler import DigitClassifier, Images
from service.inference.batching import DynamicBatcher, SparePasses


class RecordingForward:
    """Returns each image's first pixel in column 0, so results can be traced to inputs."""

    def __init__(self, delay_s: float = 0.0, fail_on_call: int | None = None) -> None:
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.fail_on_call = fail_on_call
        self.lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self.lock:
            self.sizes.append(len(images))
            call = len(self.sizes)
        time.sleep(self.delay_s)
        if call == self.fail_on_call:
            raise RuntimeError("injected failure")
        out = np.zeros((len(images), 10), np.float32)
        out[:, 0] = images[:, 0, 0, 0]
        return out


def images(*values: float) -> np.ndarray:
    batch = np.zeros((len(values), 1, 28, 28), np.float32)
    batch[:, 0, 0, 0] = values
    return batch


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


async def make(forward: RecordingForward, executor: ThreadPoolExecutor, **options: float) -> DynamicBatcher:
    settings = {"max_batch_size": 8, "max_wait_s": 0.0, "max_queue_images": 64} | options
    batcher = DynamicBatcher("m", forward, executor, **settings)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def test_idle_request_is_dispatched_without_waiting(executor: ThreadPoolExecutor) -> None:
    forward = RecordingForward()
    batcher = await make(forward, executor)
    started = time.perf_counter()
    result = await batcher.predict(images(3.0))
    assert time.perf_counter() - started < 0.05
    assert result[:, 0].tolist() == [3.0] and forward.sizes == [1]
    await batcher.stop()


async def test_concurrent_requests_share_forward_passes_and_keep_order(executor: ThreadPoolExecutor) -> None:
    forward = RecordingForward(delay_s=0.05)
    batcher = await make(forward, executor)
    results = await asyncio.gather(*(batcher.predict(images(float(i), float(i) + 0.5)) for i in range(12)))
    for i, result in enumerate(results):
        assert result[:, 0].tolist() == [float(i), float(i) + 0.5]
    assert sum(forward.sizes) == 24
    assert len(forward.sizes) < 12 and max(forward.sizes) == 8  # coalesced up to the max batch size
    assert batcher.stats.batches == len(forward.sizes) and batcher.stats.mean_batch_size > 2
    await batcher.stop()


async def test_large_request_is_split_into_max_size_passes(executor: ThreadPoolExecutor) -> None:
    forward = RecordingForward()
    batcher = await make(forward, executor)
    result = await batcher.predict(images(*range(20)))
    assert result[:, 0].tolist() == [float(v) for v in range(20)]
    assert forward.sizes == [8, 8, 4]
    await batcher.stop()


class TimedForward:
    """Records each pass's thread and [start, end) interval; each pass takes ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.passes: list[tuple[str, float, float, int]] = []
        self.lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        time.sleep(self.delay_s)
        with self.lock:
            self.passes.append((threading.current_thread().name, started, time.perf_counter(), len(images)))
        return np.zeros((len(images), 10), np.float32)


async def _spare_run(count: int, per_request: int) -> list[tuple[str, float, float, int]]:
    """``count`` requests of ``per_request`` images at once, passes of at most 32, one spare pass allowed."""
    forward = TimedForward(0.05)
    with ThreadPoolExecutor(1, "main") as main, ThreadPoolExecutor(1, "spare") as spare:
        batcher = DynamicBatcher(
            "m", forward, main, max_batch_size=32, max_wait_s=0.0, max_queue_images=4096, spare=SparePasses(forward, spare, 1)
        )
        batcher.start()
        try:
            await asyncio.gather(*(batcher.predict(images(*range(per_request))) for _ in range(count)))
        finally:
            await batcher.stop()
    return forward.passes


async def test_large_requests_run_a_spare_pass_beside_the_main_one() -> None:
    passes = await _spare_run(2, 64)  # 2 requests x 2 full chunks: 4 passes of 32
    assert sorted(size for *_, size in passes) == [32, 32, 32, 32]
    threads = [thread for thread, *_ in passes]
    assert any(t.startswith("spare") for t in threads) and any(t.startswith("main") for t in threads)
    main = [(start, end) for thread, start, end, _ in passes if thread.startswith("main")]
    spare = [(start, end) for thread, start, end, _ in passes if thread.startswith("spare")]
    assert any(s0 < m1 and m0 < s1 for m0, m1 in main for s0, s1 in spare), "a spare pass ran beside a main one"


async def test_many_small_requests_never_take_a_spare_pass() -> None:
    passes = await _spare_run(96, 1)  # full batches, but of 32 requests each: the HTTP side is busy
    assert sum(size for *_, size in passes) == 96
    assert all(thread.startswith("main") for thread, *_ in passes)


async def test_full_queue_is_refused(executor: ThreadPoolExecutor) -> None:
    forward = RecordingForward(delay_s=0.2)
    batcher = await make(forward, executor, max_queue_images=10)
    first = asyncio.create_task(batcher.predict(images(*range(8))))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="queue limit of 10"):
        await batcher.predict(images(*range(3)))
    assert (await first).shape == (8, 10)
    await batcher.stop()


async def test_failed_forward_fails_only_its_batch(executor: ThreadPoolExecutor) -> None:
    forward = RecordingForward(fail_on_call=1)
    batcher = await make(forward, executor)
    with pytest.raises(RuntimeError, match="injected failure"):
        await batcher.predict(images(1.0))
    assert (await batcher.predict(images(2.0)))[:, 0].tolist() == [2.0]
    await batcher.stop()


async def test_abandoned_request_is_not_computed(executor: ThreadPoolExecutor) -> None:
    forward = RecordingForward(delay_s=0.1)
    batcher = await make(forward, executor)
    busy = asyncio.create_task(batcher.predict(images(1.0)))
    await asyncio.sleep(0.01)  # the model is now busy with `busy`
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(batcher.predict(images(*range(5))), timeout=0.02)
    await busy
    assert (await batcher.predict(images(7.0)))[:, 0].tolist() == [7.0]
    assert forward.sizes == [1, 1]  # the five abandoned images never ran
    assert batcher.queued_images == 0
    await batcher.stop()


async def test_max_wait_lets_a_batch_fill(executor: ThreadPoolExecutor) -> None:
    forward = RecordingForward()
    batcher = await make(forward, executor, max_wait_s=0.05)
    first = asyncio.create_task(batcher.predict(images(1.0)))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(batcher.predict(images(2.0)))
    await asyncio.gather(first, second)
    assert forward.sizes == [2]
    await batcher.stop()


class _BatcherBackend:
    """The one backend method the handler's predict calls, in front of a batcher."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self.batcher = batcher

    async def predict(self, model: str, pixels: np.ndarray) -> np.ndarray:
        return await self.batcher.predict(pixels)


async def test_a_request_whose_client_left_stops_waiting_and_its_images_are_never_computed(executor: ThreadPoolExecutor) -> None:
    forward = RecordingForward(delay_s=0.3)
    batcher = await make(forward, executor, max_batch_size=1)
    classifier = DigitClassifier(_BatcherBackend(batcher), Settings())  # type: ignore[arg-type]
    busy = asyncio.create_task(batcher.predict(images(1.0)))  # holds the model for 0.3 s
    await asyncio.sleep(0.05)
    departure = Departure()
    waiting = asyncio.create_task(classifier.predict("resnet", Images.of(images(2.0)), departure))
    await asyncio.sleep(0.05)
    assert not waiting.done() and batcher.queued_images == 1

    departure()  # what the protocol calls when the connection closes before the answer
    with pytest.raises(InputError) as raised:
        await asyncio.wait_for(waiting, 0.1)  # at once, not when the busy pass ends
    assert raised.value.status_code == 499
    await busy
    await asyncio.sleep(0.05)
    assert forward.sizes == [1]  # the departed request's image was dropped from the queue
    await batcher.stop()
