"""The inference process: one engine per device, serving every HTTP worker over a Unix socket.

Batches form across all workers' requests because every request ends in the same
engine's batchers. Readiness, pushed to each worker on every change, is true only when
the models are warmed and every expected worker has connected.
"""

import asyncio
import contextlib
import functools
import gc
import json
import logging
import signal
from pathlib import Path

from service.config import Settings
from service.errors import Overloaded
from service.inference.engine import Engine
from service.inference.wire import Frame, Kind, images_from, pack, read_frame
from service.metrics import Metrics

__all__ = ["InferenceServer", "serve_inference"]

log = logging.getLogger(__name__)


def _forget(tasks: dict[int, asyncio.Task[None]], request_id: int, _: object) -> None:
    tasks.pop(request_id, None)


class InferenceServer:
    def __init__(self, engine: Engine, expected_workers: int) -> None:
        self.engine = engine
        self.expected_workers = expected_workers
        self.workers: set[asyncio.StreamWriter] = set()

    def status_text(self) -> str:
        status = self.engine.status()
        missing = self.expected_workers - len(self.workers)
        ready = status.ready and missing <= 0
        detail = status.detail if not status.ready or ready else f"waiting for {missing} HTTP worker(s) to connect"
        return json.dumps({"ready": ready, "draining": status.draining, "detail": detail})

    def broadcast_status(self) -> None:
        frame = pack(Kind.STATUS, text=self.status_text())
        for writer in self.workers:
            if not writer.is_closing():
                writer.write(frame)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP worker's connection: requests in, answers out, in any order."""
        tasks: dict[int, asyncio.Task[None]] = {}
        self.workers.add(writer)
        self.broadcast_status()
        try:
            while True:
                frame = await read_frame(reader)
                if frame.kind == Kind.PREDICT:
                    task = asyncio.create_task(self._answer(writer, frame))
                    tasks[frame.id] = task
                    task.add_done_callback(functools.partial(_forget, tasks, frame.id))
                elif frame.kind == Kind.CANCEL and frame.id in tasks:
                    tasks[frame.id].cancel()
                elif frame.kind == Kind.DESCRIBE:
                    writer.write(pack(Kind.DESCRIPTION, frame.id, json.dumps(await self.engine.describe())))
                elif frame.kind == Kind.HELLO:
                    log.info("HTTP worker %s connected (%d of %d)", frame.text, len(self.workers), self.expected_workers)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker has gone
        finally:
            for task in tasks.values():
                task.cancel()
            self.workers.discard(writer)
            writer.close()
            self.broadcast_status()

    async def _answer(self, writer: asyncio.StreamWriter, frame: Frame) -> None:
        try:
            probabilities = await self.engine.predict(frame.text, images_from(frame.data))
            reply = pack(Kind.RESULT, frame.id, data=probabilities.tobytes())
        except Overloaded as exc:
            reply = pack(Kind.OVERLOADED, frame.id, exc.message)
        except Exception as exc:  # the forward pass failed: this request's 500, logged by the batcher
            reply = pack(Kind.FAILED, frame.id, f"{type(exc).__name__}: {exc}")
        if not writer.is_closing():
            writer.write(reply)


async def serve_inference(settings: Settings, socket_path: Path, expected_workers: int) -> None:
    """Load, listen, warm up, then serve until SIGTERM; SIGINT is the parent's to handle."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # Ctrl-C reaches the whole group; the parent orders the shutdown
    engine = Engine(settings, Metrics())
    await engine.start()
    server = InferenceServer(engine, expected_workers)
    listener = await asyncio.start_unix_server(server.handle, path=str(socket_path))
    gc.freeze()  # startup objects live as long as the process: keep them out of the cyclic GC's scans
    warm_up = asyncio.create_task(engine.warm_up())
    warm_up.add_done_callback(lambda _: server.broadcast_status())
    await stop.wait()
    engine.begin_draining()
    server.broadcast_status()
    warm_up.cancel()
    listener.close()
    for writer in list(server.workers):
        writer.close()
    with contextlib.suppress(Exception):
        await listener.wait_closed()
    await engine.stop()
