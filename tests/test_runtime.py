"""The runtime keeps torch's work in its one inference thread, small passes with one torch thread excepted.

Each thread that runs a parallel torch op gets an OpenMP team of its own; with a second
team on a 2-core machine a batch-1 forward pass became five times slower. Loading,
warm-up and inference must share one thread. With one torch thread no op starts a team,
and small passes run on the event loop instead, without a hand-off to the thread and back.
"""

import asyncio
import threading
import time

import pytest
import torch

from service import runtime as runtime_module
from service.config import Settings
from service.errors import Overloaded
from service.loader import ServedModel, load_models
from service.metrics import Metrics
from tests.conftest import WEIGHTS


@pytest.mark.parametrize(("torch_threads", "on_the_loop"), [(2, 0), (1, 0), (1, 32)])
async def test_torch_work_stays_in_the_inference_thread_but_for_small_passes_when_asked(
    monkeypatch: pytest.MonkeyPatch, torch_threads: int, on_the_loop: int
) -> None:
    calls: list[tuple[str, int]] = []  # (thread, images) of each load and pass
    forward = ServedModel.forward

    def recording_load(*args: object) -> dict[str, ServedModel]:
        calls.append((threading.current_thread().name, 0))
        return load_models(*args)  # type: ignore[arg-type]

    def recording_forward(self: ServedModel, images: torch.Tensor) -> torch.Tensor:
        calls.append((threading.current_thread().name, len(images)))
        return forward(self, images)

    monkeypatch.setattr(runtime_module, "load_models", recording_load)
    monkeypatch.setattr(ServedModel, "forward", recording_forward)
    settings = Settings(
        weights_dir=WEIGHTS, warmup_batches=1, torch_threads=torch_threads, device="cpu", event_loop_pass_images=on_the_loop
    )
    runtime = runtime_module.Runtime(settings, Metrics())
    await runtime.start()
    try:
        await runtime.warm_up()
        calls.clear()  # loading and warm-up: test_loading_and_warm_up_run_in_the_inference_thread
        small = await runtime.predict("resnet", torch.zeros(3, 1, 28, 28))
        large = await runtime.predict("resnet", torch.zeros(40, 1, 28, 28))
    finally:
        await runtime.stop()
    assert small.shape == (3, 10) and large.shape == (40, 10)
    loop_thread = threading.current_thread().name
    assert calls == [(loop_thread if on_the_loop else "inference_0", 3), ("inference_0", 40)]
    assert runtime.event_loop_pass_images == on_the_loop
    assert all(model.threads == torch_threads for model in runtime.models.values())


async def test_loading_and_warm_up_run_in_the_inference_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    forward = ServedModel.forward

    def recording_load(*args: object) -> dict[str, ServedModel]:
        threads.append(threading.current_thread().name)
        return load_models(*args)  # type: ignore[arg-type]

    def recording_forward(self: ServedModel, images: torch.Tensor) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return forward(self, images)

    monkeypatch.setattr(runtime_module, "load_models", recording_load)
    monkeypatch.setattr(ServedModel, "forward", recording_forward)
    runtime = runtime_module.Runtime(Settings(weights_dir=WEIGHTS, warmup_batches=1, torch_threads=1), Metrics())
    await runtime.start()
    try:
        await runtime.warm_up()
    finally:
        await runtime.stop()
    assert len(threads) > 1 and set(threads) == {"inference_0"}


@pytest.mark.parametrize(
    ("setting", "device", "torch_threads"),
    [
        (8, "cpu", 2),  # a parallel pass would give the loop thread an OpenMP team
        (8, "cuda", 1),  # a GPU pass ends in a device sync that must not block the loop
        (8, "mps", 1),
    ],
)
def test_small_passes_on_the_loop_need_one_torch_thread_on_the_cpu(setting: int, device: str, torch_threads: int) -> None:
    settings = Settings(event_loop_pass_images=setting, torch_threads=torch_threads)
    with pytest.raises(RuntimeError, match="needs the CPU and one torch thread"):
        runtime_module.event_loop_pass_images(settings, torch.device(device))
    assert runtime_module.event_loop_pass_images(Settings(torch_threads=torch_threads), torch.device(device)) == 0


@pytest.mark.parametrize("on_the_loop", [0, 32])
async def test_a_request_that_outlives_its_timeout_is_answered_overloaded(monkeypatch: pytest.MonkeyPatch, on_the_loop: int) -> None:
    """With the pass on the event loop the timeout can only fire once the slow pass returns, but it still fires."""
    forward = ServedModel.forward
    slow = threading.Event()

    def sometimes_slow_forward(self: ServedModel, images: torch.Tensor) -> torch.Tensor:
        if slow.is_set():
            time.sleep(0.3)
        return forward(self, images)

    monkeypatch.setattr(ServedModel, "forward", sometimes_slow_forward)
    settings = Settings(weights_dir=WEIGHTS, warmup_batches=1, request_timeout_s=0.1, torch_threads=1, event_loop_pass_images=on_the_loop)
    runtime = runtime_module.Runtime(settings, Metrics())
    await runtime.start()
    try:
        await runtime.warm_up()
        slow.set()
        with pytest.raises(Overloaded, match=r"did not finish within 0\.1 s"):
            await runtime.predict("resnet", torch.zeros(1, 1, 28, 28))
        slow.clear()
        await asyncio.sleep(0.3)  # the slow pass finishes; the model serves again
        assert (await runtime.predict("resnet", torch.zeros(2, 1, 28, 28))).shape == (2, 10)
    finally:
        await runtime.stop()
