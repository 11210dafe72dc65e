"""What every attempt at one backend shares: the client side, the outcome, statuses.

An attempt either writes a whole answer to the `Downstream`, or raises
`BackendError` (the next candidate may serve), or raises `PassThrough` (the
backend refused the request itself; the client hears that answer as it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from nexus_trio.config import TimeoutSettings
from nexus_trio.errors import BackendError, BackendStatus
from nexus_trio.registry import Backend, Registry
from nexus_trio.routing.router import Candidate
from nexus_trio.upstream.client import UpstreamClient
from nexus_trio.upstream.http1 import Http1Response

__all__ = [
    "BEFORE_FIRST_BYTE",
    "CLIENT_ERRORS",
    "MID_STREAM",
    "Attempt",
    "Downstream",
    "Failover",
    "Headers",
    "Outcome",
    "PassThrough",
    "classify_status",
    "nexus_headers",
]

Headers = list[tuple[str, str]]

# Statuses that say the request itself is wrong: the next backend would say
# the same, so the client hears it unchanged.
CLIENT_ERRORS = frozenset({400, 401, 403, 405, 409, 413, 415, 422})
# The most of an error body we read before giving up on it.
MAX_ERROR_BODY_BYTES = 64 * 1024


class Downstream(Protocol):
    """The client's side of one response, as the proxy writes it."""

    async def start(self, status: int, headers: Headers) -> None: ...
    async def send(self, data: bytes) -> None: ...
    async def end(self) -> None:
        """The response is complete; later calls do nothing."""

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response at once, with its Content-Length."""


BEFORE_FIRST_BYTE = "before_first_byte"
MID_STREAM = "mid_stream"


@dataclass(frozen=True, slots=True)
class Failover:
    """A failed attempt, and the backend that took the request over (None: none did)."""

    from_backend: str
    to_backend: str | None
    phase: str  # BEFORE_FIRST_BYTE or MID_STREAM: whether the client had seen anything


@dataclass(slots=True)
class Outcome:
    """What happened to one request, written as it happens (a cancelled request still
    tells how far it got): for the log line, metrics, stats and tests."""

    status: int = 0
    backend: str | None = None  # the backend that committed the answer
    model: str | None = None
    route_reason: str | None = None
    fallback_from: str | None = None  # the model asked for, when a fallback served
    attempts: int = 0
    failures: list[BackendError] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    ttft_seconds: float | None = None
    error: str | None = None  # a failure after the stream committed that ended it
    mid_stream_failovers: int = 0  # continuations on another backend
    hedges_started: int = 0
    hedges_won: int = 0
    usage: dict[str, int] = field(default_factory=dict)  # tokens, as the backends reported
    answer: str | None = None  # the answer's text (for logging.content)
    _unfollowed: list[tuple[str, str]] = field(default_factory=list)  # (backend, phase)

    def started(self, candidate: Candidate) -> None:
        """An attempt at ``candidate`` begins: it takes over from the failures before it."""
        self.attempts += 1
        for name, phase in self._unfollowed:
            self.failovers.append(Failover(name, candidate.backend.name, phase))
        self._unfollowed.clear()

    def failed(self, candidate: Candidate, failure: BackendError) -> None:
        self.failures.append(failure)
        phase = BEFORE_FIRST_BYTE if self.backend is None else MID_STREAM
        self._unfollowed.append((candidate.backend.name, phase))

    def settle(self) -> None:
        """The request is over: failures nothing started after (a hedge that lost, the
        last candidate) were taken over by whoever served, if anyone did."""
        for name, phase in self._unfollowed:
            to = self.backend if self.backend != name else None
            self.failovers.append(Failover(name, to, phase))
        self._unfollowed.clear()

    def served(self, candidate: Candidate, status: int) -> None:
        """``candidate`` answered the client with ``status``."""
        self.backend, self.model, self.status = candidate.backend.name, candidate.model, status
        self.route_reason = candidate.reason
        self.fallback_from = candidate.fallback_from


@dataclass(frozen=True, slots=True)
class Attempt:
    """What every try at a backend for one request shares."""

    client: UpstreamClient
    registry: Registry
    timeouts: TimeoutSettings
    request_id: str
    downstream: Downstream
    outcome: Outcome

    def timeouts_for(self, backend: Backend) -> TimeoutSettings:
        """The routing timeouts, with the backend's own overrides applied."""
        if backend.first_token_seconds is None and backend.stream_idle_seconds is None:
            return self.timeouts
        return replace(
            self.timeouts,
            first_token_seconds=backend.first_token_seconds or self.timeouts.first_token_seconds,
            stream_idle_seconds=backend.stream_idle_seconds or self.timeouts.stream_idle_seconds,
        )


class PassThrough(Exception):
    """The backend refused the request itself: hand its answer to the client as is."""

    def __init__(self, candidate: Candidate, status: int, body: bytes, content_type: str) -> None:
        self.candidate = candidate
        self.status = status
        self.body = body
        self.content_type = content_type


def nexus_headers(candidate: Candidate, request_id: str, content_type: str) -> Headers:
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


async def classify_status(
    response: Http1Response, candidate: Candidate, registry: Registry
) -> BackendError:
    """Turn a non-200 answer into a failover (returned) or a pass-through (raised)."""
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ERROR_BODY_BYTES:
            break
    status = response.status_code
    if status in CLIENT_ERRORS:
        content_type = response.headers.get("content-type", "application/json")
        raise PassThrough(candidate, status, body, content_type)
    detail = body[:200].decode("utf-8", "replace").strip()
    if status == 404:
        # The route exists on every type we speak to, so a 404 means the model is gone.
        registry.forget_model(candidate.backend, candidate.model)
    return BackendStatus(candidate.backend.name, status, detail)
