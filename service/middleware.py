"""ASGI middleware: body size limit, request ids, access logs and request metrics.

Written as plain ASGI (not BaseHTTPMiddleware) so request bodies stream through
untouched and a chunked upload can be stopped at the limit without reading it all.
"""

import json
import logging
import random
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import InputError
from service.errors import error_body
from service.metrics import Metrics

__all__ = ["AccessLogMiddleware", "BodyLimitMiddleware"]

access_log = logging.getLogger("service.access")


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: at once from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"the request body is larger than the limit of {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, error_body(scope["path"], too_large), [(b"connection", b"close")])
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise InputError(too_large, status_code=413)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send: Send, status: int, payload: dict[str, str], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def new_request_id() -> str:
    """32 random hex digits, as ``uuid4().hex`` but without its system call: an id finds a log
    line, it guards nothing, and each process seeds its generator from the OS on start."""
    return f"{random.getrandbits(128):032x}"


class AccessLogMiddleware:
    """One JSON log line and one metrics observation per request; echoes ``X-Request-ID``.

    It is also where an unexpected exception becomes a JSON 500 that carries the request
    id (header and body) and no stack trace: a 500 is a bug, and the id finds its log.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 128 and given.isprintable() else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        responding = False
        id_header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status, responding
            if message["type"] == "http.response.start":
                status, responding = message["status"], True
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            access_log.exception("unhandled error in request %s", request_id)
            if not responding:
                message = f"internal error; quote request id {request_id} when reporting it"
                await _send_json(send, 500, error_body(scope["path"], message), [id_header])
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.observe_request(template, scope["method"], status, seconds)
            state = scope["state"]
            access_log.info(
                json.dumps(
                    {
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": template,
                        "status": status,
                        "latency_ms": round(1000 * seconds, 2),
                        "model": state.get("model"),
                        "images": state.get("images"),
                    }
                )
            )
