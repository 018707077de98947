"""The inference process: one engine per device, serving every HTTP worker over a Unix socket.

Batches form across all workers' requests because every request ends in the same
engine's batchers. Readiness, pushed to each worker on every change, is true once the
models are warmed and every expected worker has connected: then a ready answer from any
worker means that every worker can serve. It stays true when a worker is lost later: the
others serve on while the supervisor replaces it, and the replacement takes requests only
once connected. The event loop beats the supervisor's heartbeat from the moment the models
are loaded; a loop that stops beating is taken for hung.
"""

import asyncio
import contextlib
import functools
import gc
import json
import logging
import signal
from pathlib import Path

from service import tracing
from service.config import Settings
from service.errors import LoadRefused, ModelUnloaded, Overloaded
from service.heartbeat import Heartbeat, keep_beating
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
        self.assembled = False  # every expected worker has been connected at once

    def status_text(self) -> str:
        status = self.engine.status()
        missing = self.expected_workers - len(self.workers)
        ready = status.ready and self.assembled
        detail = status.detail if not status.ready or ready else f"waiting for {missing} HTTP worker(s) to connect"
        return json.dumps({"ready": ready, "draining": status.draining, "detail": detail, "weights_generation": status.weights_generation})

    def broadcast_status(self) -> None:
        frame = pack(Kind.STATUS, text=self.status_text())
        for writer in self.workers:
            if not writer.is_closing():
                writer.write(frame)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP worker's connection: requests in, answers out, in any order."""
        tasks: dict[int, asyncio.Task[None]] = {}
        self.workers.add(writer)
        self.assembled = self.assembled or len(self.workers) >= self.expected_workers
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
                elif frame.kind in (Kind.LOAD, Kind.UNLOAD, Kind.INDEX):
                    task = asyncio.create_task(self._repository(writer, frame))
                    tasks[frame.id] = task
                    task.add_done_callback(functools.partial(_forget, tasks, frame.id))
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
        model, _, traceparent = frame.text.partition(" ")
        parent = tracing.context_from(traceparent)
        try:
            with tracing.attached(parent):  # the batcher takes the request's context from here
                probabilities = await self.engine.predict(model, images_from(frame.data))
            reply = pack(Kind.RESULT, frame.id, data=probabilities.tobytes())
        except Overloaded as exc:
            reply = pack(Kind.OVERLOADED, frame.id, exc.message)
        except ModelUnloaded as exc:
            reply = pack(Kind.UNLOADED, frame.id, exc.model)
        except Exception as exc:  # the forward pass failed: this request's 500, logged by the batcher
            reply = pack(Kind.FAILED, frame.id, f"{type(exc).__name__}: {exc}")
        if not writer.is_closing():
            writer.write(reply)

    async def _repository(self, writer: asyncio.StreamWriter, frame: Frame) -> None:
        """A model repository request; a load that swapped weights is announced to every worker first."""
        try:
            if frame.kind == Kind.LOAD:
                answer: object = await self.engine.load(frame.text)
                self.broadcast_status()  # before the reply: the worker that asked sees the new generation with it
            elif frame.kind == Kind.UNLOAD:
                await self.engine.unload(frame.text)
                answer = None
            else:
                answer = await self.engine.repository_index()
            reply = pack(Kind.REPLY, frame.id, json.dumps(answer))
        except LoadRefused as exc:
            reply = pack(Kind.REFUSED, frame.id, str(exc))
        if not writer.is_closing():
            writer.write(reply)


async def serve_inference(settings: Settings, socket_path: Path, expected_workers: int, heartbeat: Heartbeat) -> None:
    """Load, listen, warm up, then serve until SIGTERM; SIGINT is the parent's to handle."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # Ctrl-C reaches the whole group; the parent orders the shutdown
    tracing.configure("inference")
    engine = Engine(settings, Metrics())
    await engine.start()
    beating = asyncio.create_task(keep_beating(heartbeat))  # loading blocked this loop; from here on it beats
    server = InferenceServer(engine, expected_workers)
    engine.reload_on_sighup(then=server.broadcast_status)  # the supervisor forwards its SIGHUP here
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
    tracing.shutdown()
    beating.cancel()
