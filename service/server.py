"""uvicorn around the app, turning readiness off the moment a stop signal arrives.

On SIGTERM readiness turns 503 at once (so load balancers stop sending), queued and
in-flight requests are answered, and the process exits within the grace period; as
uvicorn does, the signal is re-raised after the clean shutdown, so the exit status says
"terminated by SIGTERM".
"""

import contextlib
import logging
import resource
import socket
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.config import Settings
from service.connections import ConnectionLimits, guarded_protocol
from service.handler import DigitClassifier

__all__ = ["DrainingServer", "configure_logging", "serve_http"]


class DrainingServer(uvicorn.Server):
    def __init__(self, app: FastAPI, settings: Settings) -> None:
        super().__init__(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                http=guarded_protocol(ConnectionLimits.of(settings)),
                timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # uvicorn hints int; call_later takes a float
                access_log=False,  # the JSON access log of AccessLogMiddleware replaces it
                timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
                lifespan="on",
                backlog=2048,
            )
        )
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        handler: DigitClassifier | None = getattr(self.app.state, "handler", None)
        if handler is not None:
            handler.backend.begin_draining()
        super().handle_exit(sig, frame)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s", stream=sys.stdout, force=True)


def raise_open_file_limit() -> None:
    """Every connection is a file descriptor: up to the hard limit, so that ``max_connections``
    rather than a low soft limit (1024 on many systems) bounds how many a worker holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # an unlimited hard limit cannot be the soft one on Linux
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_http(app: FastAPI, settings: Settings, sockets: list[socket.socket] | None = None) -> bool:
    """Serve until a stop signal; whether the server started."""
    raise_open_file_limit()
    server = DrainingServer(app, settings)
    server.run(sockets=sockets)
    return bool(server.started)
