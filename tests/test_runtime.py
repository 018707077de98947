"""The runtime keeps every torch operation in one thread: a dedicated one, or the event loop's.

Each thread that runs a parallel torch op gets an OpenMP team of its own; with a second
team on a 2-core machine a batch-1 forward pass became five times slower. Loading,
warm-up and inference must share one thread. On a CPU with one torch thread that is the
event loop's (no hand-off per pass); otherwise a dedicated inference thread.
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


@pytest.mark.parametrize(
    ("torch_threads", "mode", "inference_thread"),
    [(2, "auto", True), (1, "on", True), (1, "auto", False), (2, "off", False)],
)
async def test_models_load_warm_up_and_run_in_one_thread(
    monkeypatch: pytest.MonkeyPatch, torch_threads: int, mode: str, inference_thread: bool
) -> None:
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
    settings = Settings(weights_dir=WEIGHTS, warmup_batches=1, torch_threads=torch_threads, inference_thread=mode, device="cpu")
    runtime = runtime_module.Runtime(settings, Metrics())
    await runtime.start()
    try:
        await runtime.warm_up()
        probabilities = await runtime.predict("resnet", torch.zeros(3, 1, 28, 28))
    finally:
        await runtime.stop()
    assert probabilities.shape == (3, 10)
    assert runtime.inference_thread is inference_thread
    assert len(threads) > 1 and set(threads) == {"inference_0" if inference_thread else threading.current_thread().name}
    assert all(model.threads == torch_threads for model in runtime.models.values())


@pytest.mark.parametrize(
    ("mode", "device", "torch_threads", "expected"),
    [
        ("auto", "cpu", 1, False),  # the event loop: no hand-off per pass
        ("auto", "cpu", 3, True),  # parallel passes release the GIL: let HTTP work overlap them
        ("auto", "cuda", 1, True),  # a GPU pass ends in a sync that must not block the event loop
        ("auto", "mps", 1, True),
        ("on", "cpu", 1, True),
        ("off", "cuda", 1, False),
    ],
)
def test_where_passes_run(mode: str, device: str, torch_threads: int, expected: bool) -> None:
    settings = Settings(inference_thread=mode, torch_threads=torch_threads)
    assert runtime_module.wants_inference_thread(settings, torch.device(device)) is expected


@pytest.mark.parametrize("mode", ["on", "off"])
async def test_a_request_that_outlives_its_timeout_is_answered_overloaded(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """With passes on the event loop the timeout can only fire once the slow pass returns, but it still fires."""
    forward = ServedModel.forward
    slow = threading.Event()

    def sometimes_slow_forward(self: ServedModel, images: torch.Tensor) -> torch.Tensor:
        if slow.is_set():
            time.sleep(0.3)
        return forward(self, images)

    monkeypatch.setattr(ServedModel, "forward", sometimes_slow_forward)
    settings = Settings(weights_dir=WEIGHTS, warmup_batches=1, request_timeout_s=0.1, torch_threads=1, inference_thread=mode)
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
