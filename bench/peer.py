"""``python -m bench.peer``: this service against LitServe serving the same weights.

    pip install -e '.[dev]'                   # LitServe is in the dev extra, not a dependency
    python -m bench.peer                      # inception and ensemble at concurrency 1, 32, 64
    python -m bench.peer --workers 2          # ours with 2 HTTP workers, LitServe with 2 API servers
    python -m bench.peer --models resnet --concurrency 1 32 --duration 5

Only the server around the model differs. The LitServe side
(``python -m bench.peer --serve-litserve MODEL``, started by this script) is a ``LitAPI``
whose steps call this service's own code: the same checkpoints and calibration
(``service.inference.loader``), the same decoding and preprocessing (``core.preprocess``),
the same torch thread count, and LitServe's dynamic batching with the same maximum batch
size. ``--workers N`` runs ours with N HTTP worker processes (``DIGITS_WORKERS``) and
LitServe with as many API-server processes (``--litserve-api-servers``), each in front of
one inference worker. Both servers get the same requests from the same load generator
(``bench.load``): JSON ``{"images": [base64 PNG]}``, one MNIST test image per request
(LitServe batches requests, not images). Each server runs in its own process group, ended
as a whole (``bench.server``). Results go to ``<results-dir>/peer-<name>.json`` and a
table on stdout, with the target: our images/s at concurrency 32 at least 2.5x LitServe's.
"""

import argparse
import base64
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import litserve as ls
import numpy as np
import torch

from bench.load import Job, LoadGenerator, write_payloads
from bench.report import PEER_CONCURRENCY, PEER_MIN_RATIO
from bench.run import encode_pngs
from bench.server import ServerProcess, describe_machine
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
        models = load_models(self.settings.weights_dir, torch.device("cpu"), self.settings.inference_threads())
        self.model: ServedModel = models[self.model_name]

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


def _probe(server: ServerProcess, path: str, png: bytes) -> list[float]:
    """One image's probabilities: both servers must give the same answer, or the race is unfair."""
    response = httpx.post(server.url + path, json={"images": [base64.b64encode(png).decode()]}, timeout=30, trust_env=False)
    response.raise_for_status()
    body = response.json()
    answer = body["predictions"][0] if "predictions" in body else body
    return [float(p) for p in answer["probabilities"]]


def _run(loadgen: LoadGenerator, server: ServerProcess, path: str, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    job = Job(url=server.url, path=path, body="json", concurrency=concurrency, duration_s=args.duration, warmup_s=args.warmup)
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


def _targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: our images/s over LitServe's at concurrency 32, against the target."""
    targets = []
    for ours in (r for r in runs if r["server"] == "ours" and r["concurrency"] == PEER_CONCURRENCY):
        peer = next(
            (r for r in runs if r["server"] == "litserve" and (r["model"], r["concurrency"]) == (ours["model"], PEER_CONCURRENCY)), None
        )
        if peer is None:
            continue
        ratio = ours["images_per_s"] / peer["images_per_s"] if peer["images_per_s"] else None
        targets.append(
            {
                "name": f"{ours['model']}: c{PEER_CONCURRENCY} images/s, ours vs LitServe",
                "value": ratio,
                "comparison": ">=",
                "threshold": PEER_MIN_RATIO,
                "unit": "x",
                "passed": ratio is not None and ratio >= PEER_MIN_RATIO,
                "detail": f"{ours['images_per_s']:.0f} vs {peer['images_per_s']:.0f} images/s",
            }
        )
    return targets


def _table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| model | concurrency | img/s: ours / LitServe (ratio) | p50 ms: ours / LitServe | p99 ms: ours / LitServe |",
        "| --- | --- | --- | --- | --- |",
    ]
    for ours in (r for r in runs if r["server"] == "ours"):
        peer = next(r for r in runs if r["server"] == "litserve" and (r["model"], r["concurrency"]) == (ours["model"], ours["concurrency"]))
        a, b = ours["latency_ms"], peer["latency_ms"]
        ratio = ours["images_per_s"] / peer["images_per_s"] if peer["images_per_s"] else float("nan")
        lines.append(
            f"| {ours['model']} | {ours['concurrency']} | {ours['images_per_s']:,.0f} / {peer['images_per_s']:,.0f} ({ratio:.2f}x) "
            f"| {a['p50']:.2f} / {b['p50']:.2f} | {a['p99']:.2f} / {b['p99']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-litserve", metavar="MODEL", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--models", nargs="+", default=["inception", "ensemble"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("--workers", type=int, default=1, help="our HTTP worker processes (DIGITS_WORKERS)")
    parser.add_argument("--litserve-api-servers", type=int, default=None, help="LitServe's API-server processes (default: --workers)")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run")
    parser.add_argument("--litserve-batch-timeout", type=float, default=0.001, help="seconds LitServe waits to fill a batch")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default=datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)
    api_servers = args.litserve_api_servers or args.workers
    if args.serve_litserve:
        serve_litserve(args.serve_litserve, args.litserve_batch_timeout, api_servers, args.workers)
        return 0

    raw_dir = (args.results_dir / "raw" / f"peer-{args.name}").resolve()
    raw_dir.mkdir(parents=True, exist_ok=True)
    pngs = encode_pngs(load_mnist(args.data_dir, train=False, download=False).images[:256].numpy())
    write_payloads(raw_dir / "payloads.json", pngs)
    loadgen = LoadGenerator(raw_dir / "payloads.json", raw_dir / "loadgen")
    runs: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []  # the first test image's probabilities from each server
    litserve_args = ("--litserve-batch-timeout", str(args.litserve_batch_timeout), "--litserve-api-servers", str(api_servers))
    for model in args.models:
        contenders = [
            (ServerProcess("ours", {"DIGITS_WORKERS": str(args.workers)}, raw_dir, args.weights_dir), f"/predict?model={model}"),
            (
                ServerProcess(
                    "litserve",
                    {},
                    raw_dir,
                    args.weights_dir,
                    module_args=("bench.peer", "--serve-litserve", model, "--workers", str(args.workers), *litserve_args),
                    ready_path="/health",
                ),
                "/predict",
            ),
        ]
        for server, path in contenders:
            ready = server.start()
            print(f"{model}: {server.label} ready in {ready:.2f} s on {server.url}, {len(server.tree())} processes", flush=True)
            processes = len(server.tree())
            try:
                probes.append({"model": model, "server": server.label, "probabilities": _probe(server, path, pngs[0])})
                for concurrency in args.concurrency:
                    runs.append({"model": model, **_run(loadgen, server, path, concurrency, args)})
            finally:
                server.stop()
            servers.append(
                {
                    "model": model,
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
        "litserve": {"version": ls.__version__, "batch_timeout_s": args.litserve_batch_timeout, "api_servers": api_servers},
        "servers": servers,
        "probes": probes,
        "runs": runs,
        "targets": targets,
    }
    out = args.results_dir / f"peer-{args.name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(runs))
    for target in targets:
        print(
            f"  {'PASS' if target['passed'] else 'FAIL'}  {target['name']}: {target['value'] or float('nan'):.2f}x >= {PEER_MIN_RATIO:g}x"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
