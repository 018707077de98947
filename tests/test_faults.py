"""Faults in the process tree (``DIGITS_WORKERS=2``) under load, over real TCP.

Clients post in a loop, each on its own keep-alive connection, while a child is killed or
stopped. Which worker holds a connection is read from the kernel (psutil): the server side
of the client's local port. A dead or hung HTTP worker may cost only the requests on its
own connections, and is replaced; a dead inference process costs only 503s with
Retry-After, and the tree serves again by itself. Each restart is counted in /metrics.
"""

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer, png_bytes, start_server, stop_server, stroke_digit_one

ONE = png_bytes(stroke_digit_one())
Files = list[tuple[str, tuple[str, bytes, str]]]
ONE_FILES: Files = [("files", ("one.png", ONE, "image/png"))]
# Four chunks of 128 on a CPU: with a spare pass beside the main one, two of them still wait in the queue.
HEAVY_FILES: Files = [("files", (f"one-{i}.png", ONE, "image/png")) for i in range(512)]
HEARTBEAT_TIMEOUT_S = 2.0
CLIENTS = 8


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One tree for the faults it heals from; each test starts by checking it is whole."""
    server = start_server(
        tmp_path_factory.mktemp("faults"),
        DIGITS_WORKERS="2",
        DIGITS_WARMUP_BATCHES="1",
        DIGITS_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S),
    )
    yield server
    stop_server(server)


# --- the tree as the kernel sees it ----------------------------------------------------------


def port_of(server: LiveServer) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


def children(server: LiveServer) -> list[psutil.Process]:
    """The inference process and the HTTP workers (not multiprocessing's resource tracker)."""
    found = []
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if "resource_tracker" not in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


def listens(process: psutil.Process, port: int) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp"))
    return False


def http_workers(server: LiveServer) -> list[psutil.Process]:
    """The children holding the listening socket (passed to HTTP workers only)."""
    return [child for child in children(server) if listens(child, port_of(server))]


def inference_process(server: LiveServer) -> psutil.Process:
    (inference,) = [child for child in children(server) if not listens(child, port_of(server))]
    return inference


def client_ports(process: psutil.Process, port: int) -> set[int]:
    """The client ports of the connections ``process`` has accepted on ``port``."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return {c.raddr.port for c in process.net_connections("tcp") if c.raddr and c.laddr.port == port}
    return set()


def local_port(response: httpx.Response) -> int | None:
    """The client port of the connection that carried ``response``; None once it is closed."""
    try:
        return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    except OSError:  # the server closed it with the response (Connection: close)
        return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def restarts(server: LiveServer) -> dict[tuple[str, str], float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "digits_child_restarts"]
    return {(s.labels["kind"], s.labels["reason"]): s.value for s in family.samples if s.name.endswith("_total")}


async def full_strength(server: LiveServer, timeout_s: float = 30.0, not_pids: frozenset[int] = frozenset()) -> set[int]:
    """Until two distinct HTTP workers (none of ``not_pids``) answer a prediction, each on a fresh connection."""
    deadline = time.monotonic() + timeout_s
    answered: set[int] = set()
    while time.monotonic() < deadline:
        workers = [w for w in http_workers(server) if w.pid not in not_pids]
        with contextlib.suppress(httpx.TransportError):
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
                response = await http.post("/predict?model=resnet", files=ONE_FILES)
                if response.status_code == 200:
                    answered |= {w.pid for w in workers if local_port(response) in client_ports(w, port_of(server))}
        if len(answered) >= 2:
            return answered
        await asyncio.sleep(0.02)
    raise AssertionError(f"not at full strength within {timeout_s} s: answered by {answered}:\n{server.log()[-4000:]}")


# --- load -------------------------------------------------------------------------------------


@dataclass
class Load:
    """Clients posting in a loop until stopped, each on its own keep-alive connection, or
    (``fresh``) on a new connection for every request, which any worker may accept."""

    url: str
    files: Files
    fresh: bool = False
    model: str = "resnet"
    statuses: Counter[int] = field(default_factory=Counter)
    answers: list[tuple[float, int]] = field(default_factory=list)  # (when it came, status)
    failed_ports: list[int | None] = field(default_factory=list)  # the connection each transport error came on
    failed_clients: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    without_retry_after: int = 0
    details_503: Counter[str] = field(default_factory=Counter)
    ports: dict[int, int] = field(default_factory=dict)  # client -> its connection's local port (0: closed)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, index: int) -> None:
        headers = {"Connection": "close"} if self.fresh else {}
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=httpx.Limits(max_connections=1), headers=headers) as http:
            while not self.stop.is_set():
                try:
                    response = await http.post(f"/predict?model={self.model}", files=self.files)
                except httpx.TransportError as exc:
                    self.failed_ports.append(None if self.fresh else self.ports.pop(index, None))
                    self.failed_clients[index] += 1
                    self.errors.append(repr(exc))
                    await asyncio.sleep(0.01)  # a server that is gone refuses at once: do not spin
                    continue
                self.ports[index] = local_port(response) or 0  # 0: closed with the response
                self.statuses[response.status_code] += 1
                self.answers.append((time.monotonic(), response.status_code))
                if response.status_code == 503:
                    self.without_retry_after += "retry-after" not in response.headers
                    self.details_503[response.json()["detail"]] += 1
                    await asyncio.sleep(0.1)  # as Retry-After asks, only sooner: the test measures the outage

    async def warmed(self, clients: int) -> None:
        """Until every client has had an answer (so each holds a connection)."""
        while len(self.ports) < clients:
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def load(
    server: LiveServer, clients: int = CLIENTS, files: Files = ONE_FILES, fresh: bool = False, model: str = "resnet"
) -> AsyncIterator[Load]:
    """``clients`` clients posting ``files`` to ``model`` in a loop, from the moment each has had an answer."""
    running = Load(server.url, files, fresh, model)
    tasks = [asyncio.create_task(running.client(i)) for i in range(clients)]
    try:
        await asyncio.wait_for(running.warmed(clients), 30)
        yield running
    finally:
        running.stop.set()
        await asyncio.gather(*tasks)


# --- faults -----------------------------------------------------------------------------------


FRESH_CLIENTS = 4


def only_the_victims_requests_failed(kept: Load, fresh: Load, on_victim: set[int]) -> str:
    """Asserts it; a summary for the log."""
    for clients in (kept, fresh):
        # no 500, and no 503 either: the survivor stays ready, the replacement takes requests once it can answer them
        assert clients.statuses == Counter({200: clients.statuses[200]}), clients.statuses
    assert all(port in on_victim for port in kept.failed_ports), (kept.failed_ports, on_victim, kept.errors)
    assert len(kept.failed_ports) <= len(on_victim)
    assert all(count == 1 for count in fresh.failed_clients.values()), fresh.failed_clients  # its one request in flight at most
    total = kept.statuses.total() + fresh.statuses.total() + len(kept.errors) + len(fresh.errors)
    return (
        f"{len(kept.errors)} of {CLIENTS} keep-alive clients ({len(on_victim)} on it) and "
        f"{len(fresh.errors)} of {FRESH_CLIENTS} connection-per-request clients failed a request; {total} requests"
    )


@pytest.mark.timeout(60)
async def test_a_killed_http_worker_costs_only_its_requests_in_flight_and_is_replaced(tree: LiveServer) -> None:
    await full_strength(tree)
    before = restarts(tree)
    async with load(tree) as kept, load(tree, clients=FRESH_CLIENTS, fresh=True) as fresh:
        victim = http_workers(tree)[0]
        on_victim = client_ports(victim, port_of(tree))
        victim.kill()
        killed = time.monotonic()
        healed = await full_strength(tree, not_pids=frozenset({victim.pid}))
        took = time.monotonic() - killed
        await asyncio.sleep(0.5)  # the load goes on against the whole tree
    print(f"HTTP worker SIGKILL: {only_the_victims_requests_failed(kept, fresh, on_victim)}; full strength again after {took:.2f} s")
    assert took < 5.0, f"{took:.1f} s to full strength"
    assert victim.pid not in healed and len(healed) == 2
    after = restarts(tree)
    assert after[("http_worker", "exited")] - before[("http_worker", "exited")] == 1
    assert f"(pid {victim.pid}) ended with exit code -9" in tree.log()


@pytest.mark.timeout(60)
async def test_a_hung_http_worker_is_killed_and_replaced(tree: LiveServer) -> None:
    await full_strength(tree)
    before = restarts(tree)
    async with load(tree) as kept, load(tree, clients=FRESH_CLIENTS, fresh=True) as fresh:
        victim = http_workers(tree)[-1]
        on_victim = client_ports(victim, port_of(tree))
        os.kill(victim.pid, signal.SIGSTOP)  # alive, but its event loop runs no more
        stopped = time.monotonic()
        try:
            while not gone(victim.pid) and time.monotonic() - stopped < HEARTBEAT_TIMEOUT_S + 10:
                await asyncio.sleep(0.05)
            killed_after = time.monotonic() - stopped
            assert gone(victim.pid), "the hung worker was not killed"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim.pid, signal.SIGKILL)
        healed = await full_strength(tree, not_pids=frozenset({victim.pid}))
        took = time.monotonic() - stopped
        await asyncio.sleep(0.5)
    print(
        f"HTTP worker SIGSTOP: killed after {killed_after:.2f} s (heartbeat timeout {HEARTBEAT_TIMEOUT_S} s); "
        f"{only_the_victims_requests_failed(kept, fresh, on_victim)}; full strength after {took:.2f} s"
    )
    assert victim.pid not in healed and len(healed) == 2
    assert f"(pid {victim.pid}) is hung, no heartbeat for" in tree.log()
    after = restarts(tree)
    assert after[("http_worker", "hung")] - before[("http_worker", "hung")] == 1
    assert after[("http_worker", "exited")] == before[("http_worker", "exited")]


def queued_images(server: LiveServer, model: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "digits_queue_depth_images"]
    return sum(s.value for s in family.samples if s.labels["model"] == model)


@pytest.mark.timeout(60)
async def test_a_killed_inference_process_is_503_retry_after_until_it_is_back(tree: LiveServer) -> None:
    await full_strength(tree)
    before = restarts(tree)
    old = inference_process(tree)
    async with (
        load(tree) as running,
        load(tree, clients=1, files=HEAVY_FILES, model="inception") as heavy,
        httpx.AsyncClient(base_url=tree.url, timeout=10) as probe,
    ):
        deadline = time.monotonic() + 10
        # Until a heavy request's later chunks wait in the inference process.
        while await asyncio.to_thread(queued_images, tree, "inception") == 0:
            assert time.monotonic() < deadline, "the inference process never had a queue"
        old.kill()
        killed = time.monotonic()
        readiness = []
        while time.monotonic() - killed < 15:
            readiness.append((await probe.get("/readyz")).status_code)
            if readiness[-1] == 200 and 503 in readiness:
                break
            await asyncio.sleep(0.05)
        back = time.monotonic() - killed
        await asyncio.sleep(1.0)  # the load goes on against the healed tree
    outage = [when - killed for when, status in running.answers if status == 503]
    print(
        f"inference SIGKILL: {dict(running.statuses)} (heavy: {dict(heavy.statuses)}), {len(running.errors)} transport errors; "
        f"503s for {max(outage, default=0):.2f} s, ready again after {back:.2f} s; 503s: {dict(running.details_503 + heavy.details_503)}"
    )
    for clients in (running, heavy):
        assert not clients.errors, clients.errors  # never a connection error
        assert set(clients.statuses) <= {200, 503}, clients.statuses  # never a 500
        assert clients.without_retry_after == 0
    assert readiness[-1] == 200 and 503 in readiness, readiness
    assert back < 15.0
    assert running.statuses[503] > 0, "no request saw the outage: the test did not test it"
    assert heavy.details_503["the inference process was lost while answering this request"] >= 1  # in flight: a 503
    last_second = [status for when, status in running.answers if when > killed + back + 0.3]
    assert last_second and set(last_second) == {200}, Counter(last_second)
    assert inference_process(tree).pid != old.pid
    after = restarts(tree)
    assert after[("inference", "exited")] - before[("inference", "exited")] == 1
    assert "ended with exit code -9" in tree.log() and "restarted inference as pid" in tree.log()


@pytest.mark.timeout(60)
async def test_more_restarts_than_the_limit_stop_the_tree_with_status_1(tmp_path: Path) -> None:
    server = start_server(tmp_path, DIGITS_WORKERS="2", DIGITS_WARMUP_BATCHES="1", DIGITS_MAX_RESTARTS_PER_MINUTE="1")
    try:
        pids = {p.pid for p in children(server)}
        async with load(server, clients=4) as running:
            first, second = http_workers(server)
            first.kill()  # restart 1 of at most 1 a minute
            await full_strength(server, not_pids=frozenset({first.pid}))
            pids |= {p.pid for p in children(server)}
            second.kill()  # restart 2: the tree gives up
            status = await asyncio.to_thread(server.process.wait, 30)
        print(f"restart limit: exit status {status}; clients saw {dict(running.statuses)} and {len(running.errors)} transport errors")
        assert status == 1
        left = [pid for pid in pids if not gone(pid)]
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            left = [pid for pid in left if not gone(pid)]
        assert not left, f"left running: {left}"
        assert set(running.statuses) <= {200, 503}, running.statuses  # it drains as on SIGTERM: never a 500
        assert "restart limit reached" in server.log()
    finally:
        stop_server(server)
