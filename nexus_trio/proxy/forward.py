"""Send one chat request to its candidates in turn until one answers.

Before the first byte reaches the client, a failing backend is invisible: the
attempt raises ``BackendError``, the backend is demoted, and the next
candidate is tried (up to ``routing.max_attempts``). A streaming answer
commits at its first token: response headers go out only once a backend has
sent an event that carries part of the answer (the opening role-only chunk
does not count), so failover before it costs the client nothing but time. After
the commit, a failure is reported in-band as one SSE error event.

Every attempt runs inside its own cancel scopes (one per phase deadline), and
its bookkeeping (the backend's in-flight count, closing the upstream response)
happens in ``finally`` so that success, failure and a client that went away
all leave the counters as they found them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import trio

from nexus_trio.config import TimeoutSettings
from nexus_trio.errors import (
    AllBackendsFailed,
    BackendError,
    BackendProtocolError,
    BackendStatus,
    BackendTimeout,
    error_body,
)
from nexus_trio.proxy.sse import SSEEvent, SSEParser
from nexus_trio.proxy.upstream import backend_headers, translate_httpx_error
from nexus_trio.registry import Registry
from nexus_trio.routing.requirements import ChatRequest
from nexus_trio.routing.router import Candidate, RouteDecision

__all__ = ["Downstream", "Outcome", "forward_chat"]

Headers = list[tuple[str, str]]

# Statuses that say the request itself is wrong: the next backend would say
# the same, so the client hears it unchanged.
CLIENT_ERRORS = frozenset({400, 401, 403, 405, 409, 413, 415, 422})
# The most of an error body we read before giving up on it.
MAX_ERROR_BODY_BYTES = 64 * 1024
# How long to wait for an upstream body to end after its [DONE], to keep the connection.
DRAIN_SECONDS = 1.0


class Downstream(Protocol):
    """The client's side of one response, as the proxy writes it."""

    async def start(self, status: int, headers: Headers) -> None: ...
    async def send(self, data: bytes) -> None: ...
    async def end(self) -> None:
        """The response is complete; later calls do nothing."""

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response at once, with its Content-Length."""


@dataclass(slots=True)
class Outcome:
    """What happened to one request: for the log line, metrics and tests."""

    status: int = 0
    backend: str | None = None
    model: str | None = None
    attempts: int = 0
    failures: list[BackendError] = field(default_factory=list)
    ttft_seconds: float | None = None
    error: str | None = None  # a failure after the stream committed


class _PassThrough(Exception):
    """The backend refused the request itself: hand its answer to the client as is."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type


def _nexus_headers(candidate: Candidate, request_id: str, content_type: str) -> Headers:
    headers = [
        ("content-type", content_type),
        ("x-nexus-backend", candidate.backend.name),
        ("x-nexus-backend-type", candidate.backend.type.value),
        ("x-nexus-route-reason", candidate.reason),
        ("x-request-id", request_id),
    ]
    if candidate.fallback_from is not None:
        headers.append(("x-nexus-fallback-model", candidate.model))
    return headers


