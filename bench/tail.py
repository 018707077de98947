"""``python -m bench.tail``: where a request's time goes at overload, wrk's clock against the server's.

    python -m bench.tail                                   # workers 1 and 2, c512, 3 rounds (~2 minutes)
    python -m bench.tail --output bench/results/tail-2core.json

For each worker count the default server (resnet, single-image multipart PNGs) is driven by
wrk at ``--concurrency`` after a warm-up, ``--rounds`` times, with each ``--settle`` pause
between the warm-up and the measured window (a wrk run ends by closing its connections,
and what they left in flight is still served). Around each measured window
``/metrics`` is read, and the difference of the server's own histograms describes the
requests of that window:

- ``digits_http_request_duration_seconds``: from the moment the app has the request to its
  response (the middleware's clock), body reading and decoding included;
- ``digits_queue_wait_seconds``: waiting in the batcher for a forward pass;
- ``digits_inference_seconds``: the passes themselves.

Quantiles of a histogram are interpolated inside its buckets (as Prometheus'
``histogram_quantile`` does), so they are as coarse as the buckets. What wrk measures beyond
the server's duration is time the request spent outside the app: in the socket buffers, the
listen queue or an event loop busy with other connections. The CPU seconds of each process
of the tree show how the work fell between the HTTP workers, and the kernel's TCP counters
(``/proc/net/netstat``, ``/proc/net/snmp``; client and server share the host) over the window
show connections that waited outside any process: SYNs sent again (``TCPSynRetrans``: a
retransmitted SYN waits its timeout, 1 s and then 2 s more), handshakes dropped for a full
accept queue (``ListenOverflows``, ``ListenDrops``) or a full SYN queue (``TCPReqQFullDrop``),
and of the segments sent again (``RetransSegs``), those after a retransmission timeout
(``TCPTimeouts``) and those that were tail-loss probes (``TCPLossProbes``). Every 50 ms of
the window the accept queue of the server's listening sockets is read (``/proc/net/tcp``):
connections the kernel has completed but no worker has accepted yet wait there, unseen by
the app's clock.
"""

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.load import Job, LoadGenerator, write_payloads
from bench.run import encode_pngs
from bench.server import ROOT, ServerProcess, describe_machine

__all__ = ["AcceptQueueSampler", "accept_queue", "histogram_quantile", "main"]

STAGES = {
    "server": "digits_http_request_duration_seconds",
    "queue_wait": "digits_queue_wait_seconds",
    "inference": "digits_inference_seconds",
}
Buckets = dict[float, float]  # upper bound -> cumulative count


def _histograms(text: str) -> dict[str, Buckets]:
    """The cumulative buckets of each stage's histogram, summed over its labels (route, model)."""
    found: dict[str, Buckets] = {stage: {} for stage in STAGES}
    names = {metric: stage for stage, metric in STAGES.items()}
    for family in text_string_to_metric_families(text):
        stage = names.get(family.name)
        if stage is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("route", "/predict") == "/predict":
                bound = float(sample.labels["le"])
                found[stage][bound] = found[stage].get(bound, 0.0) + sample.value
    return found


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of cumulative ``buckets``, linear inside the bucket it falls in; None when empty."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all that is known
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def _window(before: dict[str, Buckets], after: dict[str, Buckets]) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    for stage in STAGES:
        delta = {bound: after[stage].get(bound, 0.0) - before[stage].get(bound, 0.0) for bound in after[stage]}
        quantiles = {f"p{round(100 * q)}": histogram_quantile(q, delta) for q in (0.5, 0.99)}
        stages[stage] = {key: None if value is None else round(1000 * value, 2) for key, value in quantiles.items()}
        stages[stage]["count"] = int(max(delta.values(), default=0))
    return stages


TCP_COUNTERS = (
    "TcpExt.TCPSynRetrans",
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPReqQFullDrop",
    "Tcp.RetransSegs",
    "TcpExt.TCPTimeouts",  # retransmission timeouts: the sender waited 200 ms or more
    "TcpExt.TCPLossProbes",  # tail-loss probes: sent again after a few ms, at no cost to the first copy
)


def tcp_counters() -> dict[str, int]:
    """The host's TCP counters (Linux), as ``Group.Name``; empty where /proc/net does not have them."""
    counters: dict[str, int] = {}
    for path in (Path("/proc/net/netstat"), Path("/proc/net/snmp")):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for header, values in zip(lines[::2], lines[1::2], strict=False):
            group, *names = header.split()
            counters |= {f"{group.rstrip(':')}.{name}": int(value) for name, value in zip(names, values.split()[1:], strict=False)}
    return counters


def accept_queue(port: int) -> int | None:
    """Connections waiting to be accepted on ``port``'s listening sockets (Linux: the receive queue
    of a LISTEN socket in /proc/net/tcp is its accept queue); None where there are none to read."""
    waiting: int | None = None
    for path in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        try:
            lines = path.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            _, local, _, state, queues, *_ = line.split()
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                waiting = (waiting or 0) + int(queues.split(":")[1], 16)
    return waiting


