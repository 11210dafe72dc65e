"""One streaming attempt: hold the stream until its first token, then relay it.

The upstream's SSE bytes are relayed as they come, event by event (never half
an event, so a failure never leaves a torn event on the client's wire), and
parsed on the way so the proxy knows where the stream stands: whether an
event carries part of the answer, whether a choice has finished, whether
``[DONE]`` has passed, whether the backend reported an error in-band.

Before the first token (phase 1) a failure raises ``BackendError`` and the
caller moves on; after it (phase 2) the failure becomes one SSE error event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import trio

from nexus_trio.errors import BackendError, BackendProtocolError, BackendTimeout, error_body
from nexus_trio.proxy.attempt import (
    Attempt,
    PassThrough,
    classify_status,
    nexus_headers,
)
from nexus_trio.proxy.sse import SSEEvent, SSEParser
from nexus_trio.proxy.upstream import backend_headers, translate_httpx_error
from nexus_trio.routing.router import Candidate

__all__ = ["attempt_stream", "sse_error_event"]

# How long to wait for an upstream body to end after its [DONE], to keep the connection.
DRAIN_SECONDS = 1.0


def sse_error_event(message: str, code: str) -> bytes:
    """One SSE event carrying an OpenAI error; the SDKs raise ``APIError`` on it."""
    body = error_body(message, "upstream_error", code=code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _says_something(choice: object) -> bool:
    """Whether a streamed choice carries part of the answer (not just the role)."""
    if not isinstance(choice, dict):
        return False
    if choice.get("finish_reason"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and any(
        delta.get(key)
        for key in (
            "content",
            "tool_calls",
            "function_call",
            "refusal",
            "reasoning_content",
            "reasoning",
        )
    )


def _check_event(event: SSEEvent, backend: str) -> tuple[bool, bool]:
    """(carries the answer, carries a finish_reason) for one event.

    Raises:
        BackendError: an in-band error event, or data that is not a JSON object.
    """
    data = event.data
    if data is None:
        return False, False
    if event.is_done:
        return True, False
    try:
        chunk = json.loads(data)
    except ValueError:
        raise BackendProtocolError(backend, "sent an SSE event that is not JSON") from None
    if not isinstance(chunk, dict):
        raise BackendProtocolError(backend, "sent an SSE event that is not a JSON object")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise BackendError(backend, f"reported an error in the stream: {message}")
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices:
        return True, False  # a usage chunk, or something of the backend's own
    finished = any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    return any(_says_something(c) for c in choices), finished


@dataclass(slots=True)
class _StreamState:
    started: bool = False  # an event carrying the answer has passed: the stream may commit
    finished: bool = False  # a choice carried a finish_reason
    done: bool = False  # data: [DONE] passed
    drained: bool = False  # the upstream body has ended


def _take_events(
    events: list[SSEEvent], state: _StreamState, backend: str
) -> tuple[bytes, BackendError | None]:
    """The bytes of the events that may reach the client, and the failure that stopped them."""
    relay: list[bytes] = []
    for event in events:
        try:
            says, finished = _check_event(event, backend)
        except BackendError as exc:
            return b"".join(relay), exc
        state.started = state.started or says
        state.finished = state.finished or finished
        relay.append(event.raw)
        if event.is_done:
            state.done = True
            break
    return b"".join(relay), None


async def attempt_stream(attempt: Attempt, candidate: Candidate, body: bytes) -> None:
    """One try at ``candidate``; see `nexus_trio.proxy.attempt` for how it ends."""
    backend = candidate.backend
    timeouts, downstream, outcome = attempt.timeouts, attempt.downstream, attempt.outcome
    request = attempt.client.build_request(
        "POST",
        backend.url + "/v1/chat/completions",
        content=body,
        headers={
            **backend_headers(backend, attempt.request_id),
            "content-type": "application/json",
            "accept-encoding": "identity",
        },
    )
    started = trio.current_time()
    response: httpx.Response | None = None
    try:
        # Phase 1, before the commit: headers and the first token, under one deadline.
        parser = SSEParser()
        state = _StreamState()
        first = b""
        with trio.move_on_after(timeouts.first_token_seconds) as first_deadline:
            response = await attempt.client.send(request, stream=True)
            if response.status_code != 200:
                raise await classify_status(response, candidate, attempt.registry)
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                # Answered as JSON despite "stream": true; the client gets it as it is.
                raw = await response.aread()
                raise PassThrough(200, raw, content_type or "application/json")
            chunks = response.aiter_bytes()
            while not state.started:
                try:
                    head = await anext(chunks)
                except StopAsyncIteration:
                    raise BackendProtocolError(
                        backend.name, "ended the stream before its first token"
                    ) from None
                data, failure = _take_events(parser.feed(head), state, backend.name)
                first += data
                if failure is not None:
                    raise failure
        if first_deadline.cancelled_caught:
            raise BackendTimeout(
                backend.name, f"no first token within {timeouts.first_token_seconds:g} s"
            )

        # The commit point: from here on the client has seen this backend.
        outcome.ttft_seconds = trio.current_time() - started
        attempt.registry.record_ttft(backend, outcome.ttft_seconds)
        outcome.served(candidate, 200)
        await downstream.start(
            200,
            [
                *nexus_headers(candidate, attempt.request_id, "text/event-stream"),
                ("cache-control", "no-cache"),
            ],
        )
        await downstream.send(first)

        # Phase 2, relaying: every read under the idle deadline.
        failure = None
        while not state.done:
            read: bytes | None = None
            with trio.move_on_after(timeouts.stream_idle_seconds) as idle:
                try:
                    read = await anext(chunks)
                except StopAsyncIteration:
                    state.drained = True
                except httpx.HTTPError as exc:
                    failure = translate_httpx_error(backend.name, exc)
                    break
            if idle.cancelled_caught:
                failure = BackendTimeout(
                    backend.name, f"stalled for {timeouts.stream_idle_seconds:g} s mid-stream"
                )
                break
            if read is None:  # the body ended without [DONE]
                if not state.finished:
                    failure = BackendProtocolError(backend.name, "ended the stream early")
                    break
                # It did finish: say [DONE] for it, as clients expect.
                await downstream.send(b"data: [DONE]\n\n")
                state.done = True
                break
            data, failure = _take_events(parser.feed(read), state, backend.name)
            await downstream.send(data)
            if failure is not None:
                break
        if failure is not None:
            attempt.registry.demote(backend, failure.reason)
            outcome.failures.append(failure)
            outcome.error = failure.message
            await downstream.send(
                sse_error_event(
                    f"The backend failed mid-stream ({failure.message}); the answer is "
                    "incomplete. Retry the request.",
                    failure.code or "backend_error",
                )
            )
        await downstream.end()
        if state.done and not state.drained and failure is None:
            # Read the upstream body to its end so the connection goes back to the
            # pool; the client already has its whole answer.
            with trio.move_on_after(DRAIN_SECONDS):
                async for _ in chunks:
                    pass
    except httpx.HTTPError as exc:
        raise translate_httpx_error(backend.name, exc) from exc
    finally:
        if response is not None:
            with trio.move_on_after(1, shield=True):
                await response.aclose()
