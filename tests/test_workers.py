"""Several HTTP worker processes and one inference process (``DIGITS_WORKERS=2``), over real TCP.

Every request, whichever worker takes it, reaches the one inference process's batchers;
metrics count each request exactly once; the process tree leaves nothing behind on
SIGTERM, when the supervisor is killed with SIGKILL, or when it gives up on a child.
Faults the tree heals from are in tests/test_faults.py.
"""

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests.conftest import WEIGHTS, LiveServer, png_bytes, start_server, stop_server, stroke_digit_one

ONE_FILES = [("files", ("one.png", png_bytes(stroke_digit_one()), "image/png"))]


KEY = {"X-API-Key": "workers-key"}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(
        tmp_path_factory.mktemp("workers"), DIGITS_WORKERS="2", DIGITS_WARMUP_BATCHES="1", DIGITS_API_KEY=KEY["X-API-Key"]
    )
    yield server
    stop_server(server)


def tree(server: LiveServer) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children(recursive=True)


def loads_torch(process: psutil.Process) -> bool:
    return any("torch" in region.path for region in process.memory_maps())


def served_by(server: LiveServer) -> list[psutil.Process]:
    """The inference process and the HTTP workers (not multiprocessing's resource tracker)."""
    return [p for p in tree(server) if "resource_tracker" not in " ".join(p.cmdline())]


def counted(metrics: str, route: str, method: str = "POST", status: str = "200") -> float:
    pattern = rf'^digits_http_requests_total\{{method="{method}",route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, flags=re.MULTILINE))


def test_the_tree_is_a_supervisor_an_inference_process_and_http_workers_without_torch(two_workers: LiveServer) -> None:
    children = served_by(two_workers)
    assert len(children) == 3, [p.cmdline() for p in children]
    assert sum(loads_torch(p) for p in children) == 1, "only the inference process loads torch"


async def test_concurrent_requests_through_both_workers_are_batched_together(two_workers: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=two_workers.url, timeout=30, limits=httpx.Limits(max_connections=32), headers=KEY) as http:
        alone = (await http.post("/predict?model=resnet", files=ONE_FILES)).json()["predictions"][0]["probabilities"]
        before = {m["name"]: m for m in (await http.get("/model-info")).json()["models"]}["resnet"]
        responses = await asyncio.gather(*(http.post("/predict?model=resnet", files=ONE_FILES) for _ in range(64)))
        after = {m["name"]: m for m in (await http.get("/model-info")).json()["models"]}["resnet"]
    assert all(r.status_code == 200 for r in responses)
    for response in responses:
        np.testing.assert_allclose(response.json()["predictions"][0]["probabilities"], alone, atol=1e-5)
    assert after["images"] - before["images"] == 64
    assert after["batches"] - before["batches"] < 64  # shared passes
    assert len({r.headers["x-request-id"] for r in responses}) == 64


async def test_metrics_count_each_request_once_whichever_worker_served_it(two_workers: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=two_workers.url, timeout=30, limits=httpx.Limits(max_connections=16), headers=KEY) as http:
        before = (await http.get("/metrics")).text
        statuses = [
            r.status_code for r in await asyncio.gather(*(http.post("/predict?model=inception", files=ONE_FILES) for _ in range(40)))
        ]
        await asyncio.gather(*(http.get("/nowhere") for _ in range(7)))
        scrapes = [(await http.get("/metrics")).text for _ in range(6)]  # several scrapes: whichever worker answers, the same sums
    assert statuses == [200] * 40
    for after in scrapes:
        assert counted(after, "/predict") - counted(before, "/predict") == 40
        assert counted(after, "unmatched", "GET", "404") - counted(before, "unmatched", "GET", "404") == 7
        images = re.search(r'^digits_images_predicted_total\{model="inception"\} (\S+)$', after, flags=re.MULTILINE)
        assert images is not None and float(images.group(1)) >= 40


