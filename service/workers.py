"""Several HTTP worker processes in front of one inference process (``DIGITS_WORKERS`` > 1).

    python -m service                 the supervisor: binds the port, starts the children,
    |                                 orders the shutdown, takes the tree down
    |-- inference                     the models on their device, a batcher each (torch)
    |-- HTTP worker 1..N              uvicorn on the one listening socket: HTTP, multipart,
                                      decoding and encoding (no torch)

Batches form across every worker's requests because they all reach the inference
process's batchers over a Unix socket. On SIGTERM or SIGINT the workers drain first
(readiness off, in-flight requests answered), then the inference process stops. A child
that dies unexpectedly takes the whole tree down (the orchestrator restarts it), and every
child dies with the supervisor even when it is killed with SIGKILL (Linux's parent-death
signal), so no process outlives the server.
"""

import asyncio
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path

from service.config import Settings

__all__ = ["serve_workers"]

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit at once if it already has."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def _run_inference(settings: Settings, socket_path: Path, workers: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    from service.inference.server import serve_inference  # torch: imported only in this process
    from service.server import configure_logging

    configure_logging(settings)
    asyncio.run(serve_inference(settings, socket_path, workers))


def _run_http_worker(settings: Settings, listener: socket.socket, socket_path: Path, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    from service.app import create_app
    from service.server import configure_logging, serve_http

    configure_logging(settings)
    serve_http(create_app(settings, inference_socket=socket_path), settings, sockets=[listener])


def _stop(processes: Sequence[BaseProcess], grace_s: float) -> None:
    """SIGTERM to all at once, SIGKILL to any still running after ``grace_s``."""
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("%s did not stop within %.0f s: killed", process.name, grace_s)
            process.kill()
            process.join()


def serve_workers(settings: Settings) -> int:
    """Run the process tree until a stop signal or a child's death; the exit status."""
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
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # before any child imports prometheus_client
        socket_path = Path(scratch, "inference.sock")
        listener = socket.create_server((settings.host, settings.port), backlog=2048)
        context = multiprocessing.get_context("spawn")  # children start clean: no torch, no inherited threads
        parent = os.getpid()
        inference = context.Process(target=_run_inference, args=(settings, socket_path, settings.workers, parent), name="inference")
        inference.start()
        workers = [
            context.Process(target=_run_http_worker, args=(settings, listener, socket_path, parent), name=f"http-worker-{i}")
            for i in range(1, settings.workers + 1)
        ]
        for worker in workers:
            worker.start()
        log.info("serving on %s:%d with %d HTTP workers and one inference process", settings.host, settings.port, settings.workers)
        children = [inference, *workers]
        status = 0
        while not received:
            ended = multiprocessing.connection.wait([wake_r, *(child.sentinel for child in children)])
            died = [child for child in children if child.sentinel in ended]
            if died:
                died[0].join(5)  # its sentinel fires when it exits, a moment before it can be reaped
                log.error("%s exited with %s: stopping every process", died[0].name, died[0].exitcode)
                status = 1
                break
        listener.close()
        _stop(workers, settings.shutdown_grace_s + 2)  # first the workers: their requests in flight need the inference process
        _stop([inference], 5)
    if received and received[0] in (signal.SIGTERM, signal.SIGINT) and status == 0:
        signal.signal(received[0], signal.SIG_DFL)
        os.kill(os.getpid(), received[0])  # as uvicorn does: the exit status says which signal stopped it
    return status
