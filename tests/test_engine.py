"""The engine keeps all of torch's work in its one inference thread, and times out honestly.

Each thread that runs a parallel torch op gets an OpenMP team of its own; with a second
team on a 2-core machine a batch-1 forward pass became five times slower. Loading,
warm-up and inference must share one thread.
"""

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import torch

from core.preprocess import PREPROCESSING_VERSION
from models.data import Digits
from service.config import Settings
from service.errors import Overloaded
from service.handler import DigitClassifier, Images
from service.inference import engine as engine_module
from service.inference import loader as loader_module
from service.inference.engine import Engine
from service.inference.loader import ServedModel, batch_buckets, check_preprocessing, load_models
from service.metrics import Metrics
from tests.conftest import WEIGHTS


@pytest.mark.parametrize("torch_threads", [1, 2])
async def test_torch_work_stays_in_the_inference_thread(monkeypatch: pytest.MonkeyPatch, torch_threads: int) -> None:
    calls: list[tuple[str, int]] = []  # (thread, images) of each load and pass
    forward = ServedModel.forward

    def recording_load(*args: object) -> dict[str, ServedModel]:
        calls.append((threading.current_thread().name, 0))
        return load_models(*args)  # type: ignore[arg-type]

    def recording_forward(self: ServedModel, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        calls.append((threading.current_thread().name, len(images)))
        return forward(self, images, threads)

    monkeypatch.setattr(engine_module, "load_models", recording_load)
    monkeypatch.setattr(ServedModel, "forward", recording_forward)
    engine = Engine(Settings(weights_dir=WEIGHTS, warmup_batches=1, torch_threads=torch_threads, device="cpu"), Metrics())
    await engine.start()
    try:
        await engine.warm_up()
        small = await engine.predict("resnet", np.zeros((3, 1, 28, 28), np.float32))
        large = await engine.predict("resnet", np.zeros((200, 1, 28, 28), np.float32))
    finally:
        await engine.stop()
    assert small.shape == (3, 10) and large.shape == (200, 10)
    assert {thread for thread, _ in calls} == {"inference_0"}
    assert calls[-2:] == [("inference_0", 128), ("inference_0", 72)]  # split at the CPU's max batch of 128
    assert all(model.threads == torch_threads for model in engine.models.values())


async def test_a_request_that_outlives_its_timeout_is_answered_overloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    forward = ServedModel.forward
    slow = threading.Event()

    def sometimes_slow_forward(self: ServedModel, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        if slow.is_set():
            time.sleep(0.3)
        return forward(self, images, threads)

    monkeypatch.setattr(ServedModel, "forward", sometimes_slow_forward)
    settings = Settings(weights_dir=WEIGHTS, warmup_batches=1, request_timeout_s=0.1, torch_threads=1)
    engine = Engine(settings, Metrics())
    handler = DigitClassifier(engine, settings)
    await engine.start()
    try:
        await engine.warm_up()
        slow.set()
        with pytest.raises(Overloaded, match=r"did not finish within 0\.1 s"):
            await handler.predict("resnet", Images.of(np.zeros((1, 1, 28, 28), np.float32)))
        slow.clear()
        await asyncio.sleep(0.3)  # the slow pass finishes; the model serves again
        assert (await handler.predict("resnet", Images.of(np.zeros((2, 1, 28, 28), np.float32)))).probabilities.shape == (2, 10)
    finally:
        await engine.stop()


def fail_passes_while_set(monkeypatch: pytest.MonkeyPatch, message: str) -> threading.Event:
    """Every pass raises ``RuntimeError(message)`` while the returned event is set."""
    forward = ServedModel.forward
    armed = threading.Event()

    def maybe_failing_forward(self: ServedModel, images: np.ndarray, threads: int | None = None) -> np.ndarray:
        if armed.is_set():
            raise RuntimeError(message)
        return forward(self, images, threads)

    monkeypatch.setattr(ServedModel, "forward", maybe_failing_forward)
    return armed


@contextlib.asynccontextmanager
async def warm_engine() -> AsyncIterator[tuple[Engine, list[str]]]:
    """A started, warmed engine, and the reasons it reported its device lost (it does not stop this process)."""
    engine = Engine(Settings(weights_dir=WEIGHTS, warmup_batches=1, torch_threads=1), Metrics())
    lost: list[str] = []
    engine.on_device_lost = lost.append
    await engine.start()
    try:
        await engine.warm_up()
        yield engine, lost
    finally:
        await engine.stop()


async def test_a_failed_pass_on_a_working_device_fails_only_its_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    failing = fail_passes_while_set(monkeypatch, "a bad batch")
    async with warm_engine() as (engine, lost):
        failing.set()
        with pytest.raises(RuntimeError, match="a bad batch"):
            await engine.predict("resnet", np.zeros((1, 1, 28, 28), np.float32))
        failing.clear()
        assert (await engine.predict("resnet", np.zeros((2, 1, 28, 28), np.float32))).shape == (2, 10)
        assert engine.status().ready and lost == []


async def test_a_device_that_fails_turns_the_engine_unready_and_stops_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sticky CUDA error, simulated: the pass raises and the device check that follows fails too."""
    broken = fail_passes_while_set(monkeypatch, "CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(engine_module, "device_failure", lambda device: "CUDA error: an illegal memory access was encountered")
    async with warm_engine() as (engine, lost):
        broken.set()
        with pytest.raises(Overloaded, match=r"device failed \(CUDA error: an illegal memory access") as first:
            await engine.predict("resnet", np.zeros((1, 1, 28, 28), np.float32))
        assert first.value.retry_after_s > 0
        assert lost == ["CUDA error: an illegal memory access was encountered"]
        status = engine.status()
        assert not status.ready and "can run no more passes" in status.detail
        with pytest.raises(Overloaded, match="the service is restarting"):  # later passes are not tried on the dead device
            await engine.predict("inception", np.zeros((1, 1, 28, 28), np.float32))
        assert len(lost) == 1


def test_stopping_this_process_is_the_graceful_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    engine_module.stop_this_process("CUDA error")
    assert sent == [(os.getpid(), signal.SIGTERM)]


def test_readiness_follows_warm_up_and_draining() -> None:
    engine = Engine(Settings(weights_dir=WEIGHTS, warmup_batches=1, torch_threads=1))

    async def lifecycle() -> list[tuple[bool, bool]]:
        seen = [(engine.status().ready, engine.status().draining)]
        await engine.start()
        await engine.warm_up()
        seen.append((engine.status().ready, engine.status().draining))
        engine.begin_draining()
        seen.append((engine.status().ready, engine.status().draining))
        await engine.stop()
        return seen

    assert asyncio.run(lifecycle()) == [(False, False), (True, False), (False, True)]


@pytest.mark.parametrize(
    ("limit", "buckets"), [(1, [1]), (8, [1, 2, 4, 8]), (100, [1, 2, 4, 8, 16, 32, 64, 100]), (2048, [1 << k for k in range(12)])]
)
def test_cuda_graph_buckets_cover_every_batch_size_up_to_the_limit(limit: int, buckets: list[int]) -> None:
    assert batch_buckets(limit) == buckets
    assert all(any(b >= n for b in buckets) for n in range(1, limit + 1))


def test_batch_and_queue_limits_follow_the_device() -> None:
    assert (Settings().batch_limit("cpu"), Settings().batch_limit("cuda")) == (128, 2048)
    assert Settings().queue_limit("cpu") == 2048 and Settings(max_batch_size=64, max_queue_images=100).queue_limit("cuda") == 100


def test_a_failed_cuda_graph_capture_leaves_the_model_on_eager_passes(caplog: pytest.LogCaptureFixture) -> None:
    """On this machine capture raises for real (no CUDA device); on a GPU it may for other reasons."""
    served = load_models(WEIGHTS, torch.device("cpu"))["resnet"]
    served.device = torch.device("cuda")  # what capture sees; the module itself stays on the CPU
    with caplog.at_level(logging.WARNING, logger="service.inference.loader"):
        served.capture_graphs(8)
    assert served.graphs is None
    assert "CUDA graph capture failed for resnet, serving it with eager passes" in caplog.text
    served.device = torch.device("cpu")
    assert served.forward(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)


def test_the_traced_cpu_pass_answers_as_the_eager_one(mnist_test: Digits) -> None:
    served = load_models(WEIGHTS, torch.device("cpu"))
    images = (mnist_test.images[:64, None].numpy() / 255).astype(np.float32)
    for model in served.values():
        eager = model.forward(images)
        model.trace()
        assert model.traced is not None, model.name
        np.testing.assert_allclose(model.forward(images), eager, atol=1e-5)


ONEDNN = "aten::mkldnn_convolution"
NATIVE = {"aten::_slow_conv2d_forward", "aten::_nnpack_spatial_convolution"}  # PyTorch's own, by batch size


def _convolution_kernels(model: ServedModel, images: np.ndarray) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        model.forward(images)
    return {event.key for event in profiler.key_averages()} & {ONEDNN, *NATIVE}


def test_cpu_passes_run_onednn_for_full_batches_only_and_answer_alike(mnist_test: Digits) -> None:
    served = load_models(WEIGHTS, torch.device("cpu"), onednn_from=32)
    images = (mnist_test.images[:32, None].numpy() / 255).astype(np.float32)
    for model in served.values():
        model.trace()
        assert _convolution_kernels(model, images) == {ONEDNN}, model.name
        for size in (1, 31):
            kernels = _convolution_kernels(model, images[:size])
            assert kernels and kernels <= NATIVE, (model.name, size, kernels)
        np.testing.assert_allclose(model.forward(images)[:31], model.forward(images[:31]), atol=1e-5, err_msg=model.name)


def test_a_failed_trace_leaves_the_model_on_eager_passes(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(module: torch.nn.Module) -> torch.jit.ScriptModule:
        raise RuntimeError("an operator the tracer does not know")

    monkeypatch.setattr(loader_module, "trace_cpu_pass", refuse)
    served = load_models(WEIGHTS, torch.device("cpu"))["inception"]
    with caplog.at_level(logging.WARNING, logger="service.inference.loader"):
        served.trace()
    assert served.traced is None
    assert "tracing failed for inception, serving it with eager passes: an operator the tracer does not know" in caplog.text
    assert served.forward(np.zeros((3, 1, 28, 28), np.float32)).shape == (3, 10)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the tracer's own check sees the same difference
def test_a_trace_that_answers_differently_is_refused() -> None:
    class Dropout(torch.nn.Module):  # different on every call: the check against the eager pass must catch it
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.softmax(torch.rand(images.shape[0], 10), dim=1)

    with pytest.raises(ValueError, match="the traced pass differs from the eager one"):
        loader_module.trace_cpu_pass(Dropout())


async def test_model_cards_say_whether_graphs_are_used_and_which_preprocessing_runs() -> None:
    engine = Engine(Settings(weights_dir=WEIGHTS, warmup_batches=1, device="cpu"), Metrics())
    await engine.start()
    try:
        await engine.warm_up()
        cards = (await engine.describe())["models"]
    finally:
        await engine.stop()
    assert {card["name"]: card["cuda_graphs"] for card in cards} == {"inception": False, "resnet": False, "ensemble": False}
    assert {card["name"]: card["traced"] for card in cards} == {"inception": True, "resnet": True, "ensemble": True}
    assert {card["preprocessing_version"] for card in cards} == {PREPROCESSING_VERSION}
    assert {card["is_digit"]["preprocessing_version"] for card in cards} == {PREPROCESSING_VERSION}


def test_weights_fitted_with_another_preprocessing_are_served_with_a_loud_warning(caplog: pytest.LogCaptureFixture) -> None:
    metadata = {"is_digit": {"preprocessing_version": PREPROCESSING_VERSION + 1}}
    with caplog.at_level(logging.WARNING, logger="service.inference.loader"):
        assert check_preprocessing("resnet", metadata) is False
    assert f"fitted with preprocessing version {PREPROCESSING_VERSION + 1}" in caplog.text
    assert check_preprocessing("resnet", {"is_digit": {"preprocessing_version": PREPROCESSING_VERSION}}) is True
