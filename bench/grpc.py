"""V2 REST beside V2 gRPC: single-image inference throughput of one server.

    python -m bench.grpc                                # 3 rounds x concurrency 8, 32 x REST, gRPC (~1 minute)
    python -m bench.grpc --rounds 2 --duration 3 --output bench/results/grpc-rest-2core.json

One server (``python -m service``, default settings, ``--workers`` HTTP workers) serves both
protocols. Each run is closed-loop: ``concurrency`` clients, each sending its next request as
soon as the last is answered, ``--warmup`` seconds unmeasured, then ``--duration`` seconds
counted. Within a round REST and gRPC alternate at each concurrency, and the order flips every
round, so that the drift of a shared machine falls on both alike.

The request is one MNIST test digit, FP32 [1, 1, 28, 28], as each protocol's tritonclient
sends it by default: REST with the binary tensor data extension (and binary outputs), gRPC
with ``raw_input_contents``; every answer is checked (status, and the label the first answer
gave). Both clients are Python asyncio in this process, so they cost alike: aiohttp with one
keep-alive connection per client, grpc.aio with one channel (HTTP/2 streams), the request
bytes built before timing. On a small machine the clients share the cores with the server,
so the CPU seconds of both are reported per request.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench.server import ROOT, ServerProcess, describe_machine, free_port

__all__ = ["Run", "main"]

PROTOCOLS = ("rest", "grpc")
HEADER_LENGTH = "Inference-Header-Content-Length"
Send = Callable[[], Awaitable[int | None]]  # the label answered, None for an error


@dataclass(frozen=True)
class Run:
    protocol: str
    concurrency: int
    round: int
    requests: int
    errors: int
    seconds: float
    client_cpu_ms_per_request: float
    server_cpu_ms_per_request: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def first_digit(data_dir: Path) -> np.ndarray:
    """The first MNIST test image as V2 FP32 input: 1 x 1 x 28 x 28 intensities in [0, 1]."""
    from models.data import load_mnist

    image = load_mnist(data_dir, train=False, download=False).images[0].numpy()
    return (image.astype(np.float32) / np.float32(255.0)).reshape(1, 1, 28, 28)


def rest_sender(session: aiohttp.ClientSession, url: str, pixels: np.ndarray) -> Send:
    header = json.dumps(
        {
            "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": pixels.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body, headers = header + pixels.tobytes(), {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}

    async def send() -> int | None:
        async with session.post(url, data=body, headers=headers) as response:
            data = await response.read()
            if response.status != 200:
                return None
        length = int(response.headers[HEADER_LENGTH])
        offset = length
        for output in json.loads(data[:length])["outputs"]:
            size = output["parameters"]["binary_data_size"]
            if output["name"] == "label":
                return int(np.frombuffer(data[offset : offset + size], "<i8")[0])
            offset += size
        return None

    return send


def grpc_sender(stub: service_pb2_grpc.GRPCInferenceServiceStub, model: str, pixels: np.ndarray) -> Send:
    request = service_pb2.ModelInferRequest(model_name=model, raw_input_contents=[pixels.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])

    async def send() -> int | None:
        try:
            response = await stub.ModelInfer(request)
        except grpc.RpcError:
            return None
        label = [output.name for output in response.outputs].index("label")
        return int(np.frombuffer(response.raw_output_contents[label], "<i8")[0])

    return send


async def drive(
    protocol: str, send: Send, expected: int, concurrency: int, round_: int, args: argparse.Namespace, server: ServerProcess
) -> Run:
    """Closed loop: ``concurrency`` clients for warm-up plus duration; what the counted window saw."""
    counting = stopping = False
    answered = errors = 0

    async def client() -> None:
        nonlocal answered, errors
        while not stopping:
            label = await send()
            if counting:
                answered, errors = (answered + 1, errors) if label == expected else (answered, errors + 1)

    clients = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.sleep(args.warmup)
    counting = True
    started, client_cpu, server_cpu = time.perf_counter(), time.process_time(), server.cpu_seconds()
    await asyncio.sleep(args.duration)
    counting = False
    seconds = time.perf_counter() - started
    client_cpu, server_cpu = time.process_time() - client_cpu, server.cpu_seconds() - server_cpu
    stopping = True
    await asyncio.gather(*clients)
    per_request = 1000 / max(answered, 1)
    return Run(protocol, concurrency, round_, answered, errors, seconds, client_cpu * per_request, server_cpu * per_request)


async def measure(args: argparse.Namespace, server: ServerProcess, grpc_port: int, pixels: np.ndarray) -> list[Run]:
    limit = max(args.concurrency)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready = await stub.ServerReady(service_pb2.ServerReadyRequest(), wait_for_ready=True, timeout=60)
        assert ready.ready, "the gRPC side is not ready"
        senders = {
            "rest": rest_sender(session, f"{server.url}/v2/models/{args.model}/infer", pixels),
            "grpc": grpc_sender(stub, args.model, pixels),
        }
        labels = {name: await send() for name, send in senders.items()}
        assert labels["rest"] is not None and labels["rest"] == labels["grpc"], labels
        runs = []
        for round_ in range(1, args.rounds + 1):
            for concurrency in args.concurrency:
                for protocol in PROTOCOLS if round_ % 2 else PROTOCOLS[::-1]:
                    run = await drive(protocol, senders[protocol], labels["rest"], concurrency, round_, args, server)
                    print(f"round {round_}  c={concurrency:<3} {protocol:<4} {run.per_second:8.0f} req/s  errors {run.errors}", flush=True)
                    runs.append(run)
        return runs


def report(runs: Sequence[Run]) -> list[dict[str, object]]:
    """Per concurrency: each protocol's median req/s over the rounds and gRPC / REST."""
    rows = []
    for concurrency in sorted({run.concurrency for run in runs}):
        row: dict[str, object] = {"concurrency": concurrency}
        for protocol in PROTOCOLS:
            mine = [run for run in runs if run.concurrency == concurrency and run.protocol == protocol]
            row[protocol] = {
                "req_per_s": [round(run.per_second) for run in mine],
                "median_req_per_s": round(statistics.median(run.per_second for run in mine)),
                "client_cpu_ms_per_request": round(statistics.median(run.client_cpu_ms_per_request for run in mine), 3),
                "server_cpu_ms_per_request": round(statistics.median(run.server_cpu_ms_per_request for run in mine), 3),
                "errors": sum(run.errors for run in mine),
            }
        row["grpc_over_rest"] = round(row["grpc"]["median_req_per_s"] / row["rest"]["median_req_per_s"], 2)  # type: ignore[index]
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds counted per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds unmeasured before each run")
    parser.add_argument("--workers", type=int, default=1, help="DIGITS_WORKERS of the server")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    pixels = first_digit(args.data_dir)
    grpc_port = free_port()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as logs:
        env = {"DIGITS_GRPC_PORT": str(grpc_port), "DIGITS_WORKERS": str(args.workers)}
        server = ServerProcess("grpc", env, Path(logs), ROOT / "weights")
        try:
            server.start()
            runs = asyncio.run(measure(args, server, grpc_port, pixels))
        finally:
            server.stop()
    rows = report(runs)
    machine = describe_machine(load_average_start=load_before, load_average_end=os.getloadavg())
    print(f"\n{machine['cpu_count']} cores, shared (load average {load_before[0]:.1f} at start)", end=", ")
    print(f"model {args.model}, {args.workers} HTTP worker(s)")
    print(f"{'concurrency':>11}  {'REST req/s':>10}  {'gRPC req/s':>10}  {'gRPC/REST':>9}  client CPU ms/req REST, gRPC")
    for row in rows:
        rest, grpc_ = row["rest"], row["grpc"]
        assert isinstance(rest, dict) and isinstance(grpc_, dict)
        print(
            f"{row['concurrency']:>11}  {rest['median_req_per_s']:>10}  {grpc_['median_req_per_s']:>10}  {row['grpc_over_rest']:>9}"
            f"  {rest['client_cpu_ms_per_request']}, {grpc_['client_cpu_ms_per_request']}"
        )
    if args.output:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "output"}
        results = {"machine": machine, "config": config, "summary": rows, "runs": [asdict(run) for run in runs]}
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(run.errors for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
