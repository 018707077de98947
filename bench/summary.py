"""``python -m bench.summary [RESULTS.json ...]``: the README's tables over one or more full runs.

A single run on a shared 2-core machine is one sample: this prints the limits table and the
served tables of ``bench/README.md`` with each cell as the range over the runs given (one
value when there is one run), how many runs it rests on, and how many of the runs passed
each target. Without arguments it reads ``bench/results/cpu-2core*.json``.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.limit import BATCH_SIZES
from bench.report import (
    NO_BATCHING,
    TAIL_CONCURRENCY,
    WORKERS_CONCURRENCY,
    Result,
    best_limit_256,
    find_run,
    server_label,
)

__all__ = ["DEFAULT_RESULTS", "summarise"]

MODELS = ("inception", "resnet", "ensemble")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_RESULTS = "cpu-2core*.json"


def _range(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def _limit(results: Result, model: str, batch_size: int | None = None) -> float:
    """The limit with the server's threads at ``batch_size``; with ``None``, the best at 256 (every core included)."""
    if batch_size is None:
        return best_limit_256(results, model)
    return float(next(lim["images_per_s"] for lim in results["limits"] if lim["model"] == model and lim["batch_size"] == batch_size))


def _served(results: Result, model: str, server: str, kind: str, concurrency: int, per_request: int = 1, body: str = "multipart") -> Result:
    found = find_run(
        results["runs"], server=server, kind=kind, model=model, body=body, concurrency=concurrency, images_per_request=per_request
    )
    assert found is not None, f"{results['name']} has no {server} {kind} {body} run of {model} at c{concurrency}"
    return found


def summarise(runs: Sequence[Result]) -> str:
    workers = sorted(set.intersection(*(set(r["config"]["workers"]) for r in runs)))
    lines = [
        f"{len(runs)} run(s): {', '.join(r['name'] for r in runs)}",
        "",
        "In-process limit, images/s (server's torch threads; last column: the best at 256, every core included)",
        "",
        "| model | " + " | ".join(f"b{size}" for size in BATCH_SIZES) + " | b256, all cores |",
        "| --- | " + " | ".join("---" for _ in BATCH_SIZES) + " | --- |",
    ]
    for model in MODELS:
        cells = [_range([_limit(r, model, size) for r in runs]) for size in BATCH_SIZES] + [_range([_limit(r, model) for r in runs])]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Served, multipart PNG, per worker count",
        "",
        f"| model | workers | c1 p50 ms | c32 img/s | c{WORKERS_CONCURRENCY} img/s (vs 1 worker) "
        f"| c{TAIL_CONCURRENCY} p50 / p99 ms (p99/p50) | batch-256 img/s (vs best limit) | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        for count in workers:
            label = server_label(count)
            c1 = [_served(r, model, label, "single", 1)["latency_ms"]["p50"] for r in runs]
            c32 = [_served(r, model, label, "single", 32)["images_per_s"] for r in runs]
            busy = [_served(r, model, label, "single", WORKERS_CONCURRENCY)["images_per_s"] for r in runs]
            one = [_served(r, model, server_label(1), "single", WORKERS_CONCURRENCY)["images_per_s"] for r in runs]
            tail = [_served(r, model, label, "single", TAIL_CONCURRENCY)["latency_ms"] for r in runs]
            batch = [_served(r, model, label, "batch", 4, 256)["images_per_s"] for r in runs]
            rss = [next(s["peak_rss_mb"] for s in r["servers"] if s["label"] == label) for r in runs]
            lines.append(
                f"| {model} | {count} | {_range(c1, '{:.2f}')} | {_range(c32)}"
                f" | {_range(busy)} ({_range([a / b for a, b in zip(busy, one, strict=True)], '{:.2f}')}x)"
                f" | {_range([t['p50'] for t in tail])} / {_range([t['p99'] for t in tail])}"
                f" ({_range([t['p99'] / t['p50'] for t in tail], '{:.1f}')}x)"
                f" | {_range(batch)} ({_range([b / _limit(r, model) for b, r in zip(batch, runs, strict=True)], '{:.2f}')}x)"
                f" | {_range(rss)} |"
            )
    baseline = [r for r in runs if any(s["label"] == NO_BATCHING for s in r["servers"])]
    if baseline:
        lines += [
            "",
            "Dynamic batching at c32, one worker: batching / off",
            "",
            "| model | body | img/s | ratio |",
            "| --- | --- | --- | --- |",
        ]
        for model in MODELS:
            for body in baseline[0]["config"]["bodies"]:
                on = [_served(r, model, server_label(1), "single", 32, body=body)["images_per_s"] for r in baseline]
                off = [_served(r, model, NO_BATCHING, "single", 32, body=body)["images_per_s"] for r in baseline]
                ratio = _range([a / b for a, b in zip(on, off, strict=True)], "{:.2f}")
                lines.append(f"| {model} | {body} | {_range(on)} / {_range(off)} | {ratio}x |")
    lines += ["", "targets passed in how many runs:"]
    if len({len(r["targets"]) for r in runs}) > 1:
        raise ValueError("the runs have different targets: compare runs of the same models and settings")
    for index, target in enumerate(runs[0]["targets"]):  # the same plan lists its targets in the same order
        passed = sum(bool(r["targets"][index]["passed"]) for r in runs)
        values = [r["targets"][index]["value"] for r in runs if r["targets"][index]["value"] is not None]
        shown = (
            f" ({_range(values, '{:,.2f}')}{target['unit']} {target['comparison']} {target['threshold']:g}{target['unit']})"
            if values
            else ""
        )
        lines.append(f"  {passed}/{len(runs)}  {target['name']}{shown}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="*", help=f"results JSON files of full runs (default: bench/results/{DEFAULT_RESULTS})")
    args = parser.parse_args(argv)
    paths = args.results or sorted(RESULTS_DIR.glob(DEFAULT_RESULTS))
    if not paths:
        parser.error(f"no results given and none match bench/results/{DEFAULT_RESULTS}")
    print(summarise([json.loads(path.read_text()) for path in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
