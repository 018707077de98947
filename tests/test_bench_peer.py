"""``python -m bench.peer`` end to end on a tiny load: both servers answer, answer alike, and leave no process behind."""

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench.peer import _targets
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_litserve_serves_the_same_model_with_the_same_answers(tmp_path: Path, data_dir: Path) -> None:
    command = [sys.executable, "-m", "bench.peer", "--models", "resnet", "--concurrency", "1", "4", "--duration", "0.3", "--warmup", "0.1"]
    command += ["--peers", "litserve", "--workers", "2"]  # ours with 2 HTTP workers, LitServe with 2 API servers
    command += ["--results-dir", str(tmp_path), "--name", "smoke", "--data-dir", str(data_dir)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "peer-smoke.json").read_text())

    runs = {(run["server"], run["concurrency"]): run for run in results["runs"]}
    assert set(runs) == {(server, c) for server in ("ours", "litserve") for c in (1, 4)}
    assert all(run["ok"] > 0 and run["errors"] == 0 for run in runs.values())
    assert "| resnet | LitServe | json | 4 |" in finished.stdout

    ours, theirs = (next(p["probabilities"] for p in results["probes"] if p["server"] == s) for s in ("ours", "litserve"))
    assert len(ours) == 10 and max(ours) > 0.9
    assert ours == pytest.approx(theirs, abs=1e-6)

    # every process of both trees ended with its server (each runs in its own process group)
    assert {s["label"]: s["processes"] >= 3 for s in results["servers"]} == {"ours": True, "litserve": True}
    assert all(s["survivors"] == [] for s in results["servers"]), results["servers"]
    leftover = [p.pid for p in psutil.process_iter(["cmdline"]) if "--serve-litserve" in " ".join(p.info["cmdline"] or [])]
    assert leftover == []
    assert [t["name"] for t in results["targets"]] == []  # the c32 target needs a c32 run


def _run(peer: str, server: str, concurrency: int, images_per_s: float, p50: float) -> dict[str, object]:
    latency = {"p50": p50, "p99": 2 * p50}
    return {
        "peer": peer,
        "model": "resnet",
        "server": server,
        "concurrency": concurrency,
        "images_per_s": images_per_s,
        "latency_ms": latency,
    }


def test_each_peer_is_held_to_its_own_ratio_and_triton_to_its_latency_too() -> None:
    runs = [
        _run("litserve", "ours", 32, 2000, 10),
        _run("litserve", "litserve", 32, 1000, 20),  # 2.0x: below LitServe's 2.5x
        _run("triton", "ours", 32, 1300, 10),
        _run("triton", "triton", 32, 1000, 20),  # 1.3x: above Triton's 1.2x
        _run("triton", "ours", 1, 400, 2.0),
        _run("triton", "triton", 1, 300, 4.0),
    ]
    verdicts = {target["name"]: (round(target["value"], 2), target["passed"]) for target in _targets(runs)}
    assert verdicts == {
        "resnet: c32 images/s, ours vs LitServe": (2.0, False),
        "resnet: c32 images/s, ours vs Triton": (1.3, True),
        "resnet: c1 p50 ms, ours below Triton": (2.0, True),
    }
