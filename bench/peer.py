"""``python -m bench.peer``: this service against LitServe and Triton serving the same weights.

    pip install -e '.[dev]'                   # LitServe is in the dev extra, not a dependency
    make triton-venv                          # PyTriton, in a venv on the distribution's python3.11
    python -m bench.peer                      # inception and ensemble at concurrency 1, 32, 64, both peers
    python -m bench.peer --workers 2          # ours with 2 HTTP workers, LitServe with 2 API servers
    python -m bench.peer --peers triton --models resnet --concurrency 1 32 --duration 5

Only the server around the model differs. Each peer's model is this service's own code:
the same checkpoints, calibration and traced pass (``service.inference.loader``), the same torch thread
count and the same maximum batch size.

- **LitServe** (``python -m bench.peer --serve-litserve MODEL``, started by this script): a
  ``LitAPI`` whose steps also use this service's decoding and preprocessing
  (``core.preprocess``), with LitServe's dynamic batching. ``--workers N`` runs ours with N
  HTTP worker processes (``DIGITS_WORKERS``) and LitServe with as many API-server processes
  (``--litserve-api-servers``), each in front of one inference worker. The request is JSON
  ``{"images": [base64 PNG]}``, one MNIST test image (LitServe batches requests, not images),
  to ``/predict`` on both.
- **Triton** (``--serve-triton MODEL``, run by ``--triton-python``): PyTriton, that is
  Triton's C++ HTTP front end and dynamic batcher in front of a Python function that calls
  ``ServedModel.forward``. PyTriton's stub links the system's libpython, so its venv is built
  on the distribution's ``python3.11`` (``make triton-venv``, which also puts this
  project's venv on its path). The request is the Open Inference Protocol's JSON body, one
  FP32 [1, 1, 28, 28] tensor, to ``/v2/models/MODEL/infer`` on both.

Both servers of a pair get the same requests from the same load generator (``bench.load``).
Each server runs in its own process group, ended as a whole (``bench.server``). Results go
to ``<results-dir>/peer-<name>.json`` and a table on stdout, with the targets: our images/s
at concurrency 32 at least 2.5x LitServe's and 1.2x Triton's, and our median latency at
concurrency 1 below Triton's.
"""

import argparse
import base64
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import litserve as ls
import numpy as np
import torch

from bench.load import BodyKind, Job, LoadGenerator, v2_infer_body, write_payloads
from bench.report import PEER_CONCURRENCY, PEER_MIN_RATIO, TRITON_MIN_RATIO, target
from bench.run import encode_pngs
from bench.server import ServerProcess, describe_machine, free_port
from core.preprocess import decode_image, to_mnist
from models.data import load_mnist
from service.config import Settings
from service.inference.loader import ServedModel, load_models

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


class DigitsAPI(ls.LitAPI):  # type: ignore[misc]
    """This service's model, decoding and preprocessing, as LitServe's steps."""

    def __init__(self, model_name: str, settings: Settings, batch_timeout_s: float) -> None:
        # batch_timeout 0 would match this service's "dispatch when the model is free", but
        # LitServe's worker then polls its queue without blocking and keeps a core busy.
        super().__init__(max_batch_size=settings.batch_limit("cpu"), batch_timeout=batch_timeout_s)
        self.model_name = model_name
        self.settings = settings

    def setup(self, device: str) -> None:
        models = load_models(
            self.settings.weights_dir, torch.device("cpu"), self.settings.inference_threads(), self.settings.batch_limit("cpu")
        )
        self.model: ServedModel = models[self.model_name]
        self.model.trace()  # the traced pass, as this service's engine runs it

    def decode_request(self, request: dict[str, Any]) -> np.ndarray:
        (text,) = request["images"]
        image = decode_image(base64.b64decode(text), max_pixels=self.settings.max_image_pixels)
        return to_mnist(image)[None]  # 1 x 28 x 28 float32

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)  # N x 1 x 28 x 28

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.model.forward(images)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, probabilities: np.ndarray) -> dict[str, Any]:
        row: list[float] = probabilities.tolist()
        label = max(range(len(row)), key=row.__getitem__)
        return {"label": label, "confidence": row[label], "probabilities": row}


