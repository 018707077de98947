"""The listening sockets, and the accepting of every connection waiting on them.

uvloop's server (libuv 1.45 and later) accepts one connection per turn of the event loop,
and under overload one turn runs every request that is ready, for milliseconds: a burst of
new connections to a busy server waits in the kernel's accept queue, outside the app's
clock, for seconds. The stdlib loop accepts up to its backlog each time the socket is
readable; ``EagerAcceptor`` does that on either loop. With two workers, a c512 run after a
c64 one read a p99 latency of 27-28x its p50 with uvloop's accepting and 1.5-1.8x with this
one (bench/README.md, "The tail at overload"; ``python -m bench.tail`` samples the queue).
"""

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import sys
from collections.abc import Callable

__all__ = ["EagerAcceptor", "listening_sockets"]

log = logging.getLogger(__name__)

BACKLOG = 2048  # connections the kernel queues per socket; a burst of clients beyond it is refused
RETRY_S = 1.0  # out of file descriptors: wait this long before accepting again (as asyncio does)


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """The port's listening sockets for ``count`` HTTP workers, one each where the kernel balances them.

    Workers that share one socket race for each burst of connections, and the one whose
    loop wakes first accepts all of them. With SO_REUSEPORT (Linux) each worker has a socket
    of its own and the kernel spreads new connections over them by their addresses. The
    supervisor keeps every socket open and a worker's replacement listens on its socket, so
    the connections queued there wait for it rather than being refused. Elsewhere the
    workers share one socket.
    """
    if count == 1 or sys.platform != "linux":
        return [socket.create_server((host, port), backlog=BACKLOG)] * count
    first = socket.create_server((host, port), backlog=BACKLOG, reuse_port=True)
    port = first.getsockname()[1]  # port 0: the one the kernel chose, for every socket
    return [first] + [socket.create_server((host, port), backlog=BACKLOG, reuse_port=True) for _ in range(count - 1)]


class EagerAcceptor:
    """Accepts every waiting connection (up to ``BACKLOG``) whenever ``listener`` is readable,
    each served by a protocol from ``protocol``, until ``close``."""

    def __init__(self, listener: socket.socket, protocol: Callable[[], asyncio.Protocol]) -> None:
        self.listener = listener
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self._connecting: set[asyncio.Task[object]] = set()
        self.closed = False
        listener.setblocking(False)
        listener.listen(BACKLOG)
        self.loop.add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(BACKLOG):
            try:
                connection, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while it waited: the next one
                continue
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.error("cannot accept connections for %.0f s: %s", RETRY_S, exc)
                self.loop.remove_reader(self.listener.fileno())
                self.loop.call_later(RETRY_S, self._resume)
                return
            connection.setblocking(False)
            # Nagle's algorithm would hold a response's body until its headers are acknowledged.
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self.loop.connect_accepted_socket(self.protocol, connection))
            self._connecting.add(task)
            task.add_done_callback(functools.partial(self._connected, connection))

    def _connected(self, connection: socket.socket, task: asyncio.Task[object]) -> None:
        self._connecting.discard(task)
        if task.cancelled() or task.exception() is not None:
            log.warning("a connection could not be set up: %s", "cancelled" if task.cancelled() else task.exception())
            connection.close()

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.listener.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; the connections already accepted are the server's to finish."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(ValueError, OSError):  # a socket already closed has no reader left
                self.loop.remove_reader(self.listener.fileno())
