"""A small HTTP/1.1 server on trio sockets, built on h11.

Why not quart: the simulated backends must fail in exact ways (close the socket
mid-body, stall after a given chunk, send broken bytes, refuse connections), and
that needs the socket in hand. One task serves one connection, requests on it
one after another (keep-alive); a response has either a ``Content-Length`` (JSON)
or chunked transfer encoding (SSE streams).

While a handler runs under :meth:`Responder.run_watching_peer`, a sibling task
keeps reading the socket: an HTTP/1.1 client sends nothing while it waits for a
response, so end-of-file there means the client has gone, and the handler is
cancelled at once instead of when its next write fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import h11
import trio

__all__ = ["Handler", "PeerGone", "Request", "Responder", "serve_http_connection"]

logger = logging.getLogger("nexus_trio.testing")

RECEIVE_SIZE: Final = 65536
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
MAX_HEADER_BYTES: Final = 64 * 1024

Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, read whole (the simulators never need to stream a body in)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


class PeerGone(Exception):
    """The client closed the connection, or it broke, before the response was done."""


class Responder:
    """Writes the response to one request; the handler calls exactly one ``send*`` path."""

    def __init__(self, conn: h11.Connection, stream: trio.SocketStream, method: str) -> None:
        self._conn = conn
        self._stream = stream
        self._head = method == "HEAD"
        self.headers_sent = False
        self.finished = False
        self.aborted = False
        self.peer_gone = False
        self.close_after = False  # close the connection once this response is done
        self.extra_headers: tuple[Header, ...] = ()  # added to the response, e.g. `server`

    # -- whole responses ---------------------------------------------------------

    async def send(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str | None,
        headers: Iterable[Header] = (),
    ) -> None:
        """Send a complete response with a ``Content-Length`` (no type if ``None``)."""
        all_headers = [("content-length", str(len(body))), *headers]
        if content_type is not None:
            all_headers.insert(0, ("content-type", content_type))
        out = self._response(status, all_headers)
        if body and not self._head:
            out += self._conn.send(h11.Data(data=body)) or b""
        out += self._conn.send(h11.EndOfMessage()) or b""
        await self._write(out)
        self.finished = True

    async def send_json(
        self, status: int, payload: object, *, headers: Iterable[Header] = ()
    ) -> None:
        """Send ``payload`` as a JSON body."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        await self.send(status, body, content_type="application/json", headers=headers)

    async def send_text(self, status: int, text: str, *, headers: Iterable[Header] = ()) -> None:
        """Send a ``text/plain`` body."""
        await self.send(
            status, text.encode(), content_type="text/plain; charset=utf-8", headers=headers
        )

    # -- streamed responses ------------------------------------------------------

    async def start_stream(
        self,
        status: int = 200,
        *,
        content_type: str = "text/event-stream",
        headers: Iterable[Header] = (),
        first: bytes = b"",
    ) -> None:
        """Send the headers of a chunked response, and ``first`` as its first chunk."""
        out = self._response(
            status, [("content-type", content_type), ("cache-control", "no-cache"), *headers]
        )
        if first:
            out += self._conn.send(h11.Data(data=first)) or b""
        await self._write(out)

    async def send_chunk(self, data: bytes) -> None:
        """Send one chunk of a streamed body."""
        await self._write(self._conn.send(h11.Data(data=data)) or b"")

    async def end_stream(self, last: bytes = b"") -> None:
        """Send ``last`` (if any) and the terminating chunk in one write.

        One write, so that a client that hangs up as soon as it has read ``last``
        (the OpenAI SDK does, on ``data: [DONE]``) has the whole body already.
        """
        out = b""
        if last:
            out += self._conn.send(h11.Data(data=last)) or b""
        out += self._conn.send(h11.EndOfMessage()) or b""
        await self._write(out)
        self.finished = True

    async def abort(self) -> None:
        """Close the TCP connection now, whatever was or was not sent."""
        self.aborted = True
        await trio.aclose_forcefully(self._stream)

    # -- watching the client -------------------------------------------------------

    async def run_watching_peer(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn``, cancelling it as soon as the client closes the connection.

        Raises:
            PeerGone: the client went away before ``fn`` returned (or a write failed).
        """
        # What ``fn`` raises leaves unwrapped, as from a plain ``await fn()``: the
        # nursery would put it in an ExceptionGroup, and callers catch PeerGone
        # and Cancelled by type.
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_peer, nursery.cancel_scope)
            try:
                await fn()
            except BaseException as exc:  # re-raised below, outside the nursery
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
        if self.peer_gone and (failure is None or isinstance(failure, trio.Cancelled)):
            # Cancelled by the watcher (an outer cancellation, if any, is raised
            # again at the caller's next checkpoint).
            if failure is not None:
                raise PeerGone("client closed the connection") from None
            return
        if failure is not None:
            raise failure

    async def _watch_peer(self, scope: trio.CancelScope) -> None:
        while True:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if self.aborted:
                return  # we closed it ourselves: not the client's doing
            if not data:
                self.peer_gone = True
                scope.cancel()
                return
            # A pipelined next request: h11 keeps it until this cycle is over.
            self._conn.receive_data(data)

    # -- internals -------------------------------------------------------------------

    def _response(self, status: int, headers: list[Header]) -> bytes:
        headers.extend(self.extra_headers)
        if self.close_after:
            headers.append(("connection", "close"))
        reason = _reason(status)
        self.headers_sent = True
        response = h11.Response(status_code=status, headers=headers, reason=reason)
        return self._conn.send(response) or b""

    async def _write(self, data: bytes) -> None:
        if self.aborted or self.peer_gone:
            raise PeerGone("connection already closed")
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.peer_gone = True
            raise PeerGone("client closed the connection") from exc


Handler = Callable[[Request, Responder], Awaitable[None]]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _error_json(status: int, message: str) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return json.dumps({"error": error}).encode()


async def serve_http_connection(stream: trio.SocketStream, handler: Handler) -> None:
    """Serve requests on one connection until either side closes it; always closes ``stream``.

    Garbage bytes get a 400 and a close; a handler that raises gets a 500 (or, if
    its headers were out already, an abrupt close). Nothing here raises, except
    ``trio.Cancelled``.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    try:
        while True:
            try:
                request = await _read_request(conn, stream)
            except h11.RemoteProtocolError as exc:
                await _reject(conn, stream, exc.error_status_hint, str(exc))
                return
            except _BodyTooLarge:
                await _reject(conn, stream, 413, "request body too large")
                return
            if request is None:
                return
            responder = Responder(conn, stream, request.method)
            try:
                await handler(request, responder)
            except PeerGone:
                return
            except Exception:
                logger.exception("simulated backend: handler failed on %s", request.path)
                if not responder.headers_sent:
                    responder.close_after = True
                    body = _error_json(500, "internal error in the simulated backend")
                    await responder.send(500, body, content_type="application/json")
                return
            if not responder.finished or responder.aborted or responder.close_after:
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # MUST_CLOSE (HTTP/1.0, Connection: close) or an unread body
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, PeerGone):
        pass
    except h11.LocalProtocolError:
        logger.exception("simulated backend: HTTP protocol misuse")
    finally:
        await trio.aclose_forcefully(stream)


class _BodyTooLarge(Exception):
    pass


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> Request | None:
    """The next whole request, or ``None`` once the client has closed cleanly."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                continue_ = h11.InformationalResponse(status_code=100, headers=[])
                await stream.send_all(conn.send(continue_) or b"")
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                data = b""
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                raise _BodyTooLarge
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return _to_request(head, bytes(body))
        else:  # ConnectionClosed, or PAUSED, which cannot happen between requests
            return None


def _to_request(head: h11.Request, body: bytes) -> Request:
    target = head.target.decode("latin-1")
    path, _, query = target.partition("?")
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
    return Request(head.method.decode("ascii"), path, query, headers, body)


async def _reject(conn: h11.Connection, stream: trio.SocketStream, status: int, why: str) -> None:
    """Answer a request we could not read, if h11 still lets us, then give up."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = _error_json(status, f"bad request: {why}")
    headers: list[tuple[str, str]] = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("connection", "close"),
    ]
    try:
        out = conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
        out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(out)
