"""``python -m bench.peer`` end to end on a tiny load: both servers answer, answer alike, and leave no process behind."""

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_litserve_serves_the_same_model_with_the_same_answers(tmp_path: Path, data_dir: Path) -> None:
    command = [sys.executable, "-m", "bench.peer", "--models", "resnet", "--concurrency", "1", "4", "--duration", "0.3", "--warmup", "0.1"]
    command += ["--workers", "2"]  # ours with 2 HTTP workers, LitServe with 2 API servers: process trees on both sides
    command += ["--results-dir", str(tmp_path), "--name", "smoke", "--data-dir", str(data_dir)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    results = json.loads((tmp_path / "peer-smoke.json").read_text())

    runs = {(run["server"], run["concurrency"]): run for run in results["runs"]}
    assert set(runs) == {(server, c) for server in ("ours", "litserve") for c in (1, 4)}
    assert all(run["ok"] > 0 and run["errors"] == 0 for run in runs.values())
    assert "| resnet | 4 |" in finished.stdout

    ours, theirs = (next(p["probabilities"] for p in results["probes"] if p["server"] == s) for s in ("ours", "litserve"))
    assert len(ours) == 10 and max(ours) > 0.9
    assert ours == pytest.approx(theirs, abs=1e-6)

    # every process of both trees ended with its server (each runs in its own process group)
    assert {s["label"]: s["processes"] >= 3 for s in results["servers"]} == {"ours": True, "litserve": True}
    assert all(s["survivors"] == [] for s in results["servers"]), results["servers"]
    leftover = [p.pid for p in psutil.process_iter(["cmdline"]) if "--serve-litserve" in " ".join(p.info["cmdline"] or [])]
    assert leftover == []
    assert [t["name"] for t in results["targets"]] == []  # the c32 target needs a c32 run
