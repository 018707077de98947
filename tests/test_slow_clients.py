"""Stalled and idle clients are cut off by the server, while normal clients are answered.

A real server over TCP with short deadlines; the stalled clients are raw sockets that send
part of a request and then nothing (or a byte at a time), as a slowloris does.
"""

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, png_bytes, start_server, stop_server, stroke_digit_one

pytestmark = pytest.mark.slow

ONE = png_bytes(stroke_digit_one())
DEADLINE_S = 2
STALLED = 1000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(
        tmp_path_factory.mktemp("slow-clients"),
        DIGITS_HEADER_TIMEOUT_S=str(DEADLINE_S),
        DIGITS_BODY_TIMEOUT_S=str(DEADLINE_S),
        DIGITS_KEEP_ALIVE_S="1",
    )
    yield live
    stop_server(live)


def address(server: LiveServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def multipart(data: bytes) -> tuple[bytes, bytes]:
    """A /predict body with one file, and its headers up to the blank line."""
    boundary = b"b0undary"
    body = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="one.png"\r\n'
    body += b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n"
    head = b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=" + boundary
    head += b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    return head, body


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout_s)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response else 0


def detail_of(response: bytes) -> str:
    return str(json.loads(response.split(b"\r\n\r\n", 1)[1])["detail"])


async def test_stalled_connections_are_closed_while_normal_requests_are_answered(server: LiveServer) -> None:
    host, port = address(server)
    head, body = multipart(ONE)
    stalls = {
        "nothing": b"",
        "half a header": head[: len(head) // 2],
        "a body that never ends": head + body[:100],
    }
    kinds = [kind for kind in stalls for _ in range(STALLED // len(stalls))]
    connections = [await asyncio.open_connection(host, port) for _ in kinds]
    opened = time.monotonic()
    for (_, writer), kind in zip(connections, kinds, strict=True):
        writer.write(stalls[kind])
    await asyncio.gather(*(writer.drain() for _, writer in connections))

    async with httpx.AsyncClient(base_url=server.url, timeout=30, trust_env=False) as http:
        answers = await asyncio.gather(*(http.post("/predict", files=[("files", ("one.png", ONE, "image/png"))]) for _ in range(20)))
    assert [answer.status_code for answer in answers] == [200] * 20

    responses = await asyncio.gather(*(read_until_closed(reader, 60) for reader, _ in connections))
    closed_after = time.monotonic() - opened
    for _, writer in connections:
        writer.close()
    by_kind: dict[str, set[int]] = {}
    for kind, response in zip(kinds, responses, strict=True):
        by_kind.setdefault(kind, set()).add(status_of(response))
    assert by_kind == {kind: {408} for kind in stalls}, by_kind
    assert "headers did not arrive within 2 s" in detail_of(responses[kinds.index("half a header")])
    assert "body did not arrive for 2 s between chunks" in detail_of(responses[kinds.index("a body that never ends")])
    assert closed_after < 60, f"{STALLED} stalled connections took {closed_after:.1f} s to be closed"


async def test_trickling_a_header_does_not_extend_its_deadline(server: LiveServer) -> None:
    reader, writer = await asyncio.open_connection(*address(server))
    head, _ = multipart(ONE)
    started = time.monotonic()
    closed = asyncio.create_task(read_until_closed(reader, 30))
    for byte in head[:-4]:
        if closed.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.1)
    response = await closed
    writer.close()
    assert status_of(response) == 408
    assert time.monotonic() - started < 3 * DEADLINE_S, "each byte restarted the header deadline"


async def test_a_slow_body_that_keeps_coming_is_read_to_the_end(server: LiveServer) -> None:
    reader, writer = await asyncio.open_connection(*address(server))
    head, body = multipart(ONE)
    writer.write(head)
    pieces = np.array_split(np.frombuffer(body, np.uint8), 4)
    for piece in pieces:  # 4 chunks, each within the per-chunk deadline, the whole longer than it
        await asyncio.sleep(DEADLINE_S * 0.6)
        writer.write(piece.tobytes())
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    writer.close()
    assert status_of(response) == 200, response[:200]


async def test_an_idle_keep_alive_connection_is_closed(server: LiveServer) -> None:
    reader, writer = await asyncio.open_connection(*address(server))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    assert status_of(head) == 200
    assert await asyncio.wait_for(reader.read(), 10) == b"", "the idle connection was not closed"
    writer.close()


UPLOADS = [ONE] * 3 + [ONE + bytes(2_000_000)] * 3


def test_past_the_connection_cap_a_request_is_answered_503_with_retry_after(tmp_path: Path) -> None:
    live = start_server(tmp_path, DIGITS_MAX_CONNECTIONS="4")

    async def scenario() -> list[httpx.Response]:
        host, port = address(live)
        held = [await asyncio.open_connection(host, port) for _ in range(4)]
        try:
            async with httpx.AsyncClient(base_url=live.url, timeout=10, trust_env=False) as http:
                # A body still on its way when the 503 is sent: answered, not lost to a reset.
                return [await http.post("/predict", files=[("files", ("one.png", upload, "image/png"))]) for upload in UPLOADS]
        finally:
            for _, writer in held:
                writer.close()

    try:
        for response in asyncio.run(scenario()):
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert "more than 4 connections" in response.json()["detail"]
        with httpx.Client(base_url=live.url, timeout=10, trust_env=False) as http:  # the held ones gone, it serves again
            deadline = time.monotonic() + 10
            while (status := http.get("/healthz").status_code) != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert status == 200
    finally:
        stop_server(live)
