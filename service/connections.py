"""Deadlines and a cap on the client's side of a connection, so stalled clients cannot hold a worker.

uvicorn closes a connection that is idle *between* requests (``timeout_keep_alive``) but waits
forever for a request that has begun: a client that sends half a header, or a header and then
a body that never ends, holds a file descriptor and memory for as long as it likes (a
slowloris needs nothing more). This protocol is uvicorn's httptools protocol with three rules:

- a request's headers must be complete within ``header_timeout_s`` of the connection opening
  or of the request's first byte; trickling bytes does not extend it;
- while a body is being read, ``body_timeout_s`` may pass between two chunks at most (not
  counted while the server itself has paused reading because the app has not caught up);
- a request that arrives while the worker holds more than ``max_connections`` connections
  is answered 503 with Retry-After and its connection closed. Its body (up to
  ``max_request_bytes``) is read and dropped first: closing a socket with unread bytes in
  it sends a reset, and a client that is still sending loses the 503 to it (an httpx
  upload to a capped worker got ``ReadError`` 9 times in 10 when answered at once).

A connection that misses a deadline is answered 408 (where no response has begun) and closed.

And one courtesy to the server: a request whose client closes the connection before its
answer is complete has its ``Departure`` called (``departure_of(scope)``), so the work still
queued for it is dropped instead of computed for nobody: at c512, right after 512 clients
had left, the server's own p99 was 2.0-2.2 s while it served their abandoned requests first,
and 0.4-1.0 s once they were dropped (``python -m bench.tail``; bench/README.md).
"""

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import Settings

__all__ = ["ConnectionLimits", "Departure", "departure_of", "guarded_protocol"]

DEPARTURE = "digits.departure"  # the key of a request's Departure in its ASGI scope's extensions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    max_request_bytes: int
    retry_after_s: int = 1

    @classmethod
    def of(cls, settings: Settings) -> "ConnectionLimits":
        return cls(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections, settings.max_request_bytes)


def _timed_out(detail: str) -> bytes:
    """A whole 408 response, written straight to the transport: no request reached the app."""
    body = json.dumps({"detail": detail}).encode()
    head = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    return head + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def _over_capacity(limits: ConnectionLimits) -> ASGIApp:
    body = json.dumps({"detail": f"this worker holds more than {limits.max_connections} connections; retry shortly"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(limits.retry_after_s).encode()),
        (b"connection", b"close"),
    ]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        dropped, more = 0, True
        while more and dropped <= limits.max_request_bytes:
            message = await receive()
            dropped += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class Departure:
    """What to do if a request's client leaves before its answer is complete: callbacks, each run once."""

    def __init__(self) -> None:
        self.happened = False
        self._callbacks: list[Callable[[], None]] = []

    def watch(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def forget(self, callback: Callable[[], None]) -> None:
        self._callbacks.remove(callback)

    def __call__(self) -> None:
        self.happened = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def departure_of(scope: Scope) -> Departure | None:
    """The request's Departure, when it came through the guarded protocol (not, say, an in-process test client)."""
    found = scope.get("extensions", {}).get(DEPARTURE)
    return found if isinstance(found, Departure) else None


class GuardedProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._departure: Departure | None = None

    # The deadlines ------------------------------------------------------------------------

    def _arm(self, timeout_s: float, expired: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(timeout_s, self._expire, expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, expired: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if expired == "body" and self.flow.read_paused:  # the app is behind, not the client
            self._arm(self.limits.body_timeout_s, "body")
            return
        answered = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's own response, if any, is dropped
            self.cycle.message_event.set()
        if not answered:
            limit = self.limits.header_timeout_s if expired == "headers" else self.limits.body_timeout_s
            waited = f"within {limit:g} s" if expired == "headers" else f"for {limit:g} s between chunks"
            self.transport.write(_timed_out(f"the request {expired} did not arrive {waited}"))
        log.info("closed a connection from %s: its request %s stalled", self.client, expired)
        self.transport.close()

    # uvicorn's protocol, with the deadlines set and cleared -------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        unanswered = self.cycle is not None and not self.cycle.response_complete
        super().connection_lost(exc)
        if unanswered and self._departure is not None:
            self._departure()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.limits.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        self._disarm()
        self._departure = Departure()
        cast(dict[str, Any], self.scope).setdefault("extensions", {})[DEPARTURE] = self._departure
        if len(self.connections) > self.limits.max_connections:
            app, self.app = self.app, _over_capacity(self.limits)  # uvicorn starts the request with self.app
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._arm(self.limits.body_timeout_s, "body")

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._deadline is not None:
            self._arm(self.limits.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, which builds it with uvicorn's arguments only."""
    return type("GuardedHttpToolsProtocol", (GuardedProtocol,), {"limits": limits})
