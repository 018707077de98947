"""The inference backend of an HTTP worker process: the inference process, over a Unix socket.

Torch-free. One connection per worker carries every request, tagged with an id, so
answers may come back in any order; readiness is pushed by the inference process and
read locally on every request.
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

from service.errors import Overloaded
from service.inference.backend import BackendStatus
from service.inference.wire import Frame, Kind, pack, probabilities_from, read_frame

__all__ = ["RemoteBackend"]

log = logging.getLogger(__name__)

CONNECTING = BackendStatus(ready=False, draining=False, detail="connecting to the inference process")
GONE = BackendStatus(ready=False, draining=False, detail="the inference process is gone")


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
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, timeout_s: float = 300.0) -> None:
        """Connect once the inference process listens (it loads the models first), then read answers."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(str(self.socket_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        self._writer.write(pack(Kind.HELLO, text=str(os.getpid())))
        self._reader_task = asyncio.create_task(self._read(reader), name="inference-answers")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await read_frame(reader)
                if frame.kind == Kind.STATUS:
                    fields = json.loads(frame.text)
                    self._status = BackendStatus(ready=fields["ready"], draining=fields["draining"], detail=fields["detail"])
                elif (future := self._pending.pop(frame.id, None)) is not None and not future.done():
                    future.set_result(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.error("the connection to the inference process was lost")
        finally:
            self._status = GONE
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(Overloaded("the inference process is gone"))
            self._pending.clear()

    def status(self) -> BackendStatus:
        if self._draining:
            return BackendStatus(ready=False, draining=True, detail="the service is shutting down")
        return self._status

    def begin_draining(self) -> None:
        self._draining = True

    async def _call(self, kind: Kind, text: str = "", data: bytes = b"") -> Frame:
        if self._writer is None or self._status is GONE:
            raise Overloaded(self._status.detail)
        request_id = next(self._ids) & 0xFFFFFFFF
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._writer.write(pack(kind, request_id, text, data))
        try:
            return await future
        finally:
            if self._pending.pop(request_id, None) is not None and not self._writer.is_closing():
                self._writer.write(pack(Kind.CANCEL, request_id))  # the caller gave up: drop its queued work

    async def predict(self, model: str, images: np.ndarray) -> np.ndarray:
        frame = await self._call(Kind.PREDICT, model, np.ascontiguousarray(images, np.float32).tobytes())
        if frame.kind == Kind.RESULT:
            return probabilities_from(frame.data)
        if frame.kind == Kind.OVERLOADED:
            raise Overloaded(frame.text)
        raise InferenceFailed(frame.text)

    async def describe(self) -> dict[str, Any]:
        description: dict[str, Any] = json.loads((await self._call(Kind.DESCRIBE)).text)
        return description

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
