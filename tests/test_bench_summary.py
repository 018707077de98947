"""``python -m bench.summary``: ranges over runs, on synthetic results with known numbers."""

from typing import Any

import pytest

from bench.limit import BATCH_SIZES
from bench.summary import MODELS, summarise


def fake_results(name: str, scale: float, passed: bool) -> dict[str, Any]:
    """A full run's results as `python -m bench --workers 1 2` writes them, every number times ``scale``."""

    def run(server: str, model: str, kind: str, concurrency: int, images_per_s: float, per_request: int = 1) -> dict[str, Any]:
        return {
            "server": server,
            "model": model,
            "kind": kind,
            "body": "multipart",
            "concurrency": concurrency,
            "images_per_request": per_request,
            "images_per_s": images_per_s * scale,
            "latency_ms": {"p50": concurrency * scale / 10, "p99": concurrency * scale / 5},
        }

    def server_runs(workers: int, model: str) -> list[dict[str, Any]]:
        label = f"workers-{workers}"
        return [
            run(label, model, "single", 1, 500),
            run(label, model, "single", 32, 1500 * workers),
            run(label, model, "single", 64, 1600 * workers),
            run(label, model, "single", 512, 1700 * workers),
            run(label, model, "batch", 4, 12800 * workers, per_request=256),
        ]

    return {
        "name": name,
        "config": {"workers": [1, 2], "models": list(MODELS), "bodies": ["multipart"]},
        "limits": [{"model": m, "batch_size": b, "images_per_s": 100 * b * scale} for m in MODELS for b in BATCH_SIZES],
        "limits_all_cores": [{"model": m, "batch_size": 256, "images_per_s": 51200 * scale} for m in MODELS],
        "servers": [
            {"label": "workers-1", "workers": 1, "peak_rss_mb": 400.0},
            {"label": "workers-2", "workers": 2, "peak_rss_mb": 500.0 * scale},
            {"label": "no-batching", "workers": 1, "peak_rss_mb": 400.0},
        ],
        "runs": [r for m in MODELS for w in (1, 2) for r in server_runs(w, m)] + [run("no-batching", m, "single", 32, 500) for m in MODELS],
        "targets": [
            {
                "name": "ready after start (default settings: 1 worker)",
                "passed": True,
                "value": 1.5,
                "unit": "s",
                "comparison": "<=",
                "threshold": 5,
            },
            {"name": "c64 2x", "passed": passed, "value": 2.0 * scale, "unit": "x", "comparison": ">=", "threshold": 3},
        ],
    }


def test_every_cell_is_the_range_over_the_runs() -> None:
    text = summarise([fake_results("a", 1.0, True), fake_results("b", 2.0, False)])
    assert "2 run(s): a, b" in text
    # limits: b1 100-200, b8 800-1,600; b256 25,600-51,200, all cores 51,200-102,400
    assert "| inception | 100-200 | 800-1,600 |" in text and "| 25,600-51,200 | 51,200-102,400 |" in text
    # 1 worker: c1 p50 0.10-0.20 ms, c32 1,500-3,000, c64 1,600-3,200 (1.00x of itself), c512 p50 51-102 / p99 102-205 (2.0x),
    # batch-256 12,800-25,600 (0.25x of the best limit in both runs), peak RSS 400 MB
    assert "| resnet | 1 | 0.10-0.20 | 1,500-3,000 | 1,600-3,200 (1.00x) | 51-102 / 102-205 (2.0x) | 12,800-25,600 (0.25x) | 400 |" in text
    # 2 workers: twice the images per second, the same latencies, RSS 500-1,000 MB
    assert (
        "| resnet | 2 | 0.10-0.20 | 3,000-6,000 | 3,200-6,400 (2.00x) | 51-102 / 102-205 (2.0x) | 25,600-51,200 (0.50x) | 500-1,000 |"
        in text
    )
    # batching vs off at c32, one worker: 3.00x in both runs
    assert "| ensemble | multipart | 1,500-3,000 / 500-1,000 | 3.00x |" in text
    assert "2/2  ready after start (default settings: 1 worker) (1.50s <= 5s)" in text
    assert "1/2  c64 2x (2.00-4.00x >= 3x)" in text


def test_one_run_gives_single_values() -> None:
    text = summarise([fake_results("only", 1.0, True)])
    assert "1 run(s): only" in text and "| resnet | 2 | 0.10 | 3,000 | 3,200 (2.00x) |" in text


def test_runs_of_different_plans_are_refused() -> None:
    other = fake_results("b", 1.0, True)
    other["targets"] = other["targets"][:1]
    with pytest.raises(ValueError, match="different targets"):
        summarise([fake_results("a", 1.0, True), other])