def serve_litserve(model_name: str, batch_timeout_s: float, api_servers: int, workers: int) -> None:
    """The LitServe server on $HOST:$PORT (set by ``bench.server``): blocks until terminated.

    Its torch threads are those of our server with ``workers`` HTTP workers."""
    settings = Settings(workers=workers)
    server = ls.LitServer(DigitsAPI(model_name, settings, batch_timeout_s), accelerator="cpu", workers_per_device=1)
    server.run(
        host=os.environ["HOST"],
        port=int(os.environ["PORT"]),
        num_api_servers=api_servers,
        generate_client_file=False,
        log_level="warning",
    )


def serve_triton(model_name: str, workers: int, max_queue_delay_us: int) -> None:
    """PyTriton on $HOST:$PORT (set by ``bench.server``), HTTP only: blocks until terminated."""
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    settings = Settings(workers=workers)
    model = load_models(settings.weights_dir, torch.device("cpu"), settings.inference_threads(), settings.batch_limit("cpu"))[model_name]
    model.trace()  # the traced pass, as this service's engine runs it

    @batch  # type: ignore[untyped-decorator]
    def infer(input: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": model.forward(input)}

    config = TritonConfig(
        http_address=os.environ["HOST"], http_port=int(os.environ["PORT"]), grpc_port=free_port(), metrics_port=free_port(), log_verbose=0
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=model_name,
            infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(1, 28, 28))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
            config=ModelConfig(
                max_batch_size=settings.batch_limit("cpu"), batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us)
            ),
        )
        triton.serve()


def _probe(server: ServerProcess, path: str, png: bytes, body: BodyKind) -> list[float]:
    """One image's probabilities: both servers must give the same answer, or the race is unfair."""
    if body == "v2":
        content, content_type = v2_infer_body([png])
        request = {"content": content, "headers": {"content-type": content_type}}
    else:
        request = {"json": {"images": [base64.b64encode(png).decode()]}}
    response = httpx.post(server.url + path, timeout=30, trust_env=False, **request)  # type: ignore[arg-type]
    response.raise_for_status()
    answer = response.json()
    if body == "v2":
        return [float(p) for p in answer["outputs"][0]["data"]]
    answer = answer["predictions"][0] if "predictions" in answer else answer
    return [float(p) for p in answer["probabilities"]]


