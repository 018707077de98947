"""Accepting connections: every waiting one in one turn of the loop, and one socket per worker where the kernel balances."""

import asyncio
import errno
import gc
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest
import uvloop

from bench.tail import accept_queue
from service import listener
from service.listener import EagerAcceptor, listening_sockets

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


class Counting(asyncio.Protocol):
    made: ClassVar[list["Counting"]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.made.append(self)


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0), backlog=128) as sock:
        Counting.made = []
        yield sock


def connect(sock: socket.socket, count: int) -> list[socket.socket]:
    """``count`` clients whose handshakes the kernel has completed: they wait in the accept queue."""
    return [socket.create_connection(sock.getsockname()) for _ in range(count)]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_every_waiting_connection_is_accepted_in_one_turn_of_the_loop(server: socket.socket, loop_name: str) -> None:
    """uvloop's own server takes one connection per turn; under load a turn lasts milliseconds."""
    clients = connect(server, 50)
    port = server.getsockname()[1]
    queue_after_first_turn: list[int | None] = []

    class Recording(EagerAcceptor):
        def _accept(self) -> None:
            super()._accept()
            queue_after_first_turn.append(accept_queue(port))

    async def serve() -> None:
        acceptor = Recording(server, Counting)
        while len(Counting.made) < 50:
            await asyncio.sleep(0.001)
        acceptor.close()

    loop = LOOPS[loop_name]()
    try:
        loop.run_until_complete(asyncio.wait_for(serve(), 10))
    finally:
        loop.close()
        for client in clients:
            client.close()
    assert queue_after_first_turn[0] == 0
    assert len(Counting.made) == 50


def test_a_closed_acceptor_leaves_new_connections_waiting(server: socket.socket) -> None:
    async def serve() -> None:
        acceptor = EagerAcceptor(server, Counting)
        acceptor.close()
        clients.extend(connect(server, 3))
        await asyncio.sleep(0.05)

    clients: list[socket.socket] = []
    asyncio.run(serve())
    try:
        assert Counting.made == [] and accept_queue(server.getsockname()[1]) == 3
    finally:
        for client in clients:
            client.close()


class OutOfDescriptors:
    """A listening socket whose first accept fails as it does when the process has no file descriptor left."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.failed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)

    def accept(self) -> tuple[socket.socket, object]:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()


def test_out_of_file_descriptors_pauses_accepting_and_then_resumes(server: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener, "RETRY_S", 0.2)
    clients = connect(server, 2)
    failing = OutOfDescriptors(server)

    async def serve() -> float:
        loop = asyncio.get_running_loop()
        acceptor = EagerAcceptor(failing, Counting)  # type: ignore[arg-type]
        started = loop.time()
        while len(Counting.made) < 2:
            await asyncio.sleep(0.01)
        acceptor.close()
        return loop.time() - started

    waited = asyncio.run(asyncio.wait_for(serve(), 10))
    for client in clients:
        client.close()
    assert failing.failed and len(Counting.made) == 2
    assert waited >= 0.2


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT balances connections on Linux only")
def test_each_worker_gets_a_socket_of_its_own_and_the_kernel_spreads_connections_over_them() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 2)
    try:
        assert len(set(sockets)) == 2
        port = sockets[0].getsockname()[1]
        assert sockets[1].getsockname()[1] == port and all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        accepted = []
        for sock in sockets:
            sock.setblocking(False)
            count = 0
            while True:
                try:
                    sock.accept()[0].close()
                except BlockingIOError:
                    break
                count += 1
            accepted.append(count)
        for client in clients:
            client.close()
        assert sum(accepted) == 64 and min(accepted) > 0, accepted  # all on one of two: a chance of 2 in 2**64
    finally:
        for sock in sockets:
            sock.close()


def test_one_worker_listens_on_one_socket() -> None:
    (sock,) = listening_sockets("127.0.0.1", 0, 1)
    with sock:
        assert sock.getsockname()[1] > 0


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_connection_that_cannot_be_set_up_is_closed(server: socket.socket, loop_name: str) -> None:
    def broken() -> asyncio.Protocol:
        raise RuntimeError("no protocol")

    (client,) = connect(server, 1)
    client.settimeout(5)

    async def serve() -> None:
        acceptor = EagerAcceptor(server, broken)
        await asyncio.sleep(0.1)
        acceptor.close()

    loop = LOOPS[loop_name]()
    ours = f"raddr={client.getsockname()}"  # the server's end of this client's connection
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            loop.run_until_complete(serve())
        finally:
            loop.close()
        gc.collect()
    with client:
        assert client.recv(1) == b""  # closed by the server
    assert not [w for w in caught if ours in str(w.message)]  # closed on purpose, not by the garbage collector
