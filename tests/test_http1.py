"""Nexus's HTTP/1.1 client for chat requests, against scripted servers.

Each server here is a few lines over a real socket, so the tests can say exactly what goes
over the wire: how an answer is framed and split, when a connection is closed, and which
connection a request used. The pool reaches them through its ``connect`` seam: each
connection is one end of a Unix socket pair, the script runs on the other. Nothing waits on
a network (a pair's bytes are in the other end's queue by the time a send returns), so the
tests run on trio's autojump clock and every deadline in them (the pool's keep-alive and
connect timeout, the guards against a hang) is virtual, instant and exact.
Two tests keep real loopback TCP, on the real clock, for the default ``connect``; the
proxy's own tests cover the client through every chat path.
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
CONNECT_TIMEOUT = 5.0

Answer = Callable[[trio.abc.Stream, bytes], Awaitable[bool]]  # False: close the connection


@dataclass
class Server:
    """A scripted HTTP server: ``answer(stream, request_bytes)`` per request. Each
    connection's end is reported on ``ended``: "client" when the client closed it,
    "server" when the script did. `connect` is the pool's way in."""

    nursery: trio.Nursery
    answer: Answer
    host: str = "backend.test"
    port: int = 8000
    tls: ssl.SSLContext | None = None
    connections: int = 0
    dialled: list[tuple[str, int]] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ends, self.ended = trio.open_memory_channel[str](100)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}/v1/chat/completions"

    async def connect(self, host: str, port: int) -> trio.SocketStream:
        """A new connection: the pool gets one end, this server's script the other."""
        self.dialled.append((host, port))
        ours, theirs = trio.socket.socketpair()
        self.nursery.start_soon(self._serve, trio.SocketStream(ours))
        return trio.SocketStream(theirs)

    async def _serve(self, tcp: trio.SocketStream) -> None:
        self.connections += 1
        stream: trio.abc.Stream = tcp
        if self.tls:
            stream = trio.SSLStream(tcp, self.tls, server_side=True)
        by = "server"
        try:
            while (request := await read_request(stream)) is not None:
                self.requests.append(request)
                if not await self.answer(stream, request):
                    break
            else:
                by = "client"
        except trio.BrokenResourceError:
            by = "broken"  # a TLS client that did not trust us hangs up mid-handshake
        finally:
            await trio.aclose_forcefully(stream)
        self._ends.send_nowait(by)


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


async def ok(stream: trio.abc.Stream, request: bytes) -> bool:
    await stream.send_all(OK)
    return True


def pool(server: Server, tls: ssl.SSLContext | None = None) -> Http1Pool:
    return Http1Pool(CONNECT_TIMEOUT, tls or ssl.create_default_context(), connect=server.connect)


async def test_a_connection_is_kept_alive_and_reused(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(nursery, ok)
    client = pool(server)
    for _ in range(3):
        response = await client.post(server.url, {"content-type": "application/json"}, BODY)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert await response.aread() == ANSWER
        await response.aclose()
    assert server.connections == 1
    assert server.dialled == [("backend.test", 8000)]
    head = server.requests[0].split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"post /v1/chat/completions http/1.1\r\n")
    assert b"host: backend.test:8000" in head
    assert b"content-length: %d" % len(BODY) in head
    assert b"accept-encoding: identity" in head
    assert server.requests[0].endswith(BODY)
    await client.aclose()
    with trio.fail_after(5):  # a guard against a hang, on the virtual clock
        assert await server.ended.receive() == "client"  # the pool's close reached the server


async def test_a_chunked_answer_split_into_single_bytes_arrives_whole(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(5)]
    wire = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    wire += b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"

    async def dribble(stream: trio.abc.Stream, request: bytes) -> bool:
        for i in range(len(wire)):
            await stream.send_all(wire[i : i + 1])
            await trio.sleep(0.01)  # virtual: each byte is a read of its own
        return True

    server = Server(nursery, dribble)
    client = pool(server)
    response = await client.post(server.url, {}, BODY)
    assert response.headers["content-type"] == "text/event-stream"
    assert b"".join([chunk async for chunk in response.aiter_bytes()]) == b"".join(events)
    again = await client.post(server.url, {}, BODY)  # read to the end: the connection is reused
    await again.aclose()
    assert server.connections == 1
    await client.aclose()


