"""Targets, the printed table and the throughput plot, all computed from the results dict."""

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "NO_BATCHING",
    "closest_limit",
    "evaluate_targets",
    "find_run",
    "format_report",
    "plot",
    "server_label",
    "target",
    "worker_scaling",
]

Result = dict[str, Any]

# The targets; thresholds are ratios unless a unit is named.
BATCH_256_MIN_RATIO = 0.75  # 256-image requests vs the in-process limit at 256 with every core
BATCHING_MIN_SPEEDUP = 3.0  # c32 single images, batching vs no batching (one worker each)
TAIL_CONCURRENCY = 512
TAIL_P99_MAX_RATIO = 4.0  # c512 p99 vs the same run's p50
WORKERS_CONCURRENCY = 64
WORKERS_MIN_SPEEDUP = 1.5  # c64 single images, 2 workers vs 1 (on 2 cores)
C1_P50_MAX_RATIO = 1.5
READY_MAX_S = 5.0
RSS_MAX_MB = 600.0
RSS_GROWTH_MAX_PCT = 5.0
PEER_CONCURRENCY = 32
PEER_MIN_RATIO = 2.5  # bench.peer: our images/s vs LitServe's at c32
TRITON_MIN_RATIO = 1.2  # bench.peer: our images/s vs Triton's at c32, the same V2 JSON body
SPEEDUP_MODELS = ("inception", "ensemble")
NO_BATCHING = "no-batching"


def server_label(workers: int) -> str:
    """The label of the default-settings server with ``workers`` HTTP workers."""
    return f"workers-{workers}"


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


def target(name: str, value: float | None, comparison: str, threshold: float, unit: str, detail: str = "") -> Result:
    """One target's verdict: ``value`` against ``threshold`` (>=, < or <=); unmeasured fails."""
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


def best_limit_256(results: Result, model: str) -> float:
    """The best in-process limit at batch 256: the server's threads or every core."""
    at_256 = [
        lim for lim in [*results["limits"], *results.get("limits_all_cores", [])] if lim["model"] == model and lim["batch_size"] == 256
    ]
    return max((float(lim["images_per_s"]) for lim in at_256), default=0.0)


def worker_scaling(results: Result, concurrency: int = WORKERS_CONCURRENCY) -> list[Result]:
    """Single-image images/s of each worker count over one worker's, per model and body, at ``concurrency``."""
    workers: list[int] = results["config"]["workers"]
    if 1 not in workers:
        return []
    rows = []
    for model in results["config"]["models"]:
        for body in results["config"]["bodies"]:
            one = find_run(results["runs"], server=server_label(1), kind="single", model=model, body=body, concurrency=concurrency)
            for count in (w for w in workers if w != 1):
                run = find_run(results["runs"], server=server_label(count), kind="single", model=model, body=body, concurrency=concurrency)
                if one is None or run is None:
                    continue
                rows.append(
                    {
                        "model": model,
                        "body": body,
                        "concurrency": concurrency,
                        "workers": count,
                        "images_per_s": run["images_per_s"],
                        "one_worker_images_per_s": one["images_per_s"],
                        "ratio": run["images_per_s"] / one["images_per_s"] if one["images_per_s"] else None,
                    }
                )
    return rows


