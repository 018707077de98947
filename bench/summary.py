"""``python -m bench.summary RESULTS.json ...``: the README's tables over several full runs.

One run on a shared 2-core machine is not a measurement to quote alone: between runs of the
same code the in-process limits moved by up to 2x here. This prints the limits table and the
served-throughput table of ``bench/README.md`` with each cell as the range over the runs
given, and how many of the runs passed each target.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.limit import BATCH_SIZES
from bench.report import Result, find_run

__all__ = ["summarise"]

MODELS = ("inception", "resnet", "ensemble")


def _range(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def _limit(results: Result, model: str, batch_size: int | None = None) -> float:
    """The limit with the server's threads at ``batch_size``; with ``None``, the all-cores limit at 256 where measured."""
    if batch_size is None and results["limits_all_cores"]:
        return float(next(lim["images_per_s"] for lim in results["limits_all_cores"] if lim["model"] == model))
    size = batch_size or max(BATCH_SIZES)
    return float(next(lim["images_per_s"] for lim in results["limits"] if lim["model"] == model and lim["batch_size"] == size))


def summarise(runs: Sequence[Result]) -> str:
    def served(results: Result, model: str, server: str, kind: str, concurrency: int, per_request: int = 1) -> Result:
        found = find_run(
            results["runs"],
            server=server,
            kind=kind,
            model=model,
            body="multipart",
            concurrency=concurrency,
            images_per_request=per_request,
        )
        assert found is not None, f"{results['name']} has no {server} {kind} run of {model} at c{concurrency}"
        return found

    lines = [
        f"{len(runs)} runs: {', '.join(r['name'] for r in runs)}",
        "",
        "| model | " + " | ".join(f"b{size}" for size in BATCH_SIZES) + " | b256, all cores |",
        "| --- | " + " | ".join("---" for _ in BATCH_SIZES) + " | --- |",
    ]
    for model in MODELS:
        cells = [_range([_limit(r, model, size) for r in runs]) for size in BATCH_SIZES] + [_range([_limit(r, model) for r in runs])]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | c1 p50 (floor) | c32 img/s: batching / off | c32 p99 | batch-256 img/s | ratio at 256: server threads / all cores |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        floor = [next(f for f in r["latency_floor"] if f["model"] == model and f["body"] == "multipart") for r in runs]
        busy = [served(r, model, "batching", "single", 32) for r in runs]
        on = [run["images_per_s"] for run in busy]
        off = [served(r, model, "no-batching", "single", 32)["images_per_s"] for r in runs]
        batch = [served(r, model, "batching", "batch", 4, 256)["images_per_s"] for r in runs]
        lines.append(
            f"| {model} | {_range([f['c1_p50_ms'] for f in floor], '{:.2f}')} ms"
            f" ({_range([f['healthz_p50_ms'] + f['forward_b1_ms'] for f in floor], '{:.2f}')} ms)"
            f" | {_range(on)} / {_range(off)} ({_range([a / b for a, b in zip(on, off, strict=True)], '{:.1f}')}x)"
            f" | {_range([run['latency_ms']['p99'] for run in busy], '{:.0f}')} ms"
            f" | {_range(batch)}"
            f" | {_range([b / _limit(r, model, 256) for b, r in zip(batch, runs, strict=True)], '{:.2f}')}"
            f" / {_range([b / _limit(r, model) for b, r in zip(batch, runs, strict=True)], '{:.2f}')} |"
        )
    lines += ["", "targets passed in how many runs:"]
    if len({len(r["targets"]) for r in runs}) > 1:
        raise ValueError("the runs have different targets: compare runs of the same models and settings")
    for index, target in enumerate(runs[0]["targets"]):  # the same plan lists its targets in the same order
        passed = sum(bool(r["targets"][index]["passed"]) for r in runs)
        lines.append(f"  {passed}/{len(runs)}  {target['name']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="+", help="results JSON files of full runs with the same models")
    args = parser.parse_args(argv)
    print(summarise([json.loads(path.read_text()) for path in args.results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
