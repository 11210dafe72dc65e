"""One upstream stream: opened up to its first token, then relayed event by event.

`open_stream` is phase 1: it sends the request and reads until the backend
has produced an event that carries part of the answer, under the backend's
first-token deadline, without touching the client. It returns an `OpenStream`
holding those first events, or the backend's own `WholeAnswer` (it refused the
request itself, or answered in one piece), or raises ``BackendError`` (the caller
tries the next candidate).

`relay` is phase 2: it feeds every event through the `StreamTracker` and
hands what the tracker admits to the client's writer, each read under the stall
deadline. It returns when the answer is complete, or with the failure that
stopped it, so the caller can continue on another backend.

Events reach the writer whole, never half an event, so a failure never leaves
a torn event on the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import trio

from nexus_trio.config import TimeoutSettings
from nexus_trio.errors import BackendError, BackendProtocolError, BackendStatus, BackendTimeout
from nexus_trio.proxy.exchange import Exchange
from nexus_trio.proxy.sse import SSEEvent, SSEParser
from nexus_trio.proxy.tracker import Admitted, StreamTracker, carries_answer
from nexus_trio.proxy.writer import WholeAnswer
from nexus_trio.registry import Slot
from nexus_trio.routing.router import Candidate
from nexus_trio.upstream.client import CHAT_PATH, translate_httpx_error
from nexus_trio.upstream.http1 import Http1Response

__all__ = ["CLIENT_ERRORS", "OpenStream", "open_stream", "read_refusal", "relay"]

# How long to wait for an upstream body to end after its [DONE], to keep the connection.
DRAIN_SECONDS = 1.0
# Statuses that say the request itself is wrong: the next backend would say the same,
# so the client hears it unchanged.
CLIENT_ERRORS = frozenset({400, 401, 403, 405, 409, 413, 415, 422})
# The most of an error body read before giving up on it.
MAX_ERROR_BODY_BYTES = 64 * 1024


@dataclass(eq=False)
class OpenStream:
    """A backend's stream that has produced its first token, not yet relayed.

    It holds a slot on its backend and the upstream response; `aclose` (always
    called, in a ``finally``) releases both.
    """

    candidate: Candidate
    slot: Slot
    response: Http1Response
    chunks: AsyncIterator[bytes]
    parser: SSEParser
    timeouts: TimeoutSettings
    ttft_seconds: float = 0.0
    head: list[SSEEvent] = field(default_factory=list)  # read in phase 1, not yet relayed
    ended: bool = False  # the upstream body has ended
    _closed: bool = False

    async def read(self) -> list[SSEEvent] | None:
        """The events of the next read (maybe none), or None at the end of the body.

        Raises:
            BackendError: the connection broke, or nothing came within the stall deadline.
        """
        backend = self.candidate.backend.name
        idle = self.timeouts.stream_idle_seconds
        with trio.move_on_after(idle):
            try:
                data = await anext(self.chunks)
            except StopAsyncIteration:
                self.ended = True
                return None
            except httpx.HTTPError as exc:
                raise translate_httpx_error(backend, exc) from exc
            return self.parser.feed(data)
        raise BackendTimeout(backend, f"stalled for {idle:g} s mid-stream")

    async def drain(self) -> None:
        """Read the rest of the body, briefly, so the connection goes back to the pool
        (the client already has its whole answer)."""
        if self.ended:
            return
        with trio.move_on_after(DRAIN_SECONDS):
            async for _ in self.chunks:
                pass
            self.ended = True

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with trio.move_on_after(1, shield=True):
                await self.response.aclose()
        finally:
            self.slot.release()


async def read_refusal(response: Http1Response, candidate: Candidate) -> WholeAnswer | BackendError:
    """A non-200 answer: the backend's refusal of the request itself, to pass on (a client
    error the next backend would repeat), or the failure to fail over from."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ERROR_BODY_BYTES:
            break
    status = response.status_code
    if status in CLIENT_ERRORS:
        content_type = response.headers.get("content-type", "application/json")
        return WholeAnswer(candidate, status, content_type, body)
    detail = body[:200].decode("utf-8", "replace").strip()
    return BackendStatus(candidate.backend.name, status, detail)


async def open_stream(
    exchange: Exchange,
    candidate: Candidate,
    body: bytes,
    path: str = CHAT_PATH,
    parser: Callable[[], SSEParser] | None = None,
) -> OpenStream | WholeAnswer:
    """Phase 1 at ``candidate``: send ``body`` to its ``path``, and read up to the first
    token; ``parser`` makes the parser of a stream that is not OpenAI's own (it yields
    OpenAI chunks).

    Raises:
        BackendError: it failed before its first token (the caller moves on).
    """
    backend = candidate.backend
    timeouts = exchange.timeouts_for(backend, candidate.model)
    started = trio.current_time()
    slot = exchange.registry.occupy(backend)
    response: Http1Response | None = None
    handed_over = False
    try:
        with trio.move_on_after(timeouts.first_token_seconds):
            try:
                response = await exchange.client.open_chat(backend, exchange.request_id, body, path)
                if response.status_code != 200:
                    refusal = await read_refusal(response, candidate)
                    if isinstance(refusal, BackendError):
                        raise refusal
                    return refusal
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    # Answered in one piece despite "stream": true; the client gets it as it is.
                    return WholeAnswer(candidate, 200, content_type or "application/json",
                                       await response.aread())  # fmt: skip
                stream = OpenStream(candidate, slot, response, response.aiter_bytes(),
                                    parser() if parser else SSEParser(), timeouts)  # fmt: skip
                while True:
                    try:
                        data = await anext(stream.chunks)
                    except StopAsyncIteration:
                        raise BackendProtocolError(
                            backend.name, "ended the stream before its first token"
                        ) from None
                    events = stream.parser.feed(data)
                    stream.head += events
                    if any(carries_answer(e, backend.name) for e in events):
                        stream.ttft_seconds = trio.current_time() - started
                        handed_over = True
                        return stream
            except httpx.HTTPError as exc:
                raise translate_httpx_error(backend.name, exc) from exc
        raise BackendTimeout(
            backend.name, f"no first token within {timeouts.first_token_seconds:g} s"
        )
    finally:
        if not handed_over:
            slot.release()
            if response is not None:
                with trio.move_on_after(1, shield=True):
                    await response.aclose()


async def relay(
    stream: OpenStream, tracker: StreamTracker, exchange: Exchange
) -> BackendError | None:
    """Phase 2: relay ``stream`` through ``tracker`` to the writer until the answer is
    complete.

    Returns None when it is (``[DONE]`` written), or the failure that stopped it.
    """
    backend = stream.candidate.backend.name
    writer = exchange.writer
    events: list[SSEEvent] | None = stream.head
    stream.head = []
    while True:
        if events is None:  # the body ended without [DONE]
            if tracker.finished:
                # It did finish: close it as if [DONE] had come, as clients expect.
                await writer.send([tracker.close()])
                return None
            return BackendProtocolError(backend, "ended the stream early")
        out: list[Admitted] = []
        for event in events:
            try:
                admitted = tracker.admit(event, backend)
            except BackendError as failure:
                await writer.send(out)
                return failure
            out.append(admitted)
            if admitted.done:
                await writer.send(out)
                return None
        await writer.send(out)
        try:
            events = await stream.read()
        except BackendError as failure:
            return failure