def sse_error_event(message: str, code: str) -> bytes:
    """One SSE event carrying an OpenAI error; the SDKs raise ``APIError`` on it."""
    body = error_body(message, "upstream_error", code=code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _classify_status(
    response: httpx.Response, candidate: Candidate, registry: Registry
) -> BackendError:
    """Turn a non-200 answer into a failover (returned) or a pass-through (raised)."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ERROR_BODY_BYTES:
            break
    status = response.status_code
    if status in CLIENT_ERRORS:
        raise _PassThrough(status, body, response.headers.get("content-type", "application/json"))
    detail = body[:200].decode("utf-8", "replace").strip()
    if status == 404:
        # The route exists on every type we speak to, so a 404 means the model is gone.
        registry.forget_model(candidate.backend, candidate.model)
    return BackendStatus(candidate.backend.name, status, detail)


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


async def _attempt_stream(
    client: httpx.AsyncClient,
    candidate: Candidate,
    body: bytes,
    request_id: str,
    timeouts: TimeoutSettings,
    registry: Registry,
    downstream: Downstream,
    outcome: Outcome,
) -> None:
    backend = candidate.backend
    request = client.build_request(
        "POST",
        backend.url + "/v1/chat/completions",
        content=body,
        headers={
            **backend_headers(backend, request_id),
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
            response = await client.send(request, stream=True)
            if response.status_code != 200:
                raise await _classify_status(response, candidate, registry)
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                # Answered as JSON despite "stream": true; the client gets it as it is.
                raw = await response.aread()
                raise _PassThrough(200, raw, content_type or "application/json")
            chunks = response.aiter_bytes()
            while not state.started:
                try:
                    read = await anext(chunks)
                except StopAsyncIteration:
                    raise BackendProtocolError(
                        backend.name, "ended the stream before its first token"
                    ) from None
                data, failure = _take_events(parser.feed(read), state, backend.name)
                first += data
                if failure is not None:
                    raise failure
        if first_deadline.cancelled_caught:
            raise BackendTimeout(
                backend.name, f"no first token within {timeouts.first_token_seconds:g} s"
            )

        # The commit point: from here on the client has seen this backend.
        outcome.ttft_seconds = trio.current_time() - started
        registry.record_ttft(backend, outcome.ttft_seconds)
        outcome.backend, outcome.model, outcome.status = backend.name, candidate.model, 200
        await downstream.start(
            200,
            [
                *_nexus_headers(candidate, request_id, "text/event-stream"),
                ("cache-control", "no-cache"),
            ],
        )
        await downstream.send(first)

        # Phase 2, relaying: every read under the idle deadline.
        failure = None
        while not state.done:
            read = b""
            with trio.move_on_after(timeouts.stream_idle_seconds) as idle:
                try:
                    read = await anext(chunks)
                except StopAsyncIteration:
                    if not state.finished:
                        failure = BackendProtocolError(backend.name, "ended the stream early")
                        break
                    # Finished but never said [DONE]: say it for it, as clients expect.
                    await downstream.send(b"data: [DONE]\n\n")
                    state.done = state.drained = True
                    break
                except httpx.HTTPError as exc:
                    failure = translate_httpx_error(backend.name, exc)
                    break
            if idle.cancelled_caught:
                failure = BackendTimeout(
                    backend.name, f"stalled for {timeouts.stream_idle_seconds:g} s mid-stream"
                )
                break
            data, failure = _take_events(parser.feed(read), state, backend.name)
            await downstream.send(data)
            if failure is not None:
                break
        if failure is not None:
            registry.demote(backend, failure.reason)
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


async def _attempt_json(
    client: httpx.AsyncClient,
    candidate: Candidate,
    body: bytes,
    request_id: str,
    timeouts: TimeoutSettings,
    registry: Registry,
    downstream: Downstream,
    outcome: Outcome,
) -> None:
    backend = candidate.backend
    with trio.move_on_after(timeouts.request_seconds) as deadline:
        try:
            async with client.stream(
                "POST",
                backend.url + "/v1/chat/completions",
                content=body,
                headers={
                    **backend_headers(backend, request_id),
                    "content-type": "application/json",
                },
            ) as response:
                if response.status_code != 200:
                    raise await _classify_status(response, candidate, registry)
                answer = await response.aread()
                content_type = response.headers.get("content-type", "application/json")
        except httpx.HTTPError as exc:
            raise translate_httpx_error(backend.name, exc) from exc
    if deadline.cancelled_caught:
        raise BackendTimeout(backend.name, f"no answer within {timeouts.request_seconds:g} s")
    try:
        parsed = json.loads(answer)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or "choices" not in parsed:
        raise BackendProtocolError(
            backend.name, "answered 200 with a body that is not a completion"
        )
    outcome.backend, outcome.model, outcome.status = backend.name, candidate.model, 200
    await downstream.respond(200, _nexus_headers(candidate, request_id, content_type), answer)


async def forward_chat(
    client: httpx.AsyncClient,
    registry: Registry,
    chat: ChatRequest,
    decision: RouteDecision,
    downstream: Downstream,
    *,
    request_id: str,
    timeouts: TimeoutSettings,
    max_attempts: int,
    outcome: Outcome,
) -> None:
    """Try the decision's candidates in order; the first that answers serves.

    Writes the answer (or the backend's own client error) to ``downstream``, and
    what happened to ``outcome`` as it happens (so a cancelled request still
    tells how far it got).

    Raises:
        AllBackendsFailed: every attempt failed before anything reached the client.
    """
    attempt = _attempt_stream if chat.needs.stream else _attempt_json
    for candidate in decision.candidates[:max_attempts]:
        backend = candidate.backend
        outcome.attempts += 1
        backend.in_flight += 1
        try:
            await attempt(
                client,
                candidate,
                chat.body_for(candidate.model),
                request_id,
                timeouts,
                registry,
                downstream,
                outcome,
            )
            return
        except _PassThrough as answer:
            outcome.backend, outcome.model, outcome.status = (
                backend.name,
                candidate.model,
                answer.status,
            )
            await downstream.respond(
                answer.status,
                _nexus_headers(candidate, request_id, answer.content_type),
                answer.body,
            )
            return
        except BackendError as failure:
            outcome.failures.append(failure)
            if not (isinstance(failure, BackendStatus) and failure.upstream_status == 404):
                registry.demote(backend, failure.reason)
        finally:
            backend.in_flight -= 1
    raise AllBackendsFailed(decision.model, outcome.failures)
