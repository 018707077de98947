"""``python -m bench``: how close the served throughput comes to the models' own limit, per worker count.

1. the limit: forward passes in this process at batch sizes 1 to 256 with the server's torch
   threads, and at 256 with every core (``bench.limit``);
2. for each ``--workers`` count, the real server (``DIGITS_WORKERS=N``, default settings
   otherwise) driven over loopback by wrk, a separate load-generator process
   (``bench.load``): GET /healthz at concurrency 1, single-image PNG requests (multipart and
   JSON/base64) at each concurrency (512 included: the tail), batch requests of 64 and 256
   images, then a soak that watches the memory of the whole process tree;
3. single-image runs at concurrency 32 against one worker with DIGITS_MAX_BATCH_SIZE=1
   (dynamic batching off);
4. targets, a table, ``<results-dir>/<name>.json``, ``latest.json`` and ``throughput.png``.

Exits 0 whatever the targets say, unless ``--strict``. See bench/README.md.
"""

import argparse
import contextlib
import datetime
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.limit import BATCH_SIZES, measure_limits
from bench.load import BodyKind, Job, LoadGenerator, write_payloads
from bench.report import NO_BATCHING, closest_limit, evaluate_targets, find_run, format_report, plot, server_label
from bench.server import ServerProcess, describe_machine
from models.registry import SERVED_MODELS

__all__ = ["Plan", "encode_pngs", "main"]

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
FULL_BUDGET_S = 420.0

