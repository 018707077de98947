"""``python -m bench.summary``: ranges over runs, on synthetic results with known numbers."""

from typing import Any

import pytest

from bench.limit import BATCH_SIZES
from bench.summary import MODELS, summarise


def fake_results(name: str, scale: float, passed: bool) -> dict[str, Any]:
    """A full run's results as `python -m bench` writes them, every number times ``scale``."""

    def run(server: str, model: str, kind: str, concurrency: int, per_request: int, images_per_s: float) -> dict[str, Any]:
        return {
            "server": server,
            "model": model,
            "kind": kind,
            "body": "multipart",
            "concurrency": concurrency,
            "images_per_request": per_request,
            "images_per_s": images_per_s * scale,
            "latency_ms": {"p99": 20 * scale},
        }

    return {
        "name": name,
        "limits": [{"model": m, "batch_size": b, "images_per_s": 100 * b * scale} for m in MODELS for b in BATCH_SIZES],
        "limits_all_cores": [{"model": m, "batch_size": 256, "images_per_s": 51200 * scale} for m in MODELS],
        "latency_floor": [
            {"model": m, "body": "multipart", "c1_p50_ms": 1.0 * scale, "healthz_p50_ms": 0.1, "forward_b1_ms": 0.4} for m in MODELS
        ],
        "runs": [
            r
            for m in MODELS
            for r in (
                run("batching", m, "single", 32, 1, 1500),
                run("no-batching", m, "single", 32, 1, 500),
                run("batching", m, "batch", 4, 256, 12800),
            )
        ],
        "targets": [{"name": "ready after start (default settings)", "passed": True}, {"name": "c32 3x", "passed": passed}],
    }


def test_every_cell_is_the_range_over_the_runs() -> None:
    text = summarise([fake_results("a", 1.0, True), fake_results("b", 2.0, False)])
    assert "2 runs: a, b" in text
    # limits: b1 100-200, b256 25,600-51,200, all cores 51,200-102,400
    assert "| inception | 100-200 | 800-1,600 |" in text and "| 25,600-51,200 | 51,200-102,400 |" in text
    # served: c1 p50 1.00-2.00 ms over a floor of 0.50; c32 1,500-3,000 / 500-1,000 (3.0x in both runs);
    # batch-256 12,800-25,600 img/s, 0.50 of the 1-thread limit and 0.25 of the all-cores one in both
    assert "| resnet | 1.00-2.00 ms (0.50 ms) | 1,500-3,000 / 500-1,000 (3.0x) | 20-40 ms | 12,800-25,600 | 0.50 / 0.25 |" in text
    assert "2/2  ready after start" in text and "1/2  c32 3x" in text


def test_runs_of_different_plans_are_refused() -> None:
    other = fake_results("b", 1.0, True)
    other["targets"] = other["targets"][:1]
    with pytest.raises(ValueError, match="different targets"):
        summarise([fake_results("a", 1.0, True), other])
