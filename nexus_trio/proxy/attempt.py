"""What every attempt at one backend shares: the client side, the outcome, statuses.

An attempt either writes a whole answer to the `Downstream`, or raises
`BackendError` (the next candidate may serve), or raises `PassThrough` (the
backend refused the request itself; the client hears that answer as it is).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import httpx

from nexus_trio.config import TimeoutSettings
from nexus_trio.errors import BackendError, BackendStatus
from nexus_trio.registry import Backend, Registry
from nexus_trio.routing.router import Candidate

__all__ = [
    "CLIENT_ERRORS",
    "Attempt",
    "Downstream",
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


@dataclass(slots=True)
class Outcome:
    """What happened to one request: for the log line, metrics and tests."""

    status: int = 0
    backend: str | None = None
    model: str | None = None
    attempts: int = 0
    failures: list[BackendError] = field(default_factory=list)
    ttft_seconds: float | None = None
    error: str | None = None  # a failure after the stream committed that ended it
    mid_stream_failovers: int = 0  # continuations on another backend
    hedges_started: int = 0
    hedges_won: int = 0

    def add_to(self, totals: dict[str, int]) -> None:
        """Count this request in running totals (the ones ``/health`` shows)."""
        totals["requests"] = totals.get("requests", 0) + 1
        for key, value in (
            ("failovers", len(self.failures)),
            ("mid_stream_failovers", self.mid_stream_failovers),
            ("hedges_started", self.hedges_started),
            ("hedges_won", self.hedges_won),
        ):
            totals[key] = totals.get(key, 0) + value

    def served(self, candidate: Candidate, status: int) -> None:
        """``candidate`` answered the client with ``status``."""
        self.backend, self.model, self.status = candidate.backend.name, candidate.model, status


@dataclass(frozen=True, slots=True)
class Attempt:
    """What every try at a backend for one request shares."""

    client: httpx.AsyncClient
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
        content_type = response.headers.get("content-type", "application/json")
        raise PassThrough(candidate, status, body, content_type)
    detail = body[:200].decode("utf-8", "replace").strip()
    if status == 404:
        # The route exists on every type we speak to, so a 404 means the model is gone.
        registry.forget_model(candidate.backend, candidate.model)
    return BackendStatus(candidate.backend.name, status, detail)
