"""One finished request, as the log line, metrics, stats, history and dashboard see it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nexus_trio.proxy.exchange import Failover, Outcome

__all__ = ["CLIENT_DISCONNECTED", "CLIENT_GONE", "STREAM_INCOMPLETE", "RequestRecord"]

# The status of a request whose client left before the response began (nginx's
# convention): it is counted, but not as Nexus failing.
CLIENT_GONE = 499
# Error codes of requests that ended without an error response of ours.
CLIENT_DISCONNECTED = "client_disconnected"  # the client left before the answer's end
STREAM_INCOMPLETE = "stream_incomplete"  # a backend failed mid-stream; not continued
# The most of a client's model name a record keeps (the name is the client's input).
_MAX_MODEL_CHARS = 200


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What happened to one request. Never prompt text or keys: ``content`` holds the
    prompt and answer only when ``logging.content`` is on, and only the log shows it."""

    request_id: str
    api: str  # the API the client spoke: "chat", "messages", "responses", ...
    model: str | None  # as the client asked, cut to a sane length
    served_model: str | None
    backend: str | None
    status: int
    stream: bool | None
    attempts: int
    failovers: tuple[Failover, ...]
    mid_stream_failovers: int
    fallback_from: str | None
    route_reason: str | None
    hedges_started: int
    hedges_won: int
    latency_seconds: float
    ttft_seconds: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error: str | None  # the error's code: what the client heard, or why it ended early
    error_detail: str | None  # its message (the log line's ``detail``)
    time: float = field(default_factory=time.time)  # when it ended (Unix time)
    content: dict[str, Any] | None = None
    affinity: str | None = None  # what conversation affinity did: hit, miss, yielded

    @classmethod
    def of(
        cls,
        request_id: str,
        api: str,
        model: str | None,
        stream: bool | None,
        outcome: Outcome,
        status: int,
        latency_seconds: float,
        error: str | None,
        error_detail: str | None = None,
        content: dict[str, Any] | None = None,
    ) -> RequestRecord:
        return cls(
            request_id=request_id,
            api=api,
            model=None if model is None else model[:_MAX_MODEL_CHARS],
            served_model=outcome.model,
            backend=outcome.backend,
            status=status,
            stream=stream,
            attempts=outcome.attempts,
            failovers=tuple(outcome.failovers),
            mid_stream_failovers=outcome.mid_stream_failovers,
            fallback_from=outcome.fallback_from,
            route_reason=outcome.route_reason,
            hedges_started=outcome.hedges_started,
            hedges_won=outcome.hedges_won,
            latency_seconds=latency_seconds,
            ttft_seconds=outcome.ttft_seconds,
            prompt_tokens=outcome.usage.get("prompt_tokens"),
            completion_tokens=outcome.usage.get("completion_tokens"),
            error=error,
            error_detail=error_detail,
            content=content,
            affinity=outcome.affinity,
        )

    @property
    def client_gone(self) -> bool:
        """The client left before the answer was complete (not a failure of Nexus)."""
        return self.error == CLIENT_DISCONNECTED

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400 and self.error is None

    def log_fields(self) -> dict[str, Any]:
        """The request log line's fields, in the order they are written."""
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "api": self.api,
            "model": self.model,
            "served_model": self.served_model,
            "backend": self.backend,
            "status": self.status,
            "stream": self.stream,
            "attempts": self.attempts,
            "failovers": len(self.failovers),
            "mid_stream_failovers": self.mid_stream_failovers or None,
            "fallback_from": self.fallback_from,
            "route": self.route_reason,
            "hedges": f"{self.hedges_won}/{self.hedges_started}" if self.hedges_started else None,
            "latency_ms": _ms(self.latency_seconds),
            "ttft_ms": _ms(self.ttft_seconds),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "error": self.error,
            "detail": self.error_detail,
        }
        if self.content is not None:
            fields.update(self.content)
        return fields

    def to_json(self) -> dict[str, Any]:
        """The record in ``/v1/history`` and the dashboard's ``RequestComplete`` events."""
        return {
            "request_id": self.request_id,
            "time": round(self.time, 3),
            "api": self.api,
            "model": self.model,
            "served_model": self.served_model,
            "backend": self.backend,
            "status": self.status,
            "stream": self.stream,
            "attempts": self.attempts,
            "failovers": [
                {"from": f.from_backend, "to": f.to_backend, "phase": f.phase}
                for f in self.failovers
            ],
            "fallback_from": self.fallback_from,
            "route_reason": self.route_reason,
            "hedges_started": self.hedges_started,
            "hedges_won": self.hedges_won,
            "latency_ms": _ms(self.latency_seconds),
            "ttft_ms": _ms(self.ttft_seconds),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "error": self.error,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
