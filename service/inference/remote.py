"""The inference backend of an HTTP worker process: the inference process, over a Unix socket.

Torch-free. One connection per worker carries every request, tagged with an id, so
answers may come back in any order; readiness is pushed by the inference process and
read locally on every request.

The connection is kept for the worker's whole life: when it is lost (the inference
process died and the supervisor is restarting it) the requests waiting on it fail as
``Overloaded`` (503 + Retry-After), readiness is off, and the worker reconnects by itself
once the socket accepts again; the new process pushes its readiness as it warms up.
"""

import asyncio
import contextlib
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from service import tracing
from service.errors import LoadRefused, ModelUnloaded, Overloaded
from service.inference.backend import BackendStatus
from service.inference.wire import Frame, Kind, pack, probabilities_from, read_frame

__all__ = ["InferenceFailed", "RemoteBackend"]

log = logging.getLogger(__name__)

CONNECTING = BackendStatus(ready=False, draining=False, detail="connecting to the inference process")
RECONNECTING = BackendStatus(ready=False, draining=False, detail="the inference process is restarting")
RETRY_FIRST_S = 0.05  # between attempts to connect, doubling up to RETRY_MAX_S
RETRY_MAX_S = 0.5
FIRST_CONTACT_TIMEOUT_S = 5.0  # an inference process that accepts but never pushes its status is hung


class InferenceFailed(RuntimeError):
    """The forward pass that held this request raised (a bug, answered as a 500)."""


class RemoteBackend:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._status = CONNECTING
        self._draining = False
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()  # once, for the first connection
        self._first_contact = asyncio.Event()  # the first attempt settled: a status came, or nobody listened

    async def connect(self, timeout_s: float | None = None) -> None:
        """Until connected, at most ``timeout_s`` (the inference process listens once its models
        are loaded); from the first call on, a task keeps the connection until ``close``."""
        if self._task is None:
            self._task = asyncio.create_task(self._stay_connected(), name="inference-connection")
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    async def _stay_connected(self) -> None:
        """Connect, read answers, and reconnect whenever the connection is lost."""
        retry_s = RETRY_FIRST_S
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError:  # not listening: still loading its models, or being restarted
                self._first_contact.set()
                await asyncio.sleep(retry_s)
                retry_s = min(RETRY_MAX_S, 2 * retry_s)
                continue
            retry_s = RETRY_FIRST_S
            writer.write(pack(Kind.HELLO, text=str(os.getpid())))
            self._writer = writer
            self._connected.set()
            try:
                await self._read(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                log.error("HTTP worker %d lost its connection to the inference process: 503 until it is back", os.getpid())
            except Exception:  # a frame this side cannot read: a bug, but the worker must go on
                log.exception("unreadable frame from the inference process: reconnecting")
            finally:
                self._lost(writer)

    async def wait_first_contact(self, timeout_s: float = FIRST_CONTACT_TIMEOUT_S) -> None:
        """Until the first connection attempt has settled, at most ``timeout_s``.

        A worker that starts beside an inference process that serves (a replacement) then
        takes requests only once it can answer them; one that starts before it (the tree's
        start, or during its restart) goes on at once and answers 503 until it is connected.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._first_contact.wait()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            frame = await read_frame(reader)
            if frame.kind == Kind.STATUS:
                fields = json.loads(frame.text)
                self._status = BackendStatus(fields["ready"], fields["draining"], fields["detail"], fields["weights_generation"])
                self._first_contact.set()
            elif (future := self._pending.pop(frame.id, None)) is not None and not future.done():
                future.set_result(frame)

    def _lost(self, writer: asyncio.StreamWriter) -> None:
        """The connection is gone: readiness off, and every request waiting on it is a 503."""
        self._status = RECONNECTING
        self._writer = None
        writer.close()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(Overloaded("the inference process was lost while answering this request"))

    def status(self) -> BackendStatus:
        if self._draining:
            return BackendStatus(ready=False, draining=True, detail="the service is shutting down")
        return self._status

    def begin_draining(self) -> None:
        self._draining = True

    async def _call(self, kind: Kind, text: str = "", data: bytes = b"") -> Frame:
        writer = self._writer
        if writer is None:
            raise Overloaded(self._status.detail)
        request_id = next(self._ids) & 0xFFFFFFFF
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        writer.write(pack(kind, request_id, text, data))
        try:
            return await future
        finally:
            if self._pending.pop(request_id, None) is not None and not writer.is_closing():
                writer.write(pack(Kind.CANCEL, request_id))  # the caller gave up: drop its queued work

    async def predict(self, model: str, images: np.ndarray) -> np.ndarray:
        traceparent = tracing.traceparent()
        text = f"{model} {traceparent}" if traceparent else model
        frame = await self._call(Kind.PREDICT, text, np.ascontiguousarray(images, np.float32).tobytes())
        if frame.kind == Kind.RESULT:
            return probabilities_from(frame.data)
        if frame.kind == Kind.OVERLOADED:
            raise Overloaded(frame.text)
        if frame.kind == Kind.UNLOADED:
            raise ModelUnloaded(frame.text)
        raise InferenceFailed(frame.text)

    async def _repository(self, kind: Kind, model: str = "") -> Any:
        frame = await self._call(kind, model)
        if frame.kind == Kind.REFUSED:
            raise LoadRefused(frame.text)
        return json.loads(frame.text)

    async def load(self, model: str) -> list[str]:
        swapped: list[str] = await self._repository(Kind.LOAD, model)
        return swapped

    async def unload(self, model: str) -> None:
        await self._repository(Kind.UNLOAD, model)

    async def repository_index(self) -> list[dict[str, Any]]:
        index: list[dict[str, Any]] = await self._repository(Kind.INDEX)
        return index

    async def describe(self) -> dict[str, Any]:
        description: dict[str, Any] = json.loads((await self._call(Kind.DESCRIBE)).text)
        return description

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
