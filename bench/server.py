"""The real server (``python -m service``) as a subprocess on a free loopback port.

Started as ``tests/conftest.py`` starts it, in a process group of its own; the time from
``Popen`` to the first 200 from /readyz is the start-up time. A sampler thread follows the
resident memory of the whole process tree (the server and every child: HTTP workers, the
inference process, LitServe's workers) for the peak; on Linux the kernel's own high-water
mark (VmHWM) of each process is summed too. ``stop`` ends the whole group: SIGTERM to the
leader, a wait, then SIGKILL to every process left in the group, so no child outlives a run.
"""

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

__all__ = ["ServerError", "ServerProcess", "describe_machine", "free_port", "source_commit"]

ROOT = Path(__file__).resolve().parent.parent


class ServerError(RuntimeError):
    """The server exited or did not become ready."""


def source_commit() -> str:
    """The commit of the code measured, with ``-dirty`` when the working tree differs from it ("unknown" outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty.strip() else "")


def describe_machine(**extra: object) -> dict[str, object]:
    """Where a result was measured, as every results file records it (``extra`` adds fields)."""
    import torch  # the summary tool reads results without torch

    return {
        "cpu_count": os.cpu_count(),
        "commit": source_commit(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **extra,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _high_water_mark(pid: int) -> int:
    """VmHWM of one process in bytes (Linux), 0 where unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _running(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    return False


class ServerProcess:
    """One server run, with the environment overrides of this benchmark phase."""

    def __init__(
        self,
        label: str,
        env: dict[str, str],
        log_dir: Path,
        weights_dir: Path,
        python: str = sys.executable,
        *,
        module_args: tuple[str, ...] = ("service",),
        ready_path: str = "/readyz",
    ) -> None:
        self.label = label
        self.python = python
        self.module_args = module_args  # what runs: python -m <module_args>
        self.ready_path = ready_path
        self.overrides = dict(env)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{label}-{self.port}.log"
        self.environment = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DIGITS_WEIGHTS_DIR": str(weights_dir),
            **self.overrides,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_s: float | None = None
        self.peak_rss = 0
        self.seen: dict[int, float] = {}  # pid -> creation time of every process seen in the tree
        self.rss_ready = 0  # resident bytes right after ready
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._client = httpx.Client(base_url=self.url, timeout=10, trust_env=False)

    # -- life cycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait for the ready path; returns the seconds from process start to ready."""
        with self.log_path.open("wb") as log:
            started = time.perf_counter()
            self.process = subprocess.Popen(
                [self.python, "-m", *self.module_args],
                cwd=ROOT,
                env=self.environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends every child with it
            )
        self._sampler = threading.Thread(target=self._sample, name=f"rss-{self.label}", daemon=True)
        self._sampler.start()
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"server {self.label} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if self._client.get(self.ready_path, timeout=1).status_code == 200:
                    self.ready_s = time.perf_counter() - started
                    self.rss_ready = self.rss()
                    return self.ready_s
            time.sleep(0.01)
        raise ServerError(f"server {self.label} not ready within {timeout_s} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM to the leader and wait for it, then SIGKILL to whatever is left of its group; its exit status."""
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        self._client.close()
        if self.process is None:
            return None
        pgid = self.process.pid  # start_new_session: the leader's pid is the group's id
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)  # children the leader left behind (or the leader itself, if it hung)
        self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # -- observations -----------------------------------------------------------------------

    def tree(self) -> list[psutil.Process]:
        """The server process and every descendant now (HTTP workers, the inference process, LitServe's workers)."""
        if self.process is None:
            return []
        try:
            parent = psutil.Process(self.process.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []

    def rss(self) -> int:
        """Resident bytes of the server process and its children now."""
        total = 0
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the server process and its children."""
        total = 0.0
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def cpu_by_process(self) -> dict[int, tuple[float, float]]:
        """Per process of the tree now: (user + system CPU seconds so far, resident MB)."""
        found = {}
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                found[process.pid] = (times.user + times.system, process.memory_info().rss / 2**20)
        return found

    def _sample(self) -> None:
        while not self._stop_sampling.is_set():
            tree = self.tree()
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault(process.pid, process.create_time())
            self.peak_rss = max(self.peak_rss, self.rss(), sum(_high_water_mark(p.pid) for p in tree))
            self._stop_sampling.wait(0.1)

    def survivors(self, wait_s: float = 3.0) -> list[int]:
        """Pids of processes seen in the tree still running ``wait_s`` after a stop (a reused pid does not count)."""
        found = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.create_time() == created:
                    found.append(process)
        _, alive = psutil.wait_procs(found, timeout=wait_s)  # a killed process may take a moment to be reaped
        return sorted(p.pid for p in alive if _running(p))

    def model_stats(self) -> dict[str, tuple[int, int]]:
        """Per model: (forward passes, images) so far, from GET /model-info."""
        response = self._client.get("/model-info")
        response.raise_for_status()
        return {entry["name"]: (int(entry["batches"]), int(entry["images"])) for entry in response.json()["models"]}

    def model_info(self) -> dict[str, Any]:
        response = self._client.get("/model-info")
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info
