"""Several HTTP worker processes in front of one inference process (``DIGITS_WORKERS`` > 1).

    python -m service                 the supervisor: binds the port, starts the children,
    |                                 replaces those that die or hang, orders the shutdown
    |-- inference                     the models on their device, a batcher each (torch)
    |-- HTTP worker 1..N              uvicorn on its listening socket: HTTP, multipart,
                                      decoding and encoding (no torch)

Batches form across every worker's requests because they all reach the inference
process's batchers over a Unix socket. A child that dies or stops beating its heartbeat is
replaced (``service.supervisor``): a lost HTTP worker costs only the requests it held, the
others serve on; while the inference process is restarted the workers answer 503 with
Retry-After and reconnect by themselves. On SIGTERM or SIGINT the workers drain first
(readiness off, in-flight requests answered), then the inference process stops. Every
child dies with the supervisor even when it is killed with SIGKILL (Linux's parent-death
signal), so no process outlives the server.
"""

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

from service.config import Settings
from service.heartbeat import Heartbeat, heartbeats
from service.listener import listening_sockets
from service.logs import configure_logging

__all__ = ["serve_workers"]

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STARTUP_FAILURE = 3  # uvicorn's exit status for a server that could not start


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit at once if it already has."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def _run_inference(settings: Settings, socket_path: Path, workers: int, parent_pid: int, heartbeat: Heartbeat) -> None:
    _die_with_parent(parent_pid)
    from service.inference.server import serve_inference  # torch: imported only in this process

    configure_logging(settings)
    asyncio.run(serve_inference(settings, socket_path, workers, heartbeat))


def _run_http_worker(settings: Settings, listener: socket.socket, socket_path: Path, parent_pid: int, heartbeat: Heartbeat) -> None:
    _die_with_parent(parent_pid)
    from service.app import create_app  # the HTTP stack: imported only in the workers
    from service.server import BeatingServer, raise_open_file_limit

    configure_logging(settings)
    raise_open_file_limit()
    server = BeatingServer(create_app(settings, inference_socket=socket_path), settings, heartbeat)
    server.run(sockets=[listener])
    if not server.started or server.grpc_failed:
        sys.exit(STARTUP_FAILURE)


def serve_workers(settings: Settings) -> int:
    """Run the process tree until a stop signal, or until it cannot heal; the exit status."""
    received: list[int] = []
    wake_r, wake_w = os.pipe()

    def on_signal(sig: int, _: object) -> None:
        received.append(sig)
        os.write(wake_w, b"x")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with tempfile.TemporaryDirectory(prefix="digits-") as scratch:
        metrics_dir = Path(scratch, "metrics")
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before any child (or this process) imports prometheus_client
        from service.metrics import SupervisorMetrics
        from service.supervisor import Place, Supervisor

        socket_path = Path(scratch, "inference.sock")
        listeners = listening_sockets(settings.host, settings.port, settings.workers)
        context = multiprocessing.get_context("spawn")  # children start clean: no torch, no inherited threads
        parent = os.getpid()
        beats = heartbeats(context, settings.workers + 1)
        places = [Place("inference", "inference", _run_inference, (settings, socket_path, settings.workers, parent), beats[0])]
        places += [
            Place(f"http-worker-{i}", "http_worker", _run_http_worker, (settings, listener, socket_path, parent), beats[i])
            for i, listener in enumerate(listeners, start=1)
        ]
        supervisor = Supervisor(context, places, settings, SupervisorMetrics())
        if settings.model_control == "explicit":  # reload the weights on disk, as POST /v2/repository/.../load does
            signal.signal(signal.SIGHUP, lambda *_: supervisor.send("inference", signal.SIGHUP))
        log.info("serving on %s:%d with %d HTTP workers and one inference process", settings.host, settings.port, settings.workers)
        status = supervisor.run(wake_r, lambda: bool(received))
        for listener in set(listeners):
            listener.close()
        # First the workers: their requests in flight need the inference process.
        supervisor.stop("http_worker", settings.shutdown_grace_s + 2)
        supervisor.stop("inference", 5)
    if received and received[0] in (signal.SIGTERM, signal.SIGINT) and status == 0:
        signal.signal(received[0], signal.SIG_DFL)
        os.kill(os.getpid(), received[0])  # as uvicorn does: the exit status says which signal stopped it
    return status
