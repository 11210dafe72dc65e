"""Chat requests to backends: HTTP/1.1 with h11 over pooled trio streams.

The hot path's own client. httpx (with httpcore under it) stays for everything else a
backend is asked (health checks, listings, detection); a chat request and its answer go
through here, where a request is one write and each piece of the answer one read, one h11
event and nothing more. Measured with ``benchmarks/suite.py`` against httpx's transport on
the same machine: 712 -> 991 requests/s on one core, 1.11 -> 0.89 ms added per request,
54 -> 42 kB per open stream.

Connections are kept alive per origin (scheme, host, port) and reused last-in first-out; one
idle for longer than `KEEPALIVE_SECONDS`, or that the server has closed meanwhile (readable
while idle), is closed instead of reused. A response read to its end returns its connection
to the pool; one closed early (a client gone, a failover, a deadline) closes it, since its
rest is still on the wire.

The function that opens a TCP connection can be swapped (`Http1Pool`'s ``connect``): tests
hand the pool one end of a socket pair and script the server on the other, so deadlines run
on trio's mock clock. The idle check needs no such seam: it reads `trio.current_time`, which
follows the run's clock, mock or not.

Failures raise httpx's transport errors (`httpx.ConnectError`, `httpx.ReadError`, ...), the
vocabulary `nexus_trio.upstream.client.translate_httpx_error` turns into Nexus's own: one
translation for both clients.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

import h11
import httpx
import trio

__all__ = ["Connect", "Http1Pool", "Http1Response"]

# Idle connections older than this are not reused: servers close idle keep-alive
# connections on their own schedule (uvicorn after 5 s, Go's net/http after 90 s, ...),
# and a request written to one the server is closing fails for nothing.
KEEPALIVE_SECONDS: Final = 30.0
MAX_IDLE_PER_ORIGIN: Final = 256
RECEIVE_BYTES: Final = 65_536
USER_AGENT: Final = "nexus-trio"

Origin = tuple[str, str, int]  # scheme, host, port

Connect = Callable[[str, int], Awaitable[trio.SocketStream]]
"""Opens a TCP connection to (host, port); `trio.open_tcp_stream` unless a test says
otherwise. A socket, not any stream: the pool closes it without waiting and asks it whether
the server has hung up while it was idle."""


def _as_httpx(exc: BaseException, broken: type[httpx.TransportError]) -> BaseException:
    """trio's and h11's failures as httpx's (``broken`` for a connection that failed);
    anything else, a cancellation included, as it is. A function, not a context manager:
    it runs for every read of a streamed answer."""
    if isinstance(exc, h11.RemoteProtocolError):
        return httpx.RemoteProtocolError(str(exc))
    if isinstance(exc, h11.LocalProtocolError):
        return httpx.LocalProtocolError(str(exc))
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | OSError):
        return broken(str(exc) or type(exc).__name__)
    return exc


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[Origin, str, str]:
    """(origin, request target, Host header) of a URL; a fleet posts to a few URLs, again
    and again, so each is taken apart once."""
    parts = urlsplit(url)
    scheme = parts.scheme
    origin = (scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return origin, target, parts.netloc.rpartition("@")[2]


def _wire(state: h11.Connection, *events: h11.Event) -> bytes:
    """The bytes that send ``events``; a body goes through as it is, not copied by h11."""
    parts: list[bytes] = []
    for event in events:
        parts += state.send_with_data_passthrough(event) or ()  # None: ConnectionClosed only
    return b"".join(parts)


class _Connection:
    """One kept-alive connection to a backend and its h11 state."""

    __slots__ = ("h11", "idle_since", "origin", "socket", "stream")

    def __init__(self, origin: Origin, stream: trio.abc.Stream, socket: trio.socket.SocketType):
        self.origin = origin
        self.stream = stream
        self.socket = socket
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if not data and self.h11.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            self.h11.receive_data(data if type(data) is bytes else bytes(data))

    def close(self) -> None:
        """Close at once, without a TLS goodbye: a connection is closed when it cannot be
        reused, or at shutdown, where nothing may wait on a peer (and a cancelled
        shutdown must still close every one)."""
        self.socket.close()

    def reusable(self, now: float) -> bool:
        # Readable while idle means the server closed it (or broke the protocol).
        return now - self.idle_since < KEEPALIVE_SECONDS and not self.socket.is_readable()


class Http1Response:
    """A backend's answer: status and headers now, the body as it is read.

    Iterate it (``async for``, or `aiter_bytes`) or `aread` it, then `aclose` it (always:
    closing early drops the connection; after the end it is a no-op).
    """

    __slots__ = ("_connection", "_pool", "headers", "status_code")

    def __init__(self, pool: Http1Pool, connection: _Connection, head: h11.Response) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self.status_code = head.status_code
        # h11 gives names lower-cased; a repeated header keeps its last value.
        self.headers: Mapping[str, str] = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers
        }

    def aiter_bytes(self) -> Http1Response:
        return self

    def __aiter__(self) -> Http1Response:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is None:
            raise StopAsyncIteration
        try:
            event = await connection.next_event()
        except BaseException as exc:
            self._drop()
            if (error := _as_httpx(exc, httpx.ReadError)) is not exc:
                raise error from exc
            raise
        if isinstance(event, h11.Data):
            data = event.data
            return data if type(data) is bytes else bytes(data)
        if isinstance(event, h11.EndOfMessage):
            self._connection = None
            self._pool.give_back(connection)
            raise StopAsyncIteration
        self._drop()
        raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in a response body")

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()  # the rest of the answer is still on the wire


class Http1Pool:
    """Kept-alive HTTP/1.1 connections to every backend, for chat requests.

    Args:
        connect_timeout_seconds: how long a new connection (TCP, and TLS for ``https``)
            may take before `httpx.ConnectTimeout`.
        tls: the context ``https`` backends are checked against.
        connect: opens the TCP connection; `trio.open_tcp_stream` by default.

    Example::

        pool = Http1Pool(5.0, ssl.create_default_context())
        response = await pool.post(url, {"content-type": "application/json"}, body)
        try:
            answer = await response.aread()
        finally:
            await response.aclose()
    """

    def __init__(
        self,
        connect_timeout_seconds: float,
        tls: ssl.SSLContext,
        *,
        connect: Connect = trio.open_tcp_stream,
    ) -> None:
        self._connect_timeout = connect_timeout_seconds
        self._tls = tls
        self._open_tcp = connect
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Http1Response:
        """POST ``body`` and return the response once its head is in.

        Raises:
            httpx.TransportError: the connection, the request or the response head failed.
        """
        origin, target, authority = _split(url)
        connection = self._reuse(origin) or await self._connect(origin)
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("host", authority),
                ("user-agent", USER_AGENT),
                ("accept-encoding", "identity"),
                *headers.items(),
                ("content-length", str(len(body))),
            ],
        )
        broken: type[httpx.TransportError] = httpx.WriteError
        try:
            wire = _wire(connection.h11, request, h11.Data(data=body), h11.EndOfMessage())
            await connection.stream.send_all(wire)
            broken = httpx.ReadError
            event = await connection.next_event()
            while isinstance(event, h11.InformationalResponse):  # 100 Continue and such
                event = await connection.next_event()
        except BaseException as exc:
            connection.close()
            if (error := _as_httpx(exc, broken)) is not exc:
                raise error from exc
            raise
        if not isinstance(event, h11.Response):
            connection.close()
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return Http1Response(self, connection, event)

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            connection = idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        try:
            with trio.fail_after(self._connect_timeout):
                tcp = await self._open_tcp(host, port)
                stream: trio.abc.Stream = tcp
                if scheme == "https":
                    tls = trio.SSLStream(tcp, self._tls, server_hostname=host,
                                         https_compatible=True)  # fmt: skip
                    stream = tls
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        tcp.socket.close()
                        raise
        except trio.TooSlowError as exc:
            raise httpx.ConnectTimeout(f"no connection within {self._connect_timeout:g} s") from exc
        except BaseException as exc:
            if (error := _as_httpx(exc, httpx.ConnectError)) is not exc:
                raise error from exc
            raise
        return _Connection(origin, stream, tcp.socket)

    def give_back(self, connection: _Connection) -> None:
        """Keep a connection whose exchange is complete, or close it."""
        state = connection.h11
        idle = self._idle.setdefault(connection.origin, [])
        if (
            not self._closed
            and state.our_state is h11.DONE
            and state.their_state is h11.DONE
            and len(idle) < MAX_IDLE_PER_ORIGIN
        ):
            state.start_next_cycle()
            connection.idle_since = trio.current_time()
            idle.append(connection)
        else:
            connection.close()

    async def aclose(self) -> None:
        """Close the idle connections; one in use closes when its response does."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()
