"""One upstream stream: opened up to its first token, then relayed event by event.

`open_stream` is phase 1: it sends the request and reads until the backend
has produced an event that carries part of the answer, under the backend's
first-token deadline, without touching the client. It returns an `OpenStream`
holding those first events, or raises ``BackendError`` (the caller tries the
next candidate) or `PassThrough` (the backend refused the request itself).

`relay` is phase 2: it feeds every event through the `StreamTracker` and
writes what the tracker lets through, each read under the stall deadline. It
returns when the answer is complete, or with the failure that stopped it, so
the caller can continue on another backend.

Events reach the client whole, never half an event, so a failure never leaves
a torn event on the wire.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import trio

from nexus_trio.config import TimeoutSettings
from nexus_trio.errors import BackendError, BackendProtocolError, BackendTimeout, error_body
from nexus_trio.proxy.attempt import Attempt, PassThrough, classify_status
from nexus_trio.proxy.sse import SSEEvent, SSEParser
from nexus_trio.proxy.tracker import StreamTracker
from nexus_trio.routing.router import Candidate
from nexus_trio.upstream.client import translate_httpx_error
from nexus_trio.upstream.http1 import Http1Response

__all__ = ["OpenStream", "open_stream", "relay", "sse_error_event"]

# How long to wait for an upstream body to end after its [DONE], to keep the connection.
DRAIN_SECONDS = 1.0


def sse_error_event(message: str, code: str, type_: str = "upstream_error") -> bytes:
    """One SSE event carrying an OpenAI error; the SDKs raise ``APIError`` on it."""
    body = error_body(message, type_, code=code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass(eq=False)
class OpenStream:
    """A backend's stream that has produced its first token, not yet relayed.

    While it is open it counts in its backend's in-flight requests; `aclose`
    (always called, in a ``finally``) releases both.
    """

    candidate: Candidate
    response: Http1Response
    chunks: AsyncIterator[bytes]
    parser: SSEParser
    timeouts: TimeoutSettings
    opened_at: float
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
            self.candidate.backend.in_flight -= 1


async def open_stream(attempt: Attempt, candidate: Candidate, body: bytes) -> OpenStream:
    """Phase 1 at ``candidate``: send, and read up to the first token.

    Raises:
        BackendError: it failed before its first token (the caller moves on).
        PassThrough: it refused the request itself (the client hears that).
    """
    backend = candidate.backend
    timeouts = attempt.timeouts_for(backend)
    started = trio.current_time()
    backend.in_flight += 1
    response: Http1Response | None = None
    handed_over = False
    try:
        with trio.move_on_after(timeouts.first_token_seconds):
            try:
                response = await attempt.client.open_chat(backend, attempt.request_id, body)
                if response.status_code != 200:
                    raise await classify_status(response, candidate, attempt.registry)
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    # Answered as JSON despite "stream": true; the client gets it as it is.
                    raise PassThrough(candidate, 200, await response.aread(),
                                      content_type or "application/json")  # fmt: skip
                stream = OpenStream(candidate, response, response.aiter_bytes(), SSEParser(),
                                    timeouts, started)  # fmt: skip
                probe = StreamTracker()  # only to tell when the first token has come
                while True:
                    try:
                        data = await anext(stream.chunks)
                    except StopAsyncIteration:
                        raise BackendProtocolError(
                            backend.name, "ended the stream before its first token"
                        ) from None
                    events = stream.parser.feed(data)
                    stream.head += events
                    if any(probe.admit(e, backend.name).says for e in events):
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
            backend.in_flight -= 1
            if response is not None:
                with trio.move_on_after(1, shield=True):
                    await response.aclose()


async def relay(
    stream: OpenStream, tracker: StreamTracker, attempt: Attempt
) -> BackendError | None:
    """Phase 2: relay ``stream`` through ``tracker`` until the answer is complete.

    Returns None when it is (``[DONE]`` relayed), or the failure that stopped it.
    """
    backend = stream.candidate.backend.name
    downstream = attempt.downstream
    events: list[SSEEvent] | None = stream.head
    stream.head = []
    while True:
        if events is None:  # the body ended without [DONE]
            if tracker.finished:
                # It did finish: say [DONE] for it, as clients expect.
                await downstream.send(tracker.admit(_DONE, backend).relay)
                return None
            return BackendProtocolError(backend, "ended the stream early")
        out: list[bytes] = []
        for event in events:
            try:
                admitted = tracker.admit(event, backend)
            except BackendError as failure:
                await downstream.send(b"".join(out))
                return failure
            out.append(admitted.relay)
            if admitted.done:
                await downstream.send(b"".join(out))
                return None
        await downstream.send(b"".join(out))
        try:
            events = await stream.read()
        except BackendError as failure:
            return failure


_DONE = SSEEvent(raw=b"data: [DONE]\n\n", data="[DONE]")