async def test_an_answer_closed_early_closes_its_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def endless(stream: trio.abc.Stream, request: bytes) -> bool:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        await trio.sleep_forever()
        return True  # pragma: no cover

    server = Server(nursery, endless)
    client = pool(server)
    response = await client.post(server.url, {}, BODY)
    assert await response.__anext__() == b"hello"
    await response.aclose()  # a client gone, a failover: the rest is still on the wire
    second = await client.post(server.url, {}, BODY)
    await second.aclose()
    assert server.connections == 2
    await client.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def once(stream: trio.abc.Stream, request: bytes) -> bool:
        await stream.send_all(OK)
        return False  # keep-alive as far as the client knows, then closed

    server = Server(nursery, once)
    client = pool(server)
    for _ in range(3):
        response = await client.post(server.url, {}, BODY)
        assert await response.aread() == ANSWER
        with trio.fail_after(5):  # a guard against a hang, on the virtual clock
            assert await server.ended.receive() == "server"
    assert server.connections == 3
    await client.aclose()


async def test_a_connection_is_reused_until_it_has_been_idle_too_long(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(nursery, ok)
    client = pool(server)
    for pause, connections in [(KEEPALIVE_SECONDS - 1, 1), (KEEPALIVE_SECONDS + 1, 2)]:
        response = await client.post(server.url, {}, BODY)
        assert await response.aread() == ANSWER
        await trio.sleep(pause)  # idle, on the virtual clock
        again = await client.post(server.url, {}, BODY)
        assert await again.aread() == ANSWER
        assert server.connections == connections
    await client.aclose()


async def test_a_connection_that_takes_too_long_is_a_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def unanswered(host: str, port: int) -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    client = Http1Pool(CONNECT_TIMEOUT, ssl.create_default_context(), connect=unanswered)
    start = trio.current_time()
    with pytest.raises(httpx.ConnectTimeout, match="no connection within 5 s"):
        await client.post("http://backend.test:8000/v1/chat/completions", {}, BODY)
    assert trio.current_time() - start == pytest.approx(CONNECT_TIMEOUT)  # virtual: exact
    await client.aclose()


async def test_failures_are_httpx_transport_errors(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def hang_up(stream: trio.abc.Stream, request: bytes) -> bool:
        return False

    async def garbage(stream: trio.abc.Stream, request: bytes) -> bool:
        await stream.send_all(b"SMTP ready\r\n\r\n")
        return False

    async def cut(stream: trio.abc.Stream, request: bytes) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        return False

    async def refused(host: str, port: int) -> trio.SocketStream:
        raise ConnectionRefusedError(111, "Connection refused")

    server = Server(nursery, hang_up)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await pool(server).post(server.url, {}, BODY)
    server = Server(nursery, garbage)
    with pytest.raises(httpx.RemoteProtocolError):
        await pool(server).post(server.url, {}, BODY)
    server = Server(nursery, cut)
    response = await pool(server).post(server.url, {}, BODY)
    with pytest.raises(httpx.RemoteProtocolError):
        await response.aread()
    client = Http1Pool(CONNECT_TIMEOUT, ssl.create_default_context(), connect=refused)
    with pytest.raises(httpx.ConnectError, match="refused"):
        await client.post(server.url, {}, BODY)


async def test_https_with_the_servers_name_checked(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)

    async def checked(stream: trio.abc.Stream, request: bytes) -> bool:
        assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        await stream.send_all(OK)
        return True

    server = Server(nursery, checked, host="localhost", tls=server_tls)
    client = pool(server, client_tls)
    for _ in range(2):
        response = await client.post(server.url, {}, BODY)
        assert await response.aread() == ANSWER
    assert (server.connections, len(server.requests)) == (1, 2)
    await client.aclose()
    stranger = pool(server)  # does not trust our authority
    with pytest.raises(httpx.ConnectError):
        await stranger.post(server.url, {}, BODY)
    await stranger.aclose()
    misnamed = Server(nursery, checked, host="127.0.0.1", tls=server_tls)
    client = pool(misnamed, client_tls)  # trusts the authority, but the name is not localhost's
    with pytest.raises(httpx.ConnectError):
        await client.post(misnamed.url, {}, BODY)
    await client.aclose()
    assert not misnamed.requests


# Real loopback TCP, on the real clock: the default connect function, end to end.


async def test_the_default_connect_reaches_a_loopback_server_and_keeps_it(
    nursery: trio.Nursery,
) -> None:
    connections = 0

    async def connection(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            while await read_request(stream) is not None:
                await stream.send_all(OK)

    listeners = await nursery.start(trio.serve_tcp, connection, 0)
    port = listeners[0].socket.getsockname()[1]
    client = Http1Pool(CONNECT_TIMEOUT, ssl.create_default_context())
    for _ in range(2):
        response = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", {}, BODY)
        assert await response.aread() == ANSWER
    assert connections == 1
    await client.aclose()


async def test_the_default_connect_refused_is_a_connect_error() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once it is closed
    client = Http1Pool(CONNECT_TIMEOUT, ssl.create_default_context())
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", {}, BODY)
    await client.aclose()
