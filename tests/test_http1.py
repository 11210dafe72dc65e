"""Nexus's HTTP/1.1 client for chat requests, against scripted servers on loopback.

Each server here is a few lines over a real socket, so the tests can say exactly what goes
over the wire: how an answer is framed and split, when a connection is closed, and which
connection a request used. The proxy's own tests cover the client through every chat path.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import trio
import trio.testing
import trustme

from nexus_trio.upstream.http1 import KEEPALIVE_SECONDS, Http1Pool

BODY = b'{"model":"m","messages":[]}'
ANSWER = b'{"choices":[]}'
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(ANSWER),
    ANSWER,
)


@dataclass
class Server:
    """A scripted HTTP server: ``answer(stream, request_bytes)`` per request. Each
    connection's end is reported on ``ended``: "client" when the client closed it,
    "server" when the script did."""

    ended: trio.MemoryReceiveChannel[str]
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


Answer = Callable[[trio.SocketStream, bytes], Awaitable[bool]]  # False: close the connection


async def read_request(stream: trio.abc.ReceiveStream) -> bytes | None:
    """One request (head and Content-Length body), or None when the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


async def serve(nursery: trio.Nursery, answer: Answer) -> Server:
    ends, ended = trio.open_memory_channel[str](100)
    server = Server(ended)

    async def connection(stream: trio.SocketStream) -> None:
        server.connections += 1
        by = "server"
        async with stream:
            while (request := await read_request(stream)) is not None:
                server.requests.append(request)
                if not await answer(stream, request):
                    break
            else:
                by = "client"
        ends.send_nowait(by)

    listeners = await nursery.start(trio.serve_tcp, connection, 0)
    server.port = listeners[0].socket.getsockname()[1]
    return server


async def ok(stream: trio.SocketStream, request: bytes) -> bool:
    await stream.send_all(OK)
    return True


def pool() -> Http1Pool:
    return Http1Pool(5.0, ssl.create_default_context())


async def test_a_connection_is_kept_alive_and_reused(nursery: trio.Nursery) -> None:
    server = await serve(nursery, ok)
    client = pool()
    for _ in range(3):
        response = await client.post(server.url, {"content-type": "application/json"}, BODY)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert await response.aread() == ANSWER
        await response.aclose()
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /v1/chat/completions http/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}".encode() in head
    assert b"content-length: %d" % len(BODY) in head
    assert b"accept-encoding: identity" in head
    assert server.requests[0].endswith(BODY)
    await client.aclose()
    with trio.fail_after(5):
        assert await server.ended.receive() == "client"  # the pool's close reached the server


async def test_a_chunked_answer_split_into_single_bytes_arrives_whole(
    nursery: trio.Nursery,
) -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(5)]
    wire = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    wire += b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"

    async def dribble(stream: trio.SocketStream, request: bytes) -> bool:
        for i in range(len(wire)):
            await stream.send_all(wire[i : i + 1])
        return True

    server = await serve(nursery, dribble)
    client = pool()
    response = await client.post(server.url, {}, BODY)
    assert response.headers["content-type"] == "text/event-stream"
    assert b"".join([chunk async for chunk in response.aiter_bytes()]) == b"".join(events)
    again = await client.post(server.url, {}, BODY)  # read to the end: the connection is reused
    await again.aclose()
    assert server.connections == 1
    await client.aclose()


async def test_an_answer_closed_early_closes_its_connection(nursery: trio.Nursery) -> None:
    async def endless(stream: trio.SocketStream, request: bytes) -> bool:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await trio.sleep_forever()
        return True  # pragma: no cover

    server = await serve(nursery, endless)
    client = pool()
    response = await client.post(server.url, {}, BODY)
    assert await response.__anext__() == b"hello"
    await response.aclose()  # a client gone, a failover: the rest is still on the wire
    second = await client.post(server.url, {}, BODY)
    await second.aclose()
    assert server.connections == 2
    await client.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    nursery: trio.Nursery,
) -> None:
    async def once(stream: trio.SocketStream, request: bytes) -> bool:
        await stream.send_all(OK)
        return False  # keep-alive as far as the client knows, then closed

    server = await serve(nursery, once)
    client = pool()
    for _ in range(3):
        response = await client.post(server.url, {}, BODY)
        assert await response.aread() == ANSWER
        with trio.fail_after(5):
            assert await server.ended.receive() == "server"
    assert server.connections == 3
    await client.aclose()


async def test_a_connection_idle_too_long_is_not_reused(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    server = await serve(nursery, ok)
    client = pool()
    first = await client.post(server.url, {}, BODY)
    await first.aread()
    mock_clock.jump(KEEPALIVE_SECONDS + 1)
    second = await client.post(server.url, {}, BODY)
    await second.aread()
    assert server.connections == 2
    await client.aclose()


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()


async def test_failures_are_httpx_transport_errors(nursery: trio.Nursery) -> None:
    async def hang_up(stream: trio.SocketStream, request: bytes) -> bool:
        return False

    async def garbage(stream: trio.SocketStream, request: bytes) -> bool:
        await stream.send_all(b"SMTP ready\r\n\r\n")
        return False

    async def cut(stream: trio.SocketStream, request: bytes) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        return False

    client = pool()
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await client.post((await serve(nursery, hang_up)).url, {}, BODY)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post((await serve(nursery, garbage)).url, {}, BODY)
    response = await client.post((await serve(nursery, cut)).url, {}, BODY)
    with pytest.raises(httpx.RemoteProtocolError):
        await response.aread()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once it is closed
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", {}, BODY)
    await client.aclose()


async def test_https_with_the_servers_name_checked(nursery: trio.Nursery) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)
    served = 0

    async def tls_connection(tcp: trio.SocketStream) -> None:
        nonlocal served
        stream = trio.SSLStream(tcp, server_tls, server_side=True)
        try:
            while (request := await read_request(stream)) is not None:
                assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
                served += 1
                await stream.send_all(OK)
        except trio.BrokenResourceError:
            pass  # a client that did not trust us hangs up mid-handshake
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(trio.serve_tcp, tls_connection, 0)
    port = listeners[0].socket.getsockname()[1]
    client = Http1Pool(5.0, client_tls)
    for _ in range(2):
        response = await client.post(f"https://localhost:{port}/v1/chat/completions", {}, BODY)
        assert await response.aread() == ANSWER
    assert served == 2
    await client.aclose()
    stranger = Http1Pool(5.0, ssl.create_default_context())  # does not trust our authority
    with pytest.raises(httpx.ConnectError):
        await stranger.post(f"https://localhost:{port}/v1/chat/completions", {}, BODY)
    await stranger.aclose()