def _run(
    loadgen: LoadGenerator, server: ServerProcess, path: str, body: BodyKind, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    job = Job(url=server.url, path=path, body=body, concurrency=concurrency, duration_s=args.duration, warmup_s=args.warmup)
    cpu_before, started = server.cpu_seconds(), time.perf_counter()
    outcome = loadgen.run(job)
    latency = outcome["latency_ms"] or {}
    run = {
        "server": server.label,
        "concurrency": concurrency,
        **{k: outcome[k] for k in ("requests", "ok", "errors", "error_kinds", "error_sample", "images_per_s")},
        "latency_ms": latency,
        "loadgen_cpu_fraction": outcome["loadgen_cpu_fraction"],
        "server_cpu_fraction": (server.cpu_seconds() - cpu_before) / (time.perf_counter() - started),
    }
    print(
        f"  {server.label:<10} c{concurrency:<4}{run['images_per_s']:>8.0f} img/s  p50 {latency.get('p50', float('nan')):7.2f} ms"
        f"  p99 {latency.get('p99', float('nan')):7.2f} ms  errors {run['errors']}",
        flush=True,
    )
    return run


PEER_RATIOS = {"litserve": PEER_MIN_RATIO, "triton": TRITON_MIN_RATIO}  # our c32 images/s over the peer's, at least
PEER_NAMES = {"litserve": "LitServe", "triton": "Triton"}


def _pairs(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each of our runs with the peer's run of the same comparison, model and concurrency."""
    key = ("peer", "model", "concurrency")
    peers = {tuple(r[k] for k in key): r for r in runs if r["server"] != "ours"}
    return [
        (ours, peers[tuple(ours[k] for k in key)]) for ours in runs if ours["server"] == "ours" and tuple(ours[k] for k in key) in peers
    ]


def _targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and peer: our images/s over the peer's at concurrency 32; against Triton, also the c1 median latency."""
    targets = []
    for ours, peer in _pairs(runs):
        label = PEER_NAMES[ours["peer"]]
        if ours["concurrency"] == PEER_CONCURRENCY:
            ratio = ours["images_per_s"] / peer["images_per_s"] if peer["images_per_s"] else None
            detail = f"{ours['images_per_s']:.0f} vs {peer['images_per_s']:.0f} images/s"
            name = f"{ours['model']}: c{PEER_CONCURRENCY} images/s, ours vs {label}"
            targets.append(target(name, ratio, ">=", PEER_RATIOS[ours["peer"]], "x", detail))
        if ours["concurrency"] == 1 and ours["peer"] == "triton" and ours["latency_ms"] and peer["latency_ms"]:
            a, b = ours["latency_ms"]["p50"], peer["latency_ms"]["p50"]
            targets.append(target(f"{ours['model']}: c1 p50 ms, ours below {label}", a, "<", b, "ms", f"{a:.2f} vs {b:.2f} ms"))
    return targets


def _table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| model | peer | request | concurrency | img/s: ours / peer (ratio) | p50 ms: ours / peer | p99 ms: ours / peer |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ours, peer in _pairs(runs):
        a, b = ours["latency_ms"], peer["latency_ms"]
        ratio = ours["images_per_s"] / peer["images_per_s"] if peer["images_per_s"] else float("nan")
        lines.append(
            f"| {ours['model']} | {PEER_NAMES[ours['peer']]} | {ours['body']} | {ours['concurrency']} "
            f"| {ours['images_per_s']:,.0f} / {peer['images_per_s']:,.0f} ({ratio:.2f}x) "
            f"| {a['p50']:.2f} / {b['p50']:.2f} | {a['p99']:.2f} / {b['p99']:.2f} |"
        )
    return "\n".join(lines)


def _contenders(peer: str, model: str, args: argparse.Namespace, raw_dir: Path) -> tuple[BodyKind, list[tuple[ServerProcess, str]]]:
    """The request body of a comparison, and its two servers with the path each is sent to."""
    ours = ServerProcess("ours", {"DIGITS_WORKERS": str(args.workers)}, raw_dir, args.weights_dir)
    if peer == "litserve":
        litserve_args = ("--litserve-batch-timeout", str(args.litserve_batch_timeout), "--litserve-api-servers", str(args.api_servers))
        module_args = ("bench.peer", "--serve-litserve", model, "--workers", str(args.workers), *litserve_args)
        litserve = ServerProcess("litserve", {}, raw_dir, args.weights_dir, module_args=module_args, ready_path="/health")
        return "json", [(ours, f"/predict?model={model}"), (litserve, "/predict")]
    if not Path(args.triton_python).exists():
        raise SystemExit(f"no PyTriton interpreter at {args.triton_python}: run `make triton-venv`, or pass --triton-python")
    delay = ("--triton-queue-delay-us", str(args.triton_queue_delay_us))
    triton_args = ("bench.peer", "--serve-triton", model, "--workers", str(args.workers), *delay)
    ready = f"/v2/models/{model}/ready"  # the server is ready before PyTriton has bound the model
    python = str(args.triton_python)
    triton = ServerProcess("triton", {}, raw_dir, args.weights_dir, python=python, module_args=triton_args, ready_path=ready)
    path = f"/v2/models/{model}/infer"
    return "v2", [(ours, path), (triton, path)]


def _versions(peers: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "litserve" in peers:
        found["litserve"] = {"version": ls.__version__, "batch_timeout_s": args.litserve_batch_timeout, "api_servers": args.api_servers}
    if "triton" in peers:
        probe = "import importlib.metadata as m; print(m.version('nvidia-pytriton'))"
        version = subprocess.run([str(args.triton_python), "-c", probe], capture_output=True, text=True, check=False).stdout.strip()
        found["triton"] = {"pytriton": version, "max_queue_delay_us": args.triton_queue_delay_us}
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-litserve", metavar="MODEL", help=argparse.SUPPRESS)  # the child processes
    parser.add_argument("--serve-triton", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--peers", nargs="+", choices=list(PEER_NAMES), default=list(PEER_NAMES))
    parser.add_argument("--models", nargs="+", default=["inception", "ensemble"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("--workers", type=int, default=1, help="our HTTP worker processes (DIGITS_WORKERS)")
    parser.add_argument("--litserve-api-servers", type=int, default=None, help="LitServe's API-server processes (default: --workers)")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run")
    parser.add_argument("--litserve-batch-timeout", type=float, default=0.001, help="seconds LitServe waits to fill a batch")
    parser.add_argument("--triton-python", type=Path, default=ROOT / "build" / "triton-venv" / "bin" / "python")
    parser.add_argument("--triton-queue-delay-us", type=int, default=0, help="Triton's dynamic batcher: microseconds to fill a batch")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default=datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)
    args.api_servers = args.litserve_api_servers or args.workers
    if args.serve_litserve:
        serve_litserve(args.serve_litserve, args.litserve_batch_timeout, args.api_servers, args.workers)
        return 0
    if args.serve_triton:
        serve_triton(args.serve_triton, args.workers, args.triton_queue_delay_us)
        return 0

    raw_dir = (args.results_dir / "raw" / f"peer-{args.name}").resolve()
    raw_dir.mkdir(parents=True, exist_ok=True)
    pngs = encode_pngs(load_mnist(args.data_dir, train=False, download=False).images[:256].numpy())
    write_payloads(raw_dir / "payloads.json", pngs)
    loadgen = LoadGenerator(raw_dir / "payloads.json", raw_dir / "loadgen")
    runs: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []  # the first test image's probabilities from each server
    for peer in args.peers:
        for model in args.models:
            body, contenders = _contenders(peer, model, args, raw_dir)
            for server, path in contenders:
                ready = server.start()
                print(f"{model}: {server.label} ready in {ready:.2f} s on {server.url}, {len(server.tree())} processes", flush=True)
                processes = len(server.tree())
                try:
                    probes.append(
                        {"model": model, "peer": peer, "server": server.label, "probabilities": _probe(server, path, pngs[0], body)}
                    )
                    for concurrency in args.concurrency:
                        runs.append({"model": model, "peer": peer, "body": body, **_run(loadgen, server, path, body, concurrency, args)})
                finally:
                    server.stop()
                servers.append(
                    {
                        "model": model,
                        "peer": peer,
                        "label": server.label,
                        "processes": processes,
                        "pids_seen": sorted(server.seen),
                        "survivors": server.survivors(),  # processes of this server still running after stop(): none
                        "ready_s": server.ready_s,
                        "peak_rss_mb": server.peak_rss / 2**20,
                    }
                )

    targets = _targets(runs)
    results = {
        "name": args.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "machine": describe_machine(),
        "ours": {"workers": args.workers},
        **_versions(args.peers, args),
        "servers": servers,
        "probes": probes,
        "runs": runs,
        "targets": targets,
    }
    out = args.results_dir / f"peer-{args.name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(runs))
    for verdict in targets:
        value = verdict["value"] if verdict["value"] is not None else float("nan")
        outcome = "PASS" if verdict["passed"] else "FAIL"
        print(f"  {outcome}  {verdict['name']}: {value:.2f} {verdict['comparison']} {verdict['threshold']:.2f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
