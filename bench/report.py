"""Targets, the printed table and the throughput plot, all computed from the results dict."""

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["closest_limit", "evaluate_targets", "find_run", "format_report", "plot"]

Result = dict[str, Any]

# The targets; thresholds are ratios unless a unit is named.
BATCH_256_MIN_RATIO = 0.75
BATCHING_MIN_SPEEDUP = 3.0
BATCHING_P99_MAX_RATIO = 4.0
C1_P50_MAX_RATIO = 1.5
READY_MAX_S = 5.0
RSS_MAX_MB = 600.0
RSS_GROWTH_MAX_PCT = 5.0
SPEEDUP_MODELS = ("inception", "ensemble")


def closest_limit(limits: Iterable[Result], model: str, batch_size: float) -> Result | None:
    """The limit measured at the batch size nearest to ``batch_size`` on a log scale (8 is nearer 12 than 32 is)."""
    candidates = [limit for limit in limits if limit["model"] == model]
    if not candidates or batch_size <= 0:
        return None
    return min(candidates, key=lambda limit: abs(math.log(limit["batch_size"] / batch_size)))


def find_run(
    runs: Iterable[Result],
    *,
    server: str,
    kind: str,
    model: str | None = None,
    body: str | None = None,
    concurrency: int | None = None,
    images_per_request: int | None = None,
) -> Result | None:
    for run in runs:
        if (
            run["server"] == server
            and run["kind"] == kind
            and (model is None or run["model"] == model)
            and (body is None or run["body"] == body)
            and (concurrency is None or run["concurrency"] == concurrency)
            and (images_per_request is None or run["images_per_request"] == images_per_request)
        ):
            return run
    return None


def _p(run: Result | None, key: str) -> float | None:
    if run is None or run["latency_ms"] is None:
        return None
    value: float = run["latency_ms"][key]
    return value


def _target(name: str, value: float | None, comparison: str, threshold: float, unit: str, detail: str = "") -> Result:
    if value is None or math.isnan(value):
        passed = False
        detail = detail or "not measured (no successful requests)"
    elif comparison == ">=":
        passed = value >= threshold
    elif comparison == "<":
        passed = value < threshold
    else:
        passed = value <= threshold
    return {
        "name": name,
        "value": value,
        "comparison": comparison,
        "threshold": threshold,
        "unit": unit,
        "passed": passed,
        "detail": detail,
    }


