"""uvicorn around the app, turning readiness off the moment a stop signal arrives.

On SIGTERM readiness turns 503 at once (so load balancers stop sending), queued and
in-flight requests are answered, and the process exits within the grace period; as
uvicorn does, the signal is re-raised after the clean shutdown, so the exit status says
"terminated by SIGTERM".

Beside uvicorn, in the same process and event loop, the Open Inference Protocol over gRPC
(``service.grpc_server``, unless ``DIGITS_GRPC_PORT`` is 0): it starts once the app has
started, and on a stop signal it drains first, while the HTTP side answers its requests in
flight, because both need the backend that the app's lifespan stops last.

Connections are accepted by ``service.listener.EagerAcceptor`` rather than uvicorn's
server: every connection waiting, on each turn of the loop.
"""

import asyncio
import contextlib
import logging
import resource
import socket
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from service.config import Settings
from service.connections import ConnectionLimits, guarded_protocol
from service.handler import DigitClassifier
from service.heartbeat import Heartbeat
from service.listener import EagerAcceptor

if TYPE_CHECKING:
    from service.grpc_server import GrpcServer

log = logging.getLogger(__name__)

__all__ = ["BeatingServer", "DrainingServer", "raise_open_file_limit", "serve_http"]


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
            )
        )
        self.app = app
        self.settings = settings
        self.grpc: GrpcServer | None = None
        self.grpc_failed = False
        self.acceptors: list[EagerAcceptor] = []
        self.bound: socket.socket | None = None  # the socket this server bound itself (given none)

    def _protocol(self) -> asyncio.Protocol:
        """What uvicorn's own server would build for each connection."""
        return self.config.http_protocol_class(config=self.config, server_state=self.server_state, app_state=self.lifespan.state)  # type: ignore[call-arg]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:
            self.bound = self.config.bind_socket()  # logs the address, as uvicorn does
            sockets = [self.bound]
        await super().startup(sockets=[])  # the lifespan and the server's state; the accepting is ours
        self.acceptors = [EagerAcceptor(listener, self._protocol) for listener in sockets]
        if self.started and self.settings.grpc_port:
            # Imported only where it is served: its protobuf types share the package "inference"
            # with tritonclient.grpc's, and one process can hold only one of the two.
            from service.grpc_server import GrpcServer

            grpc = GrpcServer(self.app.state.handler, self.settings)
            try:
                await grpc.start()
            except RuntimeError as exc:  # the port is taken: stop as uvicorn does when its own is
                log.error("gRPC cannot serve on %s: %s", grpc.address, exc)
                self.grpc_failed = self.should_exit = True
                return
            self.grpc = grpc
            log.info("Open Inference Protocol over gRPC on %s", grpc.address)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for acceptor in self.acceptors:
            acceptor.close()
        if self.bound is not None:
            self.bound.close()
        if self.grpc is not None:
            started = time.monotonic()
            await self.grpc.stop(self.settings.shutdown_grace_s)
            if self.config.timeout_graceful_shutdown:  # HTTP gets what is left of the one grace period
                left = self.config.timeout_graceful_shutdown - (time.monotonic() - started)
                self.config.timeout_graceful_shutdown = max(1, int(left))
        await super().shutdown(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        handler: DigitClassifier | None = getattr(self.app.state, "handler", None)
        if handler is not None:
            handler.backend.begin_draining()
        super().handle_exit(sig, frame)


class BeatingServer(DrainingServer):
    """Beats on uvicorn's tick (10 a second) while it serves: the event loop is not stuck
    (an HTTP worker of ``service.workers``, which its supervisor watches)."""

    def __init__(self, app: FastAPI, settings: Settings, heartbeat: Heartbeat) -> None:
        super().__init__(app, settings)
        self.heartbeat = heartbeat

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        if not should_exit:  # one that failed to start (its gRPC port taken) never beats
            self.heartbeat.beat()
        return should_exit


def raise_open_file_limit() -> None:
    """Every connection is a file descriptor: up to the hard limit, so that ``max_connections``
    rather than a low soft limit (1024 on many systems) bounds how many a worker holds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # an unlimited hard limit cannot be the soft one on Linux
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_http(app: FastAPI, settings: Settings, sockets: list[socket.socket] | None = None) -> bool:
    """Serve until a stop signal; whether the server started (gRPC too, unless it is off)."""
    raise_open_file_limit()
    server = DrainingServer(app, settings)
    server.run(sockets=sockets)
    return bool(server.started) and not server.grpc_failed
