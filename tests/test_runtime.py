"""The runtime keeps every torch operation in its one inference thread.

Each thread that runs a parallel torch op gets an OpenMP team of its own; with a second
team on a 2-core machine a batch-1 forward pass became five times slower. Loading,
warm-up and inference must share one thread.
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


async def test_models_load_warm_up_and_run_in_the_inference_thread(monkeypatch: pytest.MonkeyPatch) -> None:
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
    runtime = runtime_module.Runtime(Settings(weights_dir=WEIGHTS, warmup_batches=1, torch_threads=2), Metrics())
    await runtime.start()
    try:
        await runtime.warm_up()
        probabilities = await runtime.predict("resnet", torch.zeros(3, 1, 28, 28))
    finally:
        await runtime.stop()
    assert probabilities.shape == (3, 10)
    assert len(threads) > 1 and set(threads) == {"inference_0"}
    assert all(model.threads == 2 for model in runtime.models.values())


async def test_a_request_that_outlives_its_timeout_is_answered_overloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    forward = ServedModel.forward
    slow = threading.Event()

    def sometimes_slow_forward(self: ServedModel, images: torch.Tensor) -> torch.Tensor:
        if slow.is_set():
            time.sleep(0.3)
        return forward(self, images)

    monkeypatch.setattr(ServedModel, "forward", sometimes_slow_forward)
    runtime = runtime_module.Runtime(Settings(weights_dir=WEIGHTS, warmup_batches=1, request_timeout_s=0.1), Metrics())
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