def test_model_info_reports_the_workers_and_the_shared_batchers(two_workers: LiveServer) -> None:
    info = httpx.get(two_workers.url + "/model-info", timeout=10).json()
    assert info["batching"]["workers"] == 2
    assert {m["name"] for m in info["models"]} == {"inception", "resnet", "ensemble"}


def test_the_api_key_and_v2_hold_in_every_worker(two_workers: LiveServer) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 28, 28], "datatype": "UINT8", "data": stroke_digit_one().ravel().tolist()}]}
    with httpx.Client(base_url=two_workers.url, timeout=30) as http:
        for _ in range(6):  # new connections: both workers answer some
            assert http.post("/predict", files=ONE_FILES, headers={"Connection": "close"}).status_code == 401
            v2 = http.post("/v2/models/ensemble/infer", json=body, headers={**KEY, "Connection": "close"})
            assert v2.status_code == 200, v2.text
            outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
            assert outputs["label"] == [1] and outputs["is_digit"] == [True]


async def test_a_full_queue_is_a_503_with_retry_after_across_processes(tmp_path: Path) -> None:
    server = start_server(tmp_path, DIGITS_WORKERS="2", DIGITS_WARMUP_BATCHES="1", DIGITS_MAX_QUEUE_IMAGES="64", DIGITS_MAX_BATCH_SIZE="8")
    try:
        files = ONE_FILES * 64  # one request fills the queue; concurrent ones must be refused, not lost
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=16)) as http:
            responses = await asyncio.gather(*(http.post("/predict?model=inception", files=files) for _ in range(16)))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1" and "queue limit of 64" in response.json()["detail"]
    finally:
        stop_server(server)


def wait_gone(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_supervisor_leaves_no_process(tmp_path: Path, stop: signal.Signals) -> None:
    server = start_server(tmp_path, DIGITS_WORKERS="2", DIGITS_WARMUP_BATCHES="1")
    try:
        pids = [p.pid for p in tree(server)]
        assert len(pids) >= 3
        os.kill(server.process.pid, stop)
        server.process.wait(timeout=60)
        left = wait_gone(pids)
        assert not left, f"{stop.name} left {left} running:\n{server.log()}"
        if stop == signal.SIGTERM:
            assert server.process.returncode == -signal.SIGTERM
            assert "Application shutdown complete" in server.log()
    finally:
        stop_server(server)


def test_without_restarts_a_worker_that_dies_takes_the_tree_down(tmp_path: Path) -> None:
    """With DIGITS_MAX_RESTARTS_PER_MINUTE=0 the orchestrator alone restarts: half a server must not stay up."""
    server = start_server(tmp_path, DIGITS_WORKERS="2", DIGITS_WARMUP_BATCHES="1", DIGITS_MAX_RESTARTS_PER_MINUTE="0")
    try:
        pids = [p.pid for p in tree(server)]
        worker = next(
            p
            for p in tree(server)
            if "resource_tracker" not in " ".join(p.cmdline()) and not any("torch" in m.path for m in p.memory_maps())
        )
        worker.kill()
        assert server.process.wait(timeout=60) == 1
        assert not wait_gone(pids)
        assert f"(pid {worker.pid}) ended with exit code -9" in server.log()
        assert "restart limit reached" in server.log()
    finally:
        stop_server(server)


def test_an_inference_process_that_cannot_start_stops_the_tree_at_once(tmp_path: Path) -> None:
    """A bad checkpoint fails every restart alike: the tree exits instead of looping."""
    broken = tmp_path / "weights"
    broken.mkdir()
    for file in WEIGHTS.glob("*.*"):
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "resnet.pt").write_bytes(b"not a checkpoint")
    server = start_server(tmp_path, wait_ready=False, DIGITS_WORKERS="2", DIGITS_WEIGHTS_DIR=str(broken))
    try:
        assert server.process.wait(timeout=60) == 1
        log = server.log()
        assert "inference failed to start: stopping every process" in log
        assert "restarting inference" not in log
        assert f"weights file {broken / 'resnet.pt'} has sha256" in log
    finally:
        stop_server(server)
