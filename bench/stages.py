"""``python -m bench.stages``: what each stage of one single-image request costs, in one process.

No HTTP server and no load generator: each stage is the service's own function, called on a
real MNIST test image, timed one call at a time (``time.perf_counter_ns``) after a warm-up,
and reported as the median (and 90th percentile) microseconds per request:

- multipart parsing: ``service.uploads.read_request`` on a fake Starlette ``Request`` whose
  body is one PNG part, as ``bench.load`` sends it;
- JSON/base64 reading: the same with ``{"images": [base64 PNG]}``;
- PNG decode and preprocessing to 28x28: ``service.handler.decode_files`` of one image;
- a forward pass at batch 1 of each model: ``ServedModel.forward`` with the server's torch
  threads (one worker's server);
- response encoding: ``encode_predictions(...).model_dump_json()`` of one prediction;
- the whole app: ``GET /healthz``, ``POST /predict`` (multipart, then JSON) and the Open
  Inference Protocol's infer (the JSON body of one FP32 tensor) through
  ``service.app.create_app``'s ASGI app (middleware, routing, dependencies, the route, its
  access log line), with ``StandInEngine`` behind it and no socket: what the event loop
  spends on a request besides uvicorn's parsing and writing and the model's pass;
- the inference-process transport: a round trip ``RemoteBackend.predict`` ->
  ``InferenceServer`` -> back, over a real Unix socket, to a stand-in engine that answers at
  once (so the figure is the wire format and the event loops, not a model). The server
  side runs in a separate process on the stdlib asyncio loop, as ``service.workers`` runs
  it, and again on uvloop; the client runs on uvloop, as uvicorn's workers do. Compared
  with an in-process call of the same stand-in (what a one-worker server pays instead), and
  with both ends on one event loop. At ``--concurrency`` callers the transport's round trips
  per second are measured too.

Writes ``--out`` (default ``bench/results/stages.json``) and prints a table.
"""

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from bench.load import build_bodies, v2_infer_body
from bench.run import encode_pngs
from bench.server import describe_machine
from core.digit_rule import DigitRule
from core.spec import CLASSES, INPUT_SHAPE
from service.config import Settings
from service.handler import Classification, decode_files, encode_predictions
from service.inference.backend import BackendStatus
from service.inference.remote import RemoteBackend
from service.inference.server import InferenceServer
from service.uploads import RawImage, read_request

__all__ = ["StandInEngine", "main", "measure_stages"]

ROOT = Path(__file__).resolve().parent.parent

Result = dict[str, Any]


class StandInEngine:
    """An ``Engine`` as ``InferenceServer`` uses it, answering every request at once with constant probabilities;
    ``cards`` are the model cards it describes (a ``DigitClassifier`` reads their digit rules)."""

    def __init__(self, cards: list[dict[str, Any]] | None = None) -> None:
        self.answer = np.full((1, len(CLASSES)), 1 / len(CLASSES), np.float32)
        self.cards = cards or []

    def status(self) -> BackendStatus:
        return BackendStatus(ready=True, draining=False, detail="stand-in")

    def begin_draining(self) -> None:
        pass

    async def predict(self, model: str, images: np.ndarray) -> np.ndarray:
        return self.answer if len(images) == 1 else np.repeat(self.answer, len(images), axis=0)

    async def describe(self) -> dict[str, Any]:
        return {"models": self.cards, "device": "cpu", "max_batch_size": 1, "max_queue_images": 1, "torch_version": "-"}


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())
    return asyncio.new_event_loop()


async def _serve_stand_in(socket_path: str) -> None:
    server = InferenceServer(cast(Any, StandInEngine()), expected_workers=1)
    listener = await asyncio.start_unix_server(server.handle, path=socket_path)
    async with listener:
        await listener.serve_forever()