class AcceptQueueSampler:
    """``accept_queue(port)`` every ``interval_s`` on a thread, from ``start`` to ``stop``."""

    def __init__(self, port: int, interval_s: float = 0.05) -> None:
        self.port = port
        self.interval_s = interval_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="accept-queue", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if (waiting := accept_queue(self.port)) is not None:
                self.samples.append(waiting)

    def start(self) -> "AcceptQueueSampler":
        self._thread.start()
        return self

    def stop(self) -> dict[str, float] | None:
        """The largest and the mean queue over the samples (None without any)."""
        self._stop.set()
        self._thread.join()
        if not self.samples:
            return None
        return {"max": max(self.samples), "mean": round(statistics.mean(self.samples), 1), "samples": len(self.samples)}


def _counter_window(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in TCP_COUNTERS if name in before and name in after}


def _cpu_split(server: ServerProcess, before: dict[int, tuple[float, float]]) -> list[float]:
    """CPU seconds each process of the tree spent in the window, largest first."""
    after = server.cpu_by_process()
    return sorted((round(after[pid][0] - before.get(pid, (0.0, 0.0))[0], 2) for pid in after), reverse=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--settle",
        type=float,
        nargs="+",
        default=[0.0, 3.0],
        help="idle seconds between the warm-up and the measured window, each in every round: the requests the warm-up's "
        "closed connections left in flight are served before the window with a pause, inside it without",
    )
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a server setting, for every server")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    from models.data import load_mnist

    env = dict(item.split("=", 1) for item in args.env)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tail-") as scratch:
        work = Path(scratch)
        payloads = work / "payloads.json"
        write_payloads(payloads, encode_pngs(load_mnist(args.data_dir, train=False, download=False).images[:256, 0].numpy()))
        load = LoadGenerator(payloads, work / "wrk")
        for workers in args.workers:
            server = ServerProcess(f"w{workers}", {"DIGITS_GRPC_PORT": "0", "DIGITS_WORKERS": str(workers), **env}, work, ROOT / "weights")
            try:
                server.start()
                metrics = httpx.Client(base_url=server.url, timeout=30, trust_env=False)
                job = Job(server.url, f"/predict?model={args.model}", concurrency=args.concurrency, duration_s=args.duration)
                for round_, settle in itertools.product(range(args.rounds), args.settle):
                    load.run(Job(**{**job.__dict__, "duration_s": args.warmup, "warmup_s": 0.0}))
                    time.sleep(settle)
                    before, cpu_before, tcp_before = _histograms(metrics.get("/metrics").text), server.cpu_by_process(), tcp_counters()
                    sampler = AcceptQueueSampler(server.port).start()
                    result = load.run(Job(**{**job.__dict__, "warmup_s": 0.0}))
                    queued = sampler.stop()
                    tcp = _counter_window(tcp_before, tcp_counters())
                    stages = _window(before, _histograms(metrics.get("/metrics").text))
                    wrk = result["latency_ms"] or {}
                    run = {"workers": workers, "round": round_, "settle_s": settle, "requests_per_s": round(result["requests_per_s"], 1)}
                    run |= {"errors": result["errors"], "error_kinds": result["error_kinds"]}
                    run |= {"wrk_ms": {key: round(wrk[key], 2) for key in ("p50", "p99", "max")} if wrk else None, "server_ms": stages}
                    run["p99_over_p50"] = round(wrk["p99"] / wrk["p50"], 2) if wrk else None
                    run["cpu_s_by_process"] = _cpu_split(server, cpu_before)
                    run["tcp"] = tcp
                    run["accept_queue"] = queued
                    runs.append(run)
                    print(
                        f"workers {workers} round {round_} settle {settle:g} s: {run['requests_per_s']:7.0f} req/s, "
                        f"errors {run['errors']}, wrk p50 "
                        f"{wrk.get('p50', 0):.0f} ms p99 {wrk.get('p99', 0):.0f} ms ({run['p99_over_p50']}x); server p50 "
                        f"{stages['server']['p50']} ms p99 {stages['server']['p99']} ms; queue p99 {stages['queue_wait']['p99']} ms; "
                        f"cpu {run['cpu_s_by_process']}; tcp {tcp}; accept queue {queued}"
                    )
            finally:
                server.stop()
    summary = {
        f"workers {workers}, settle {settle:g} s": {
            "p99_over_p50": [run["p99_over_p50"] for run in chosen],
            "requests_per_s_median": statistics.median(run["requests_per_s"] for run in chosen),
        }
        for workers, settle in itertools.product(args.workers, args.settle)
        if (chosen := [run for run in runs if (run["workers"], run["settle_s"]) == (workers, settle)])
    }
    print(json.dumps(summary))
    if args.output:
        report = {"machine": describe_machine(), "model": args.model, "concurrency": args.concurrency, "env": env}
        report |= {"duration_s": args.duration, "summary": summary, "runs": runs}
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