def evaluate_targets(results: Result) -> list[Result]:
    """Every target the issue names that this run has the data for, PASS or FAIL."""
    runs: list[Result] = results["runs"]
    models: list[str] = results["config"]["models"]
    bodies: list[str] = results["config"]["bodies"]
    targets: list[Result] = []

    for model in models:
        run = find_run(runs, server="batching", kind="batch", model=model, body="multipart", images_per_request=256)
        if run is not None:
            at_256 = [
                lim
                for lim in [*results["limits"], *results.get("limits_all_cores", [])]
                if lim["model"] == model and lim["batch_size"] == 256
            ]
            best = max((lim["images_per_s"] for lim in at_256), default=0.0)
            targets.append(
                _target(
                    f"{model}: batch-256 PNG images/s vs the best in-process limit at 256",
                    run["images_per_s"] / best if best else None,
                    ">=",
                    BATCH_256_MIN_RATIO,
                    "x",
                    f"{run['images_per_s']:.0f} of {best:.0f} images/s; {_fmt(run['ratio_to_limit'], 2)}x of the limit "
                    f"with the server's {results['machine']['torch_threads']} torch threads",
                )
            )

    for model in (m for m in SPEEDUP_MODELS if m in models):
        for body in bodies:
            batched = find_run(runs, server="batching", kind="single", model=model, body=body, concurrency=32)
            unbatched = find_run(runs, server="no-batching", kind="single", model=model, body=body, concurrency=32)
            single = find_run(runs, server="batching", kind="single", model=model, body=body, concurrency=1)
            if batched is not None and unbatched is not None:
                speedup = batched["images_per_s"] / unbatched["images_per_s"] if unbatched["images_per_s"] else None
                targets.append(
                    _target(
                        f"{model} {body}: c32 images/s, batching vs no batching",
                        speedup,
                        ">=",
                        BATCHING_MIN_SPEEDUP,
                        "x",
                        f"{batched['images_per_s']:.0f} vs {unbatched['images_per_s']:.0f} images/s",
                    )
                )
            p99, p50 = _p(batched, "p99"), _p(single, "p50")
            if batched is not None and single is not None:
                ratio = p99 / p50 if p99 is not None and p50 else None
                targets.append(
                    _target(
                        f"{model} {body}: c32 p99 vs c1 p50",
                        ratio,
                        "<",
                        BATCHING_P99_MAX_RATIO,
                        "x",
                        f"{p99 or float('nan'):.1f} ms vs {p50 or float('nan'):.1f} ms",
                    )
                )

    for floor in results.get("latency_floor", []):
        targets.append(
            _target(
                f"{floor['model']} {floor['body']}: c1 p50 vs healthz + forward@1",
                floor["ratio"],
                "<=",
                C1_P50_MAX_RATIO,
                "x",
                f"{floor['c1_p50_ms']:.2f} ms vs {floor['healthz_p50_ms']:.2f} + {floor['forward_b1_ms']:.2f} ms",
            )
        )

    default = next((s for s in results["servers"] if s["label"] == "batching"), None)
    if default is not None:
        targets.append(_target("ready after start (default settings)", default["ready_s"], "<=", READY_MAX_S, "s"))
    if results["servers"]:
        peak = max(s["peak_rss_mb"] for s in results["servers"])
        targets.append(_target("peak RSS of the server", peak, "<", RSS_MAX_MB, "MB"))
    soak = results.get("soak")
    if soak is not None:
        targets.append(
            _target(
                "RSS growth over the soak",
                soak["growth_pct"],
                "<",
                RSS_GROWTH_MAX_PCT,
                "%",
                f"{soak['requests']} requests, {soak['rss_before_mb']:.1f} -> {soak['rss_after_mb']:.1f} MB",
            )
        )
    errors = sum(run["errors"] for run in runs) + (soak["errors"] if soak else 0)
    targets.append(_target("requests that failed (all runs)", float(errors), "<=", 0, "", ""))
    return targets


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(results: Result) -> str:
    """The printed summary: limits, runs, latency floor, memory and start-up, targets."""
    lines: list[str] = []
    machine = results["machine"]
    lines.append(
        f"bench {results['name']}: {machine['cpu_count']} CPUs, torch {machine['torch']} on {machine['device']} "
        f"with {machine['torch_threads']} threads; load average at start {machine['load_average_start']}"
        + (" (quick mode: numbers are a smoke check only)" if results["quick"] else "")
    )
    lines.append("")
    lines.append("in-process limit, images/s (forward ms at that batch size)")
    sizes = sorted({limit["batch_size"] for limit in results["limits"]})
    lines.append(f"{'model':<10}" + "".join(f"{'b' + str(s):>17}" for s in sizes))
    for model in results["config"]["models"]:
        row = {limit["batch_size"]: limit for limit in results["limits"] if limit["model"] == model}
        cells = [f"{row[s]['images_per_s']:>8.0f} ({row[s]['forward_ms_p50']:>5.2f})" if s in row else f"{'-':>17}" for s in sizes]
        lines.append(f"{model:<10}" + "".join(f"{c:>17}" for c in cells))
    lines.append("")
    header = (
        f"{'server':<12}{'model':<10}{'kind':<8}{'body':<10}{'conc':>5}{'img/req':>8}{'img/s':>9}{'req/s':>9}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'batch':>7}{'limit@':>7}{'ratio':>7}{'err':>5}{'lg cpu':>7}{'srv cpu':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for run in results["runs"]:
        latency = run["latency_ms"] or {}
        lines.append(
            f"{run['server']:<12}{run['model'] or '-':<10}{run['kind']:<8}{run['body']:<10}"
            f"{run['concurrency']:>5}{run['images_per_request']:>8}"
            f"{run['images_per_s']:>9.0f}{run['requests_per_s']:>9.0f}"
            f"{_fmt(latency.get('p50'), 2):>9}{_fmt(latency.get('p95'), 2):>9}{_fmt(latency.get('p99'), 2):>9}"
            f"{_fmt(run['mean_batch_size'], 1):>7}{_fmt(run['limit_batch_size']):>7}{_fmt(run['ratio_to_limit'], 2):>7}"
            f"{run['errors']:>5}{run['loadgen_cpu_fraction']:>7.2f}{_fmt(run['server_cpu_fraction'], 2):>8}"
        )
    lines.append("  batch = mean images per forward pass (from /model-info); limit@ = batch size of the limit compared with;")
    lines.append("  ratio = served images/s / limit images/s; lg cpu, srv cpu = CPU seconds per wall second of load generator, server")
    lines.append("")
    for floor in results.get("latency_floor", []):
        lines.append(
            f"c1 p50 {floor['model']} {floor['body']}: {floor['c1_p50_ms']:.2f} ms; healthz p50 {floor['healthz_p50_ms']:.2f} ms "
            f"+ forward@1 {floor['forward_b1_ms']:.2f} ms = {floor['healthz_p50_ms'] + floor['forward_b1_ms']:.2f} ms "
            f"(x{_fmt(floor['ratio'], 2)})"
        )
    for server in results["servers"]:
        lines.append(
            f"server {server['label']}: ready in {server['ready_s']:.2f} s, peak RSS {server['peak_rss_mb']:.0f} MB "
            f"(after ready {server['rss_ready_mb']:.0f} MB), env {server['env'] or '{}'}"
        )
    soak = results.get("soak")
    if soak is not None:
        lines.append(
            f"soak: {soak['requests']} requests ({soak['model']}, c{soak['concurrency']}, {soak['errors']} errors) "
            f"in {soak['wall_s']:.1f} s; "
            f"RSS {soak['rss_before_mb']:.1f} -> {soak['rss_after_mb']:.1f} MB ({soak['growth_pct']:+.2f} %)"
        )
    lines.append("")
    lines.append("targets" + ("" if not results["quick"] else " (quick mode: not meaningful)"))
    for target in results["targets"]:
        value = _fmt(target["value"], 2)
        lines.append(
            f"  {'PASS' if target['passed'] else 'FAIL'}  {target['name']}: {value}{target['unit']} "
            f"{target['comparison']} {target['threshold']:g}{target['unit']}" + (f"  ({target['detail']})" if target["detail"] else "")
        )
    return "\n".join(lines)


def plot(results: Result, path: Path) -> None:
    """Images/s and p99 against concurrency, per model, each server and body; limits as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models: list[str] = results["config"]["models"]
    runs: list[Result] = results["runs"]
    figure, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 8), squeeze=False, sharex=True)
    styles = {"multipart": "-", "json": "--"}
    colours = {"batching": "tab:blue", "no-batching": "tab:orange"}
    for column, model in enumerate(models):
        top, bottom = axes[0][column], axes[1][column]
        for server in ("batching", "no-batching"):
            for body in results["config"]["bodies"]:
                series = sorted(
                    (r for r in runs if r["server"] == server and r["model"] == model and r["kind"] == "single" and r["body"] == body),
                    key=lambda r: r["concurrency"],
                )
                if not series:
                    continue
                label = f"{server}, {body}"
                x = [r["concurrency"] for r in series]
                top.plot(x, [r["images_per_s"] for r in series], styles.get(body, "-"), marker="o", color=colours[server], label=label)
                bottom.plot(
                    x, [_p(r, "p99") or float("nan") for r in series], styles.get(body, "-"), marker="o", color=colours[server], label=label
                )
        for run in (r for r in runs if r["server"] == "batching" and r["model"] == model and r["kind"] == "batch"):
            top.plot([run["concurrency"]], [run["images_per_s"]], marker="*", markersize=12, linestyle="none", color="tab:green")
            top.annotate(
                f"{run['images_per_request']}/request",
                (run["concurrency"], run["images_per_s"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        limits = {limit["batch_size"]: limit["images_per_s"] for limit in results["limits"] if limit["model"] == model}
        for size, style in ((1, ":"), (32, "-."), (max(limits, default=0), "--")):
            if size in limits:
                top.axhline(limits[size], color="grey", linestyle=style, linewidth=1)
                top.annotate(
                    f"limit @ batch {size}", (1, limits[size]), fontsize=8, color="grey", xytext=(0, 3), textcoords="offset points"
                )
        top.set_title(model)
        top.set_ylabel("images/s")
        top.set_ylim(bottom=0)
        bottom.set_ylabel("p99 latency, ms")
        bottom.set_yscale("log")
        bottom.set_xlabel("concurrent clients")
        bottom.set_xscale("log", base=2)
        ticks = sorted({r["concurrency"] for r in runs if r["model"] == model})
        bottom.set_xticks(ticks, [str(t) for t in ticks])
        for ax in (top, bottom):
            ax.grid(True, which="both", alpha=0.3)
        bottom.legend(fontsize=8, loc="best")
    figure.suptitle(f"digits-serving: served throughput vs in-process limit ({results['name']})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
