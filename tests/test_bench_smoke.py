"""``python -m bench --quick`` end to end, as CI runs it: the structure of its results, never its speed."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

LIMIT_BATCH_SIZES = [1, 8, 32, 64, 128, 256]
CONCURRENCY = [1, 32, 64, 512]
WORKERS = [1, 2]
LATENCY_KEYS = {"p50", "p95", "p99", "mean", "min", "max"}
RUN_KEYS = {
    "server",
    "workers",
    "model",
    "kind",
    "body",
    "concurrency",
    "images_per_request",
    "requests",
    "ok",
    "errors",
    "wall_s",
    "requests_per_s",
    "images_per_s",
    "latency_ms",
    "mean_batch_size",
    "forward_passes",
    "limit_batch_size",
    "limit_images_per_s",
    "ratio_to_limit",
    "loadgen_cpu_fraction",
    "server_cpu_fraction",
    "server_cpu_per_process",
}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[dict[str, Any], Path, str]:
    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--models",
        "resnet",
        "--workers",
        "1",
        "2",
        "--results-dir",
        str(out),
        "--name",
        "smoke",
        "--data-dir",
        str(data_dir),
    ]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return json.loads((out / "smoke.json").read_text()), out, finished.stdout


def test_files_are_written(quick_results) -> None:
    results, out, stdout = quick_results
    assert json.loads((out / "latest.json").read_text()) == results
    png = (out / "throughput.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert "targets" in stdout and ("PASS" in stdout or "FAIL" in stdout)
    assert (out / "raw" / "smoke").is_dir()  # server logs and payloads


def test_top_level_structure(quick_results) -> None:
    results, _, _ = quick_results
    assert results["quick"] is True and results["name"] == "smoke" and results["schema"] == 2
    assert results["config"]["models"] == ["resnet"] and results["config"]["workers"] == WORKERS
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["torch_threads"] >= 1
    assert results["elapsed_s"] > 0


def test_limits_cover_every_batch_size(quick_results) -> None:
    results, _, _ = quick_results
    limits = results["limits"]
    assert [limit["batch_size"] for limit in limits] == LIMIT_BATCH_SIZES
    assert all(limit["model"] == "resnet" and limit["images_per_s"] > 0 and limit["forward_ms_p50"] > 0 for limit in limits)
    # the batch-256 target is held against the machine's best, all cores included
    machine = results["machine"]
    expected = [] if machine["torch_threads"] == machine["cpu_count"] else [("resnet", 256)]
    assert [(limit["model"], limit["batch_size"]) for limit in results["limits_all_cores"]] == expected


def test_every_run_is_there_and_answered(quick_results) -> None:
    results, _, _ = quick_results
    runs = results["runs"]
    for run in runs:
        assert set(run) >= RUN_KEYS, RUN_KEYS - set(run)
        assert run["errors"] == 0 and run["ok"] > 0, run
        assert set(run["latency_ms"]) == LATENCY_KEYS
        assert run["latency_ms"]["p50"] <= run["latency_ms"]["p95"] <= run["latency_ms"]["p99"]
        assert run["loadgen_cpu_fraction"] > 0
    singles = {(r["server"], r["workers"], r["body"], r["concurrency"]) for r in runs if r["kind"] == "single"}
    expected = {(f"workers-{w}", w, body, c) for w in WORKERS for body in ("multipart", "json") for c in CONCURRENCY}
    expected |= {("no-batching", 1, body, 32) for body in ("multipart", "json")}
    assert singles == expected
    batches = [r for r in runs if r["kind"] == "batch"]
    assert sorted((r["workers"], r["images_per_request"]) for r in batches) == [(w, n) for w in WORKERS for n in (64, 256)]
    for run in batches:
        assert run["limit_batch_size"] == run["images_per_request"] and run["ratio_to_limit"] > 0
        assert run["mean_batch_size"] >= 1
    for run in (r for r in runs if r["server"] == "no-batching"):
        assert run["mean_batch_size"] == 1  # DIGITS_MAX_BATCH_SIZE=1
    for run in runs:  # the CPU split over the server's processes: one process, or the supervisor's tree
        assert len(run["server_cpu_per_process"]) == 1 if run["workers"] == 1 else len(run["server_cpu_per_process"]) >= 4
    assert sorted(r["workers"] for r in runs if r["kind"] == "healthz") == WORKERS


def test_servers_soaks_latency_floor_and_targets(quick_results) -> None:
    results, _, _ = quick_results
    servers = {s["label"]: s for s in results["servers"]}
    assert set(servers) == {"workers-1", "workers-2", "no-batching"}
    assert servers["no-batching"]["env"] == {"DIGITS_WORKERS": "1", "DIGITS_MAX_BATCH_SIZE": "1", "DIGITS_MAX_QUEUE_IMAGES": "2048"}
    assert servers["workers-2"]["env"] == {"DIGITS_WORKERS": "2"}
    assert servers["workers-1"]["processes"] == 1
    assert servers["workers-2"]["processes"] >= 4  # the supervisor, the inference process, 2 HTTP workers
    for server in servers.values():
        assert server["ready_s"] > 0 and server["peak_rss_mb"] > 50
    # Every process of the tree counts: right after ready (before any upload's transient
    # memory, which makes a peak) the tree holds the same torch and models plus three processes.
    assert servers["workers-2"]["rss_ready_mb"] > servers["workers-1"]["rss_ready_mb"]
    assert [soak["workers"] for soak in results["soaks"]] == WORKERS
    for soak in results["soaks"]:
        # wrk stops after the 500th answer; requests already in flight on other connections may
        # still be answered in the same turn of its event loop, and they are counted
        assert 500 <= soak["requests"] < 500 + soak["concurrency"] and soak["errors"] == 0 and soak["model"] == "resnet"
        assert soak["rss_before_mb"] > 0 and soak["rss_after_mb"] > 0 and isinstance(soak["growth_pct"], float)
    assert {(f["model"], f["body"]) for f in results["latency_floor"]} == {("resnet", "multipart"), ("resnet", "json")}
    names = [t["name"] for t in results["targets"]]
    assert "resnet: c64 images/s, 2 workers vs 1" in names
    assert sum("c512 p99 vs its p50" in n for n in names) == len(WORKERS)
    assert sum("batch-256" in n for n in names) == len(WORKERS)
    assert any("ready" in n for n in names) and sum("RSS growth" in n for n in names) == len(WORKERS)
    assert all(isinstance(t["passed"], bool) for t in results["targets"])
    assert results["summary"]["targets"] == len(results["targets"])


def test_the_app_stage_runs_every_request_through_the_whole_app() -> None:
    """``bench.stages``' app rows: each request answered 200 by the real app (a failing one would
    raise), timed once per call."""
    from bench.run import encode_pngs
    from bench.stages import Timer, measure_app

    card = json.loads((ROOT / "weights" / "resnet.json").read_text())
    pngs = encode_pngs(np.zeros((1, 28, 28), np.uint8))
    rows = measure_app(pngs, "resnet", card, Timer(0.0, 0.01, min_samples=3))
    assert [row["key"] for row in rows] == ["app_healthz", "app_multipart", "app_json", "app_v2"]
    assert all(row["samples"] >= 3 and 0 < row["median_us"] <= row["p90_us"] for row in rows)
