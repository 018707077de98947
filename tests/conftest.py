"""Shared fixtures: the real MNIST data, image builders, the app in-process and over TCP."""

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from models.data import Digits
from service.app import create_app
from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real MNIST in torchvision's layout; missing data fails the run instead of skipping."""
    path = Path(os.environ.get("DIGITS_TEST_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
    missing = [f for f in ("t10k-images-idx3-ubyte", "train-images-idx3-ubyte") if not (path / "MNIST" / "raw" / f).is_file()]
    if missing:
        pytest.fail(f"MNIST is missing under {path} ({', '.join(missing)}); set DIGITS_TEST_DATA_DIR", pytrace=False)
    return path


@pytest.fixture(scope="session")
def mnist_test(data_dir: Path) -> Digits:
    from models.data import load_mnist

    return load_mnist(data_dir, train=False, download=False)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_image(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def stroke_digit_one(size: int = 28, *, thickness: int = 3) -> np.ndarray:
    """A synthetic white-on-black vertical bar: every model reads it as a 1."""
    image = np.zeros((size, size), dtype=np.uint8)
    top, bottom = size * 5 // 28, size * 23 // 28
    middle = size // 2
    image[top:bottom, middle - thickness // 2 : middle - thickness // 2 + thickness] = 255
    return image


@contextlib.asynccontextmanager
async def serving(**settings: object) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process through ASGITransport, lifespan run, once it reports ready."""
    app = create_app(Settings(weights_dir=WEIGHTS, warmup_batches=1, **settings))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        for _ in range(600):
            if (await http.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        yield http


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with serving() as http:
        yield http


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(tmp_path: Path, wait_ready: bool = True, **env: str) -> LiveServer:
    """``python -m service`` as a real process on a free loopback port."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    # gRPC off unless a test asks for it: the default port 8001 may be taken on the test machine.
    environment = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "DIGITS_WEIGHTS_DIR": str(WEIGHTS), "DIGITS_GRPC_PORT": "0", **env}
    with log_path.open("wb") as log:
        # A process group of its own: stop_server ends the group, so no child outlives the test.
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    if wait_ready:
        wait_until_ready(server)
    return server


def wait_until_ready(server: LiveServer, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"server not ready within {timeout_s} s:\n{server.log()}")


def stop_server(server: LiveServer) -> int:
    """SIGTERM to the server, then SIGKILL to whatever is left of its process group."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    end_group(server.process.pid)
    return server.process.returncode


def end_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite() -> Iterator[None]:
    """After the whole suite, no process it started is still running."""
    yield
    deadline = time.monotonic() + 10
    while (left := psutil.Process().children(recursive=True)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, "processes outlived the test suite: " + "; ".join(" ".join(p.cmdline()[:4]) for p in left if p.is_running())


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    stop_server(server)