def _stand_in_process(socket_path: str, loop_kind: str) -> None:
    """The target of the separate inference process: serve the stand-in until terminated."""
    loop = _new_loop(loop_kind)
    loop.run_until_complete(_serve_stand_in(socket_path))


def http_scope(method: str, path: str, query: bytes = b"", body: bytes = b"", content_type: str = "") -> dict[str, Any]:
    """The ASGI scope uvicorn builds for a request over loopback."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "state": {},
    }


def fake_request(body: bytes, content_type: str) -> Any:
    """A Starlette ``Request`` whose body arrives in one ASGI message, as uvicorn delivers a small upload."""
    from starlette.requests import Request

    scope = http_scope("POST", "/predict", body=body, content_type=content_type)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


class Timer:
    """Times one call at a time: ``warmup_s`` unmeasured, then at least ``min_samples`` and ``measure_s``."""

    def __init__(self, warmup_s: float, measure_s: float, min_samples: int = 50) -> None:
        self.warmup_s = warmup_s
        self.measure_s = measure_s
        self.min_samples = min_samples

    def _samples(self, once: Callable[[], int]) -> list[int]:
        deadline = time.perf_counter() + self.warmup_s
        while time.perf_counter() < deadline:
            once()
        samples: list[int] = []
        deadline = time.perf_counter() + self.measure_s
        while len(samples) < self.min_samples or time.perf_counter() < deadline:
            samples.append(once())
        return samples

    def sync(self, function: Callable[[], object]) -> list[int]:
        def once() -> int:
            started = time.perf_counter_ns()
            function()
            return time.perf_counter_ns() - started

        return self._samples(once)

    async def run_async(self, function: Callable[[], Awaitable[object]]) -> list[int]:
        """The same for a coroutine function, timed inside the running loop."""
        samples: list[int] = []
        for seconds, keep in ((self.warmup_s, False), (self.measure_s, True)):
            deadline = time.perf_counter() + seconds
            while (keep and len(samples) < self.min_samples) or time.perf_counter() < deadline:
                started = time.perf_counter_ns()
                await function()
                if keep:
                    samples.append(time.perf_counter_ns() - started)
        return samples


def _row(key: str, stage: str, samples: list[int], **extra: Any) -> Result:
    ordered = sorted(samples)
    return {
        "key": key,
        "stage": stage,
        "median_us": statistics.median(ordered) / 1000,
        "p90_us": ordered[int(0.9 * (len(ordered) - 1))] / 1000,
        "samples": len(ordered),
        **extra,
    }


async def _throughput(call: Callable[[], Awaitable[object]], concurrency: int, seconds: float) -> float:
    """Calls per second with ``concurrency`` callers, each calling again as soon as its last call returns."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def _connected(socket_path: Path) -> RemoteBackend:
    backend = RemoteBackend(socket_path)
    await backend.connect(timeout_s=30)
    for _ in range(1000):  # the status frame says ready once this worker is counted
        if backend.status().ready:
            return backend
        await asyncio.sleep(0.005)
    raise RuntimeError(f"the stand-in inference server never reported ready: {backend.status()}")