def evaluate_targets(results: Result) -> list[Result]:
    """Every target the issue names that this run has the data for, PASS or FAIL."""
    runs: list[Result] = results["runs"]
    models: list[str] = results["config"]["models"]
    bodies: list[str] = results["config"]["bodies"]
    workers: list[int] = results["config"]["workers"]
    targets: list[Result] = []

    for row in worker_scaling(results):
        if row["workers"] == 2 and row["body"] == "multipart":
            targets.append(
                target(
                    f"{row['model']}: c{row['concurrency']} images/s, 2 workers vs 1",
                    row["ratio"],
                    ">=",
                    WORKERS_MIN_SPEEDUP,
                    "x",
                    f"{row['images_per_s']:.0f} vs {row['one_worker_images_per_s']:.0f} images/s",
                )
            )

    for count in workers:
        for model in models:
            run = find_run(runs, server=server_label(count), kind="batch", model=model, body="multipart", images_per_request=256)
            if run is None:
                continue
            best = best_limit_256(results, model)
            targets.append(
                target(
                    f"{model}, {count} worker(s): batch-256 PNG images/s vs the best in-process limit at 256",
                    run["images_per_s"] / best if best else None,
                    ">=",
                    BATCH_256_MIN_RATIO,
                    "x",
                    f"{run['images_per_s']:.0f} of {best:.0f} images/s",
                )
            )

    for count in workers:
        for model in models:
            run = find_run(runs, server=server_label(count), kind="single", model=model, body="multipart", concurrency=TAIL_CONCURRENCY)
            if run is None:
                continue
            p99, p50 = _p(run, "p99"), _p(run, "p50")
            targets.append(
                target(
                    f"{model}, {count} worker(s): c{TAIL_CONCURRENCY} p99 vs its p50",
                    p99 / p50 if p99 is not None and p50 else None,
                    "<=",
                    TAIL_P99_MAX_RATIO,
                    "x",
                    f"{p99 or float('nan'):.1f} ms vs {p50 or float('nan'):.1f} ms",
                )
            )

    for model in (m for m in SPEEDUP_MODELS if m in models):
        for body in bodies:
            batched = find_run(runs, server=server_label(1), kind="single", model=model, body=body, concurrency=32)
            unbatched = find_run(runs, server=NO_BATCHING, kind="single", model=model, body=body, concurrency=32)
            if batched is not None and unbatched is not None:
                speedup = batched["images_per_s"] / unbatched["images_per_s"] if unbatched["images_per_s"] else None
                targets.append(
                    target(
                        f"{model} {body}: c32 images/s, batching vs no batching (1 worker)",
                        speedup,
                        ">=",
                        BATCHING_MIN_SPEEDUP,
                        "x",
                        f"{batched['images_per_s']:.0f} vs {unbatched['images_per_s']:.0f} images/s",
                    )
                )

    for floor in results.get("latency_floor", []):
        targets.append(
            target(
                f"{floor['model']} {floor['body']}: c1 p50 vs healthz + forward@1 ({floor['server']})",
                floor["ratio"],
                "<=",
                C1_P50_MAX_RATIO,
                "x",
                f"{floor['c1_p50_ms']:.2f} ms vs {floor['healthz_p50_ms']:.2f} + {floor['forward_b1_ms']:.2f} ms",
            )
        )

    default = next((s for s in results["servers"] if s["label"] == server_label(1)), None)
    if default is not None:
        targets.append(target("ready after start (default settings: 1 worker)", default["ready_s"], "<=", READY_MAX_S, "s"))
    for server in results["servers"]:
        if server["label"] != NO_BATCHING:
            targets.append(
                target(
                    f"peak RSS of the process tree, {server['workers']} worker(s)",
                    server["peak_rss_mb"],
                    "<",
                    RSS_MAX_MB,
                    "MB",
                    f"{server['processes']} processes",
                )
            )
    for soak in results.get("soaks", []):
        targets.append(
            target(
                f"RSS growth over the soak, {soak['workers']} worker(s)",
                soak["growth_pct"],
                "<",
                RSS_GROWTH_MAX_PCT,
                "%",
                f"{soak['requests']} requests, {soak['rss_before_mb']:.1f} -> {soak['rss_after_mb']:.1f} MB",
            )
        )
    errors = sum(run["errors"] for run in runs) + sum(soak["errors"] for soak in results.get("soaks", []))
    targets.append(target("requests that failed (all runs)", float(errors), "<=", 0, "", ""))
    return targets


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(results: Result) -> str:
    """The printed summary: limits, runs, worker scaling, latency floor, memory and start-up, targets."""
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
    lines.append(f"{'model':<10}" + "".join(f"{'b' + str(s):>17}" for s in sizes) + f"{'b256 all cores':>17}")
    for model in results["config"]["models"]:
        row = {limit["batch_size"]: limit for limit in results["limits"] if limit["model"] == model}
        cells = [f"{row[s]['images_per_s']:>8.0f} ({row[s]['forward_ms_p50']:>5.2f})" if s in row else f"{'-':>17}" for s in sizes]
        every = next((lim for lim in results.get("limits_all_cores", []) if lim["model"] == model), None)
        cells.append(f"{every['images_per_s']:>8.0f} ({every['forward_ms_p50']:>5.2f})" if every else f"{'-':>17}")
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
    lines.append("  ratio = served images/s / limit images/s; lg cpu, srv cpu = CPU seconds per wall second of load generator, server tree")
    lines.append("")
    for row in worker_scaling(results):
        lines.append(
            f"{row['model']} {row['body']} c{row['concurrency']}: {row['workers']} workers {row['images_per_s']:.0f} img/s "
            f"vs 1 worker {row['one_worker_images_per_s']:.0f} img/s (x{_fmt(row['ratio'], 2)})"
        )
    for floor in results.get("latency_floor", []):
        lines.append(
            f"c1 p50 {floor['model']} {floor['body']}: {floor['c1_p50_ms']:.2f} ms; healthz p50 {floor['healthz_p50_ms']:.2f} ms "
            f"+ forward@1 {floor['forward_b1_ms']:.2f} ms = {floor['healthz_p50_ms'] + floor['forward_b1_ms']:.2f} ms "
            f"(x{_fmt(floor['ratio'], 2)})"
        )
    for server in results["servers"]:
        lines.append(
            f"server {server['label']}: torch {server.get('torch', '?')}, ready in {server['ready_s']:.2f} s, "
            f"{server['processes']} processes, "
            f"peak RSS {server['peak_rss_mb']:.0f} MB (after ready {server['rss_ready_mb']:.0f} MB), env {server['env'] or '{}'}"
        )
    for soak in results.get("soaks", []):
        lines.append(
            f"soak {soak['server']}: {soak['requests']} requests ({soak['model']}, c{soak['concurrency']}, {soak['errors']} errors) "
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
    servers = list(dict.fromkeys(r["server"] for r in runs if r["kind"] == "single"))
    figure, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 8), squeeze=False, sharex=True)
    styles = {"multipart": "-", "json": "--"}
    colours = {server: f"C{index}" for index, server in enumerate(servers)}
    for column, model in enumerate(models):
        top, bottom = axes[0][column], axes[1][column]
        for server in servers:
            for body in results["config"]["bodies"]:
                series = sorted(
                    (r for r in runs if r["server"] == server and r["model"] == model and r["kind"] == "single" and r["body"] == body),
                    key=lambda r: r["concurrency"],
                )
                if not series:
                    continue
                label = f"{server}, {body}"
                x = [r["concurrency"] for r in series]
                style = styles.get(body, "-")
                top.plot(x, [r["images_per_s"] for r in series], style, marker="o", color=colours[server], label=label)
                bottom.plot(x, [_p(r, "p99") or float("nan") for r in series], style, marker="o", color=colours[server], label=label)
        for run in (r for r in runs if r["model"] == model and r["kind"] == "batch"):
            colour = colours.get(run["server"])
            top.plot([run["concurrency"]], [run["images_per_s"]], marker="*", markersize=12, linestyle="none", color=colour)
            top.annotate(
                f"{run['images_per_request']}/request, {run['server']}",
                (run["concurrency"], run["images_per_s"]),
                fontsize=7,
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
        best = best_limit_256(results, model)
        if best and best != limits.get(256):
            top.axhline(best, color="black", linestyle="--", linewidth=1)
            top.annotate("limit @ 256, all cores", (1, best), fontsize=8, xytext=(0, 3), textcoords="offset points")
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