Result = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    quick: bool
    models: tuple[str, ...]
    bodies: tuple[BodyKind, ...]
    concurrency: tuple[int, ...]
    workers: tuple[int, ...]
    batch_requests: tuple[int, ...]
    batch_concurrency: int
    baseline_concurrency: tuple[int, ...]  # single-image runs of the server with batching off (empty: none)
    duration_s: float
    warmup_s: float
    soak_requests: int
    soak_concurrency: int
    limit_warmup_s: float
    limit_measure_s: float
    images: int

    def load_runs(self) -> int:
        per_server = 1 + len(self.models) * (len(self.bodies) * len(self.concurrency) + len(self.batch_requests) + 1)
        return len(self.workers) * per_server + len(self.models) * len(self.bodies) * len(self.baseline_concurrency)

    def estimate_s(self) -> float:
        """A rough wall-time estimate: load runs, limits, start-ups and soaks at ~1,000 requests/s."""
        limits = len(self.models) * (len(BATCH_SIZES) + 1) * (self.limit_warmup_s + self.limit_measure_s + 0.05)
        servers = len(self.workers) + bool(self.baseline_concurrency)
        soaks = len(self.workers) * self.soak_requests / 1000
        return self.load_runs() * (self.duration_s + self.warmup_s + 0.2) + limits + servers * 6 + soaks


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _default_workers() -> list[int]:
    """1, 2, 4, ... up to the cores: 1 and 2 on a 2-core machine, 1 2 4 8 on 8 cores."""
    cores = os.cpu_count() or 1
    return [1 << k for k in range(cores.bit_length()) if 1 << k <= max(2, cores)]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Plan]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run for CI (load runs end after a count of answers, 500-request soak)"
    )
    parser.add_argument("--models", nargs="+", choices=SERVED_MODELS, default=list(SERVED_MODELS))
    parser.add_argument(
        "--bodies", nargs="+", choices=["multipart", "json"], default=["multipart", "json"], help="single-image body encodings"
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 32, 64, 512], help="single-image client concurrencies")
    parser.add_argument(
        "--workers", nargs="+", type=int, default=None, help="DIGITS_WORKERS of each server (default: 1, 2, 4, ... up to the cores)"
    )
    parser.add_argument("--batch-requests", nargs="*", type=int, default=[64, 256], help="images per batch request (multipart)")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="concurrent batch requests (so decoding overlaps inference)")
    parser.add_argument(
        "--baseline-concurrency",
        nargs="*",
        type=int,
        default=[32],
        help="concurrencies of the one-worker server with batching off (DIGITS_MAX_BATCH_SIZE=1); none: skip it",
    )
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per load run (default 3, quick 0.5)")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each load run (default 0.5, quick 0.2)")
    parser.add_argument(
        "--soak-requests", type=int, default=None, help="single-image requests in each server's memory soak (default 10000, quick 500)"
    )
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment for every server, e.g. DIGITS_MAX_BATCH_WAIT_MS=2"
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="shortcut for --env DIGITS_TORCH_THREADS=N")
    parser.add_argument(
        "--server-python",
        default=sys.executable,
        help="interpreter that runs the servers, e.g. a venv with the CPU build of torch (the limit runs in this one)",
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data", help="MNIST in torchvision's layout")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--name", default=None, help="results file name (default: a timestamp)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    workers = tuple(dict.fromkeys(args.workers or _default_workers()))
    if min(workers) < 1:
        parser.error("--workers counts must be at least 1")
    plan = Plan(
        quick=quick,
        models=tuple(dict.fromkeys(args.models)),
        bodies=tuple(dict.fromkeys(args.bodies)),
        concurrency=tuple(args.concurrency),
        workers=workers,
        batch_requests=tuple(args.batch_requests),
        batch_concurrency=args.batch_concurrency,
        baseline_concurrency=tuple(args.baseline_concurrency),
        duration_s=args.duration if args.duration is not None else (0.5 if quick else 3.0),
        warmup_s=args.warmup if args.warmup is not None else (0.2 if quick else 0.5),
        soak_requests=args.soak_requests if args.soak_requests is not None else (500 if quick else 10_000),
        soak_concurrency=args.soak_concurrency,
        limit_warmup_s=0.05 if quick else 0.2,
        limit_measure_s=0.1 if quick else 0.4,
        images=1024,
    )
    return args, plan


def encode_pngs(images: np.ndarray) -> list[bytes]:
    """PNG files of N x 28 x 28 uint8 images, as a client would upload them."""
    files = []
    for image in np.asarray(images, dtype=np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def _mb(value: int) -> float:
    return value / MB


class Bench:
    """One benchmark run; ``runs`` and ``servers`` fill up as it goes."""

    def __init__(self, plan: Plan, env: dict[str, str], loadgen: LoadGenerator, limits: list[Result], python: str) -> None:
        self.python = python
        self.plan = plan
        self.env = env
        self.loadgen = loadgen
        self.limits = limits
        self.runs: list[Result] = []
        self.servers: list[Result] = []
        self.soaks: list[Result] = []

    def load(
        self,
        server: ServerProcess,
        workers: int,
        *,
        kind: str,
        model: str | None,
        body: BodyKind,
        concurrency: int,
        per_request: int = 1,
        requests: int | None = None,
        warmup_s: float | None = None,
    ) -> Result:
        """One load run against ``server``, with the batching and CPU observed around it."""
        job = Job(
            url=server.url,
            path=f"/predict?model={model}" if model else "/healthz",
            method="POST" if model else "GET",
            body=body if model else "none",
            images_per_request=per_request,
            concurrency=concurrency,
            duration_s=self.plan.duration_s,
            warmup_s=self.plan.warmup_s if warmup_s is None else warmup_s,
            requests=requests,
        )
        before = server.model_stats() if model else {}
        per_process_before = server.cpu_by_process()
        cpu_before, started = server.cpu_seconds(), time.perf_counter()
        outcome = self.loadgen.run(job)
        elapsed = time.perf_counter() - started
        server_cpu = (server.cpu_seconds() - cpu_before) / elapsed
        # how the tree's CPU splits over its processes (leader first): shows an HTTP worker left idle
        per_process = [
            {"pid": pid, "cpu_fraction": (cpu - per_process_before.get(pid, (0.0, 0.0))[0]) / elapsed, "rss_mb": rss}
            for pid, (cpu, rss) in sorted(server.cpu_by_process().items())
        ]
        mean_batch = None
        passes = None
        if model:
            after = server.model_stats()  # the inference process's counts: every worker's requests
            passes = after[model][0] - before[model][0]
            images = after[model][1] - before[model][1]
            mean_batch = images / passes if passes else None
        if kind == "batch":
            limit = closest_limit(self.limits, model or "", per_request)
        else:
            limit = closest_limit(self.limits, model or "", mean_batch) if model and mean_batch else None
        run: Result = {
            "server": server.label,
            "workers": workers,
            "model": model,
            "kind": kind,
            "body": body if model else "none",
            "concurrency": concurrency,
            "images_per_request": per_request,
            **{
                k: outcome[k]
                for k in ("requests", "ok", "errors", "error_kinds", "error_sample", "wall_s", "requests_per_s", "images_per_s")
            },
            "latency_ms": outcome["latency_ms"],
            "mean_batch_size": mean_batch,
            "forward_passes": passes,
            "limit_batch_size": limit["batch_size"] if limit else None,
            "limit_images_per_s": limit["images_per_s"] if limit else None,
            "ratio_to_limit": outcome["images_per_s"] / limit["images_per_s"] if limit else None,
            "loadgen_cpu_fraction": outcome["loadgen_cpu_fraction"],
            "server_cpu_fraction": server_cpu,
            "server_cpu_per_process": per_process,
            "client": outcome["client"],
        }
        latency = run["latency_ms"] or {}
        split = " ".join(f"{p['cpu_fraction']:.2f}" for p in per_process)
        print(
            f"  {server.label:<12}{model or 'healthz':<10}{kind:<8}{run['body']:<10}c{concurrency:<4}x{per_request:<4}"
            f"{run['images_per_s']:>8.0f} img/s  p50 {latency.get('p50', float('nan')):7.2f} ms  "
            f"p99 {latency.get('p99', float('nan')):7.2f} ms  "
            f"batch {mean_batch if mean_batch is not None else float('nan'):5.1f}  errors {run['errors']}  "
            f"cpu {server_cpu:.2f}" + (f" ({split})" if len(per_process) > 1 else ""),
            flush=True,
        )
        return run

    def start(self, label: str, overrides: dict[str, str], raw_dir: Path, weights_dir: Path) -> ServerProcess:
        server = ServerProcess(label, {**self.env, **overrides}, raw_dir, weights_dir, self.python)
        ready = server.start()
        print(f"server {label}: ready in {ready:.2f} s on {server.url}, {len(server.tree())} processes (log {server.log_path})", flush=True)
        return server

    def finish(self, server: ServerProcess, workers: int) -> None:
        processes = len(server.tree())
        torch_version = None  # the server's interpreter may not be this one
        with contextlib.suppress(httpx.HTTPError):  # a server that died answers nothing; its runs say why
            torch_version = server.model_info().get("torch_version")
        exit_code = server.stop()
        self.servers.append(
            {
                "label": server.label,
                "workers": workers,
                "processes": processes,
                "python": server.python,
                "torch": torch_version,
                "env": server.overrides,
                "url": server.url,
                "ready_s": server.ready_s,
                "peak_rss_mb": _mb(server.peak_rss),
                "rss_ready_mb": _mb(server.rss_ready),
                "exit_code": exit_code,
                "log": str(server.log_path),
            }
        )

    def batching_phase(self, server: ServerProcess, workers: int) -> None:
        self.runs.append(self.load(server, workers, kind="healthz", model=None, body="none", concurrency=1))
        for model in self.plan.models:
            for body in self.plan.bodies:
                for concurrency in self.plan.concurrency:
                    # quick: a count of answers (two per connection), as for the batch runs below
                    requests = max(20, 2 * concurrency) if self.plan.quick else None
                    run = self.load(server, workers, kind="single", model=model, body=body, concurrency=concurrency, requests=requests)
                    self.runs.append(run)
            for size in self.plan.batch_requests:
                run = self.load(
                    server,
                    workers,
                    kind="batch",
                    model=model,
                    body="multipart",
                    concurrency=self.plan.batch_concurrency,
                    per_request=size,
                    # quick: a count of answers, not a window that a slow machine may end before the first one
                    requests=2 * self.plan.batch_concurrency if self.plan.quick else None,
                )
                self.runs.append(run)
        self.soaks.append(self.soak_run(server, workers))

    def soak_run(self, server: ServerProcess, workers: int) -> Result:
        model = "ensemble" if "ensemble" in self.plan.models else self.plan.models[0]
        concurrency = self.plan.soak_concurrency
        self.load(server, workers, kind="single", model=model, body="multipart", concurrency=concurrency)  # settle allocations first
        before = server.rss()
        run = self.load(
            server,
            workers,
            kind="soak",
            model=model,
            body="multipart",
            concurrency=concurrency,
            requests=self.plan.soak_requests,
            warmup_s=0,
        )
        after = server.rss()
        return {
            "server": server.label,
            "workers": workers,
            "model": model,
            "body": "multipart",
            "concurrency": concurrency,
            "requests": run["requests"],
            "errors": run["errors"],
            "wall_s": run["wall_s"],
            "images_per_s": run["images_per_s"],
            "latency_ms": run["latency_ms"],
            "rss_before_mb": _mb(before),
            "rss_after_mb": _mb(after),
            "growth_pct": 100 * (after - before) / before if before else None,
        }

    def baseline_phase(self, server: ServerProcess) -> None:
        for model in self.plan.models:
            for body in self.plan.bodies:
                for concurrency in self.plan.baseline_concurrency:
                    self.runs.append(self.load(server, 1, kind="single", model=model, body=body, concurrency=concurrency))

    def latency_floor(self) -> list[Result]:
        """Concurrency-1 p50 of the one-worker server against its no-op round trip plus one forward pass at batch 1."""
        label = server_label(min(self.plan.workers))
        healthz = find_run(self.runs, server=label, kind="healthz")
        healthz_p50 = (healthz or {}).get("latency_ms", {}) or {}
        floors = []
        for model in self.plan.models:
            forward = next((limit for limit in self.limits if limit["model"] == model and limit["batch_size"] == 1), None)
            for body in self.plan.bodies:
                run = find_run(self.runs, server=label, kind="single", model=model, body=body, concurrency=1)
                if run is None or run["latency_ms"] is None or forward is None or "p50" not in healthz_p50:
                    continue
                floor = healthz_p50["p50"] + forward["forward_ms_p50"]
                floors.append(
                    {
                        "server": label,
                        "model": model,
                        "body": body,
                        "c1_p50_ms": run["latency_ms"]["p50"],
                        "healthz_p50_ms": healthz_p50["p50"],
                        "forward_b1_ms": forward["forward_ms_p50"],
                        "ratio": run["latency_ms"]["p50"] / floor if floor else None,
                    }
                )
        return floors


def main(argv: Sequence[str] | None = None) -> int:
    args, plan = parse_args(argv)
    started = time.perf_counter()
    env = _parse_env(args.env)
    if args.torch_threads is not None:
        env["DIGITS_TORCH_THREADS"] = str(args.torch_threads)
    env.pop("DIGITS_WORKERS", None)  # --workers says
    name = args.name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if plan.quick else "")
    results_dir: Path = args.results_dir.resolve()
    raw_dir = results_dir / "raw" / name
    raw_dir.mkdir(parents=True, exist_ok=True)
    load_average = [round(x, 2) for x in os.getloadavg()]
    cpu_count = os.cpu_count() or 1
    print(
        f"bench {name}: workers {list(plan.workers)}, {plan.load_runs()} load runs of {plan.warmup_s}+{plan.duration_s} s, "
        f"soak {plan.soak_requests} requests per server; estimated {plan.estimate_s():.0f} s",
        flush=True,
    )
    if load_average[0] > 0.5 * cpu_count:
        print(f"WARNING: load average {load_average[0]} on {cpu_count} CPUs: this machine is busy and the timings will be too", flush=True)

    from models.data import load_mnist
    from service.config import Settings
    from service.inference.loader import load_models, select_device

    digits = load_mnist(args.data_dir, train=False, download=False)
    test_images = digits.images.numpy()
    pngs = encode_pngs(test_images[: plan.images])
    payloads = raw_dir / "payloads.json"
    write_payloads(payloads, pngs)

    os.environ.update(env)  # the limit runs with the servers' settings
    settings = Settings(workers=1)
    threads = settings.inference_threads()
    device = select_device(settings.device)
    print(f"in-process limit on {device} with {threads} torch threads (one worker's server) ...", flush=True)
    served = load_models(args.weights_dir, device, threads, settings.batch_limit(device.type))  # the engine's kernels
    inputs = test_images[: max(BATCH_SIZES), None].astype(np.float32) / 255
    measured = [served[m] for m in plan.models]
    for served_model in measured:
        served_model.trace()  # the pass the engine runs on the CPU
    found = measure_limits(measured, inputs, warmup_s=plan.limit_warmup_s, measure_s=plan.limit_measure_s)
    limits = [asdict(limit) for limit in found]
    # The batch-256 target is held against the machine's own limit: every core on the forward pass.
    limits_all_cores: list[Result] = []
    if threads != cpu_count:
        for served_model in measured:
            served_model.threads = cpu_count
        print(f"in-process limit at batch {max(BATCH_SIZES)} with all {cpu_count} cores ...", flush=True)
        found = measure_limits(
            measured, inputs, batch_sizes=(max(BATCH_SIZES),), warmup_s=plan.limit_warmup_s, measure_s=plan.limit_measure_s
        )
        limits_all_cores = [asdict(limit) for limit in found]
    del served, measured  # free the models before the servers start
    for model in plan.models:
        row = ", ".join(f"b{lim['batch_size']} {lim['images_per_s']:.0f}" for lim in limits if lim["model"] == model)
        print(f"  {model}: {row} images/s", flush=True)

    loadgen = LoadGenerator(payloads, raw_dir / "loadgen")
    bench = Bench(plan, env, loadgen, limits, args.server_python)
    for workers in plan.workers:
        server = bench.start(server_label(workers), {"DIGITS_WORKERS": str(workers)}, raw_dir, args.weights_dir)
        try:
            bench.batching_phase(server, workers)
        finally:
            bench.finish(server, workers)
    if plan.baseline_concurrency:
        server = bench.start(
            NO_BATCHING, {"DIGITS_WORKERS": "1", "DIGITS_MAX_BATCH_SIZE": "1", "DIGITS_MAX_QUEUE_IMAGES": "2048"}, raw_dir, args.weights_dir
        )
        try:
            bench.baseline_phase(server)
        finally:
            bench.finish(server, 1)

    results: Result = {
        "schema": 2,
        "name": name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": plan.quick,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "machine": describe_machine(
            device=str(device),
            torch_threads=threads,
            load_average_start=load_average,
            load_average_end=[round(x, 2) for x in os.getloadavg()],
        ),
        "config": {**asdict(plan), "server_env": env, "limit_batch_sizes": list(BATCH_SIZES)},
        "limits": limits,
        "limits_all_cores": limits_all_cores,
        "servers": bench.servers,
        "runs": bench.runs,
        "latency_floor": bench.latency_floor(),
        "soaks": bench.soaks,
    }
    results["targets"] = evaluate_targets(results)
    failed = [t for t in results["targets"] if not t["passed"]]
    results["summary"] = {"targets": len(results["targets"]), "failed": len(failed)}
    results["elapsed_s"] = time.perf_counter() - started

    path = results_dir / f"{name}.json"
    text = json.dumps(results, indent=2)
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    if not args.no_plot:
        try:
            plot(results, results_dir / "throughput.png")
        except ImportError as exc:
            print(f"no plot: {exc} (install the dev extra for matplotlib)")
    print()
    print(format_report(results))
    print()
    print(f"{len(failed)} of {len(results['targets'])} targets failed; results in {path}; took {results['elapsed_s']:.0f} s")
    if not plan.quick and results["elapsed_s"] > FULL_BUDGET_S:
        print(f"WARNING: the run took longer than its {FULL_BUDGET_S:.0f} s budget")
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
