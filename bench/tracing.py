"""What tracing costs: the same server with OpenTelemetry traces off and on, side by side.

    python -m bench.tracing                              # 3 rounds x (off, on, on-10%), resnet, c32, ~1 minute
    python -m bench.tracing --output bench/results/tracing-2core.json

The servers run at once (default settings otherwise, one process each); within a round wrk
drives one, then the other, and the order flips every round, so the drift of a shared
machine falls on both alike. "On" exports every span over OTLP/HTTP to a sink in this
process that accepts and drops them (a collector's cost is not the server's). The request
is one 28x28 MNIST test digit as a multipart PNG at concurrency 32.
"""

import argparse
import http.server
import json
import statistics
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.load import Job, LoadGenerator, write_payloads
from bench.run import encode_pngs
from bench.server import ROOT, ServerProcess, describe_machine

__all__ = ["main"]


class _Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing but a count."""

    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    from models.data import load_mnist

    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    sampled = {**on, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    modes: dict[str, dict[str, str]] = {"off": {}, "on": on, "on-10%": sampled}
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as scratch:
        work = Path(scratch)
        payloads = work / "payloads.json"
        write_payloads(payloads, encode_pngs(load_mnist(args.data_dir, train=False, download=False).images[:256, 0].numpy()))
        load = LoadGenerator(payloads, work / "wrk")
        servers = {mode: ServerProcess(mode, {"DIGITS_GRPC_PORT": "0", **env}, work, ROOT / "weights") for mode, env in modes.items()}
        runs: list[dict[str, Any]] = []
        try:
            for server in servers.values():
                server.start()
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for mode in order:
                    job = Job(servers[mode].url, f"/predict?model={args.model}", concurrency=args.concurrency, duration_s=args.duration)
                    result = load.run(job)
                    runs.append({"mode": mode, "round": round_, **result})
                    print(
                        f"round {round_} tracing {mode:3}: {result['requests_per_s']:7.0f} req/s, p50 {result['latency_ms']['p50']:.2f} ms"
                    )
        finally:
            for server in servers.values():
                server.stop()
            sink.shutdown()
    rates = {mode: [run["requests_per_s"] for run in runs if run["mode"] == mode] for mode in modes}
    summary = {mode: {"requests_per_s_median": statistics.median(values), "requests_per_s": values} for mode, values in rates.items()}
    ratios = {mode: summary[mode]["requests_per_s_median"] / summary["off"]["requests_per_s_median"] for mode in modes}
    print("median req/s over tracing off: " + ", ".join(f"{mode} {ratio:.3f}" for mode, ratio in ratios.items()))
    if args.output:
        report = {"machine": describe_machine(), "model": args.model, "concurrency": args.concurrency, "summary": summary}
        report |= {"over_off": ratios, "exports": _Sink.exports, "runs": runs}
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
