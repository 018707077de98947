"""``python -m bench.peer``: this service against LitServe serving the same weights.

Issue 5 says the service will be compared with another well-known Python model server on
the same machine and load. This runs that comparison with LitServe:

    pip install -e '.[dev]'                   # LitServe is in the dev extra, not a dependency
    python -m bench.peer                      # inception and ensemble at concurrency 1, 8, 32, 64
    python -m bench.peer --models resnet --concurrency 1 32 --duration 5

Only the server around the model differs. The LitServe side
(``python -m bench.peer --serve-litserve MODEL``, started by this script) is a ``LitAPI``
whose steps call this service's own code: the same checkpoints and calibration
(``service.loader``), the same decoding and preprocessing (``service.preprocess``), the
same torch thread count, and LitServe's dynamic batching with the same maximum batch size.
Both servers get the same requests from the same load generator (``bench.load``): JSON
``{"images": [base64 PNG]}``, one MNIST test image per request (LitServe batches requests,
not images). Results go to ``<results-dir>/peer-<name>.json`` and a table on stdout.
"""

import argparse
import base64
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import litserve as ls
import torch

from bench.load import Job, LoadGenerator, write_payloads
from bench.run import encode_pngs
from bench.server import ServerProcess
from models.data import load_mnist
from service.config import Settings
from service.loader import ServedModel, load_models
from service.preprocess import decode_image, to_mnist

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


class DigitsAPI(ls.LitAPI):  # type: ignore[misc]
    """This service's model, decoding and preprocessing, as LitServe's steps."""

    def __init__(self, model_name: str, settings: Settings, batch_timeout_s: float) -> None:
        # batch_timeout 0 would match this service's "dispatch when the model is free", but
        # LitServe's worker then polls its queue without blocking and keeps a core busy.
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=batch_timeout_s)
        self.model_name = model_name
        self.settings = settings

    def setup(self, device: str) -> None:
        models = load_models(self.settings.weights_dir, torch.device("cpu"), self.settings.inference_threads())
        self.model: ServedModel = models[self.model_name]

    def decode_request(self, request: dict[str, Any]) -> torch.Tensor:
        (text,) = request["images"]
        image = decode_image(base64.b64decode(text), max_pixels=self.settings.max_image_pixels)
        return torch.from_numpy(to_mnist(image)).unsqueeze(0)  # 1 x 28 x 28

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward(images)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, probabilities: torch.Tensor) -> dict[str, Any]:
        row: list[float] = probabilities.tolist()
        label = max(range(len(row)), key=row.__getitem__)
        return {"label": label, "confidence": row[label], "probabilities": row}


def serve_litserve(model_name: str, batch_timeout_s: float) -> None:
    """The LitServe server on $HOST:$PORT (set by ``bench.server``): blocks until terminated."""
    server = ls.LitServer(DigitsAPI(model_name, Settings(), batch_timeout_s), accelerator="cpu", workers_per_device=1)
    server.run(host=os.environ["HOST"], port=int(os.environ["PORT"]), generate_client_file=False, log_level="warning")


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


def _table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| model | concurrency | img/s: ours / LitServe | p50 ms: ours / LitServe | p99 ms: ours / LitServe |",
        "| --- | --- | --- | --- | --- |",
    ]
    for ours in (r for r in runs if r["server"] == "ours"):
        peer = next(r for r in runs if r["server"] == "litserve" and (r["model"], r["concurrency"]) == (ours["model"], ours["concurrency"]))
        a, b = ours["latency_ms"], peer["latency_ms"]
        lines.append(
            f"| {ours['model']} | {ours['concurrency']} | {ours['images_per_s']:,.0f} / {peer['images_per_s']:,.0f} "
            f"| {a['p50']:.2f} / {b['p50']:.2f} | {a['p99']:.2f} / {b['p99']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-litserve", metavar="MODEL", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--models", nargs="+", default=["inception", "ensemble"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run")
    parser.add_argument("--litserve-batch-timeout", type=float, default=0.001, help="seconds LitServe waits to fill a batch")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default=datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)
    if args.serve_litserve:
        serve_litserve(args.serve_litserve, args.litserve_batch_timeout)
        return 0

    raw_dir = (args.results_dir / "raw" / f"peer-{args.name}").resolve()
    raw_dir.mkdir(parents=True, exist_ok=True)
    pngs = encode_pngs(load_mnist(args.data_dir, train=False, download=False).images[:256])
    write_payloads(raw_dir / "payloads.json", pngs)
    loadgen = LoadGenerator(raw_dir / "payloads.json", raw_dir / "loadgen")
    runs: list[dict[str, Any]] = []
    servers: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []  # the first test image's probabilities from each server
    for model in args.models:
        contenders = [
            (ServerProcess("ours", {}, raw_dir, args.weights_dir), f"/predict?model={model}"),
            (
                ServerProcess(
                    "litserve",
                    {},
                    raw_dir,
                    args.weights_dir,
                    module_args=("bench.peer", "--serve-litserve", model, "--litserve-batch-timeout", str(args.litserve_batch_timeout)),
                    ready_path="/health",
                ),
                "/predict",
            ),
        ]
        for server, path in contenders:
            ready = server.start()
            print(f"{model}: {server.label} ready in {ready:.2f} s on {server.url}", flush=True)
            try:
                probes.append({"model": model, "server": server.label, "probabilities": _probe(server, path, pngs[0])})
                for concurrency in args.concurrency:
                    runs.append({"model": model, **_run(loadgen, server, path, concurrency, args)})
            finally:
                server.stop()
            servers.append({"model": model, "label": server.label, "ready_s": server.ready_s, "peak_rss_mb": server.peak_rss / 2**20})

    results = {
        "name": args.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "litserve": {"version": ls.__version__, "batch_timeout_s": args.litserve_batch_timeout},
        "servers": servers,
        "probes": probes,
        "runs": runs,
    }
    out = args.results_dir / f"peer-{args.name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(runs))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