def measure_transport(timer: Timer, concurrency: int, throughput_s: float) -> list[Result]:
    """Round trips through the inference-process transport against an in-process call of the same stand-in."""
    rows: list[Result] = []
    image = np.zeros((1, *INPUT_SHAPE), np.float32)
    stand_in = StandInEngine()
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as scratch:

        async def timed(backend: Any) -> tuple[list[int], float]:
            """One call at a time (latency samples), then ``concurrency`` callers (calls per second)."""
            samples = await timer.run_async(lambda: backend.predict("resnet", image))
            return samples, await _throughput(lambda: backend.predict("resnet", image), concurrency, throughput_s)

        async def in_process() -> None:
            samples, rate = await timed(stand_in)
            rows.append(_row("transport_in_process", "in-process call of the stand-in engine", samples, calls_per_s=rate))

        async def same_loop() -> None:
            path = Path(scratch, "same-loop.sock")
            server = InferenceServer(cast(Any, stand_in), expected_workers=1)
            listener = await asyncio.start_unix_server(server.handle, path=str(path))
            backend = await _connected(path)
            try:
                samples, rate = await timed(backend)
            finally:
                await backend.close()
                listener.close()
            rows.append(_row("transport_same_loop", "transport round trip, both ends on one loop (uvloop)", samples, calls_per_s=rate))

        async def other_process(server_loop: str) -> None:
            path = Path(scratch, f"{server_loop}.sock")
            process = multiprocessing.get_context("spawn").Process(target=_stand_in_process, args=(str(path), server_loop), daemon=True)
            process.start()
            try:
                backend = await _connected(path)
                try:
                    samples, rate = await timed(backend)
                finally:
                    await backend.close()
            finally:
                process.terminate()
                process.join(10)
            rows.append(
                _row(
                    f"transport_process_{server_loop}",
                    f"transport round trip to another process ({server_loop} loop there)",
                    samples,
                    calls_per_s=rate,
                )
            )

        for step in (in_process(), same_loop(), other_process("asyncio"), other_process("uvloop")):
            loop = _new_loop("uvloop")  # the HTTP worker's side runs on uvicorn's loop
            try:
                loop.run_until_complete(step)
            finally:
                loop.close()
    return rows


async def asgi_call(app: Any, method: str, path: str, query: bytes = b"", body: bytes = b"", content_type: str = "") -> int:
    """One request through ``app`` as uvicorn would deliver it (the body in one message); its status."""
    scope = http_scope(method, path, query, body, content_type)
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client stays connected; the app never asks again
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def measure_app(pngs: list[bytes], model: str, card: dict[str, Any], timer: Timer) -> list[Result]:
    """The whole ASGI app, one request at a time, with the stand-in engine behind it."""
    import logging

    from service.app import create_app
    from service.handler import DigitClassifier
    from service.logs import configure_logging

    settings = Settings(workers=1)
    configure_logging(settings)  # the access log costs what it costs served; its lines go nowhere here
    log_handler = cast(logging.StreamHandler[Any], logging.getLogger().handlers[0])
    stream = log_handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - closed below
    app = create_app(settings)
    app.state.handler = DigitClassifier(cast(Any, StandInEngine([{"name": model, "is_digit": card["is_digit"]}])), settings)
    requests: dict[str, tuple[str, tuple[Any, ...]]] = {
        "app_healthz": ("GET /healthz", ("GET", "/healthz")),
        "app_multipart": (
            "POST /predict, multipart",
            ("POST", "/predict", f"model={model}".encode(), *build_bodies(pngs[:1], "multipart", 1)[0]),
        ),
        "app_json": ("POST /predict, JSON", ("POST", "/predict", f"model={model}".encode(), *build_bodies(pngs[:1], "json", 1)[0])),
        "app_v2": ("POST /v2/models/M/infer, JSON tensor", ("POST", f"/v2/models/{model}/infer", b"", *v2_infer_body(pngs[:1]))),
    }
    rows = []
    loop = asyncio.new_event_loop()
    try:
        for key, (label, request) in requests.items():
            assert loop.run_until_complete(asgi_call(app, *request)) == 200, label
            samples = loop.run_until_complete(timer.run_async(lambda request=request: asgi_call(app, *request)))  # type: ignore[misc]
            rows.append(_row(key, f"the whole app in-process, stand-in engine: {label}", samples))
    finally:
        loop.close()
        cast(Any, log_handler.setStream(stream)).close()
    return rows


