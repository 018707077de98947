"""The service an evaluation reads through: a running one (``--url``) or ``python -m service``
started from a checkout on a free loopback port, and the flags that choose it and its digits."""

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

__all__ = ["ROOT", "add_server_flags", "free_port", "model_weights", "serve", "server_url"]

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every evaluation through HTTP shares: which server, which MNIST split, which model."""
    parser.add_argument("--url", help="a running server; without it `python -m service` is started from --server-dir")
    parser.add_argument("--server-dir", type=Path, default=ROOT, help="the checkout whose `python -m service` is started")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"), help="MNIST in torchvision's layout")
    parser.add_argument("--split", choices=["test", "train"], default="test", help="digits to render; train only for tuning")
    parser.add_argument("--model", default="ensemble")
    parser.add_argument("--seed", type=int, default=0)


@contextlib.contextmanager
def server_url(args: argparse.Namespace, name: str) -> Iterator[str]:
    """``args.url``, or a server started from ``args.server_dir`` for the duration (its log named after ``name``)."""
    if args.url:
        yield args.url.rstrip("/")
        return
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-server-{os.getpid()}.log"
    with serve(args.server_dir.resolve(), log_path) as url:
        yield url


def model_weights(http: httpx.Client) -> dict[str, str | None]:
    """The sha256 of every served model's weights (None for the ensemble), as /model-info reports them."""
    return {m["name"]: m["weights"]["sha256"] for m in http.get("/model-info").json()["models"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(server_dir: Path, log_path: Path) -> Iterator[str]:
    """``python -m service`` from ``server_dir`` on a free loopback port, ready; yields its URL."""
    port = free_port()
    environment = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=server_dir, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path)
        yield url
    finally:
        _stop_group(process)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; its log is {log_path}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s; its log is {log_path}")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it outlives the grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