def measure_stages(
    pngs: list[bytes], weights_dir: Path, models: list[str], timer: Timer, concurrency: int, throughput_s: float
) -> list[Result]:
    settings = Settings(workers=1)
    rows: list[Result] = []
    png = pngs[0]
    multipart_body, multipart_type = build_bodies([png], "multipart", 1)[0]
    json_body, json_type = build_bodies([png], "json", 1)[0]
    assert json.loads(json_body)["images"] == [base64.b64encode(png).decode()]

    def reading(body: bytes, content_type: str) -> Callable[[], Awaitable[object]]:
        async def once() -> object:
            return await read_request(fake_request(body, content_type), settings)

        return once

    loop = asyncio.new_event_loop()
    try:
        read_multipart = reading(multipart_body, multipart_type)
        read_json = reading(json_body, json_type)
        assert len(loop.run_until_complete(read_multipart())) == 1  # type: ignore[arg-type]
        rows.append(_row("multipart", "multipart parsing (service.uploads)", loop.run_until_complete(timer.run_async(read_multipart))))
        rows.append(_row("json", "JSON + base64 reading (service.uploads)", loop.run_until_complete(timer.run_async(read_json))))
    finally:
        loop.close()

    raw = [RawImage(0, "digit-0.png", png)]
    decode = timer.sync(lambda: decode_files(raw, settings.max_image_pixels))
    rows.append(_row("decode", "PNG decode + preprocessing to 28x28 (decode_files)", decode))
    inputs = decode_files(raw, settings.max_image_pixels).pixels

    import torch

    from service.inference.loader import load_models

    threads = settings.inference_threads()
    served = load_models(weights_dir, torch.device("cpu"), threads)
    probabilities = served[models[0]].forward(inputs)
    metadata = served[models[0]].metadata
    # the model's digit rule from its metadata, as the server reads it; weights without one get a stand-in
    rule = DigitRule.of(metadata) if metadata.get("is_digit") else DigitRule("max_probability", 1.0, 0.5, 0.5)
    for name in models:
        forward = served[name].forward
        samples = timer.sync(lambda forward=forward: forward(inputs))  # type: ignore[misc]
        rows.append(_row(f"forward_{name}", f"forward pass, batch 1: {name} ({threads} torch thread(s))", samples))
    del served

    def encode() -> str:
        return encode_predictions(models[0], Classification.of(probabilities, rule)).model_dump_json()

    assert json.loads(encode())["predictions"][0]["label"] in range(10)
    rows.append(_row("encode", "response encoding (Classification.of, encode_predictions, model_dump_json)", timer.sync(encode)))
    rows += measure_app(pngs, models[0], metadata, timer)
    rows += measure_transport(timer, concurrency, throughput_s)
    return rows


def format_table(rows: list[Result]) -> str:
    lines = [
        "| stage | median us | p90 us | samples | round trips/s at concurrency |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        rate = f"{row['calls_per_s']:,.0f}" if "calls_per_s" in row else ""
        lines.append(f"| {row['stage']} | {row['median_us']:,.1f} | {row['p90_us']:,.1f} | {row['samples']} | {rate} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stages", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["inception", "resnet", "ensemble"])
    parser.add_argument("--warmup", type=float, default=0.2, help="unmeasured seconds per stage")
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per stage (at least 50 calls)")
    parser.add_argument("--concurrency", type=int, default=32, help="callers for the transport's round trips per second")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stages.json")
    args = parser.parse_args(argv)

    from models.data import load_mnist

    pngs = encode_pngs(load_mnist(args.data_dir, train=False, download=False).images[:1].numpy())
    load_average = [round(x, 2) for x in os.getloadavg()]
    timer = Timer(args.warmup, args.seconds)
    rows = measure_stages(pngs, args.weights_dir, args.models, timer, args.concurrency, args.seconds)

    results = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "machine": describe_machine(load_average_start=load_average, load_average_end=[round(x, 2) for x in os.getloadavg()]),
        "config": {
            "warmup_s": args.warmup,
            "measure_s": args.seconds,
            "transport_concurrency": args.concurrency,
            "png_bytes": len(pngs[0]),
        },
        "stages": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
