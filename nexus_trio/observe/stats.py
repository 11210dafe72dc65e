"""Running totals of every request, overall, per backend, per model and per API (pure).

What ``/v1/stats`` returns and the dashboard shows. Streams count like every
other request; a request that failed is counted as failed, with its error's
code, and a client that left is counted apart from both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nexus_trio.observe.record import RequestRecord
from nexus_trio.proxy.exchange import BEFORE_FIRST_BYTE, MID_STREAM

__all__ = ["Stats", "Tally"]


@dataclass(slots=True)
class Tally:
    """Counts and sums for one slice of the traffic (everything, a backend, a model)."""

    requests: int = 0
    ok: int = 0
    failed: int = 0
    client_gone: int = 0
    streamed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_sum: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: int = 0

    def add(self, record: RequestRecord) -> None:
        self.requests += 1
        if record.client_gone:
            self.client_gone += 1
        elif record.ok:
            self.ok += 1
        else:
            self.failed += 1
        self.streamed += bool(record.stream)
        self.prompt_tokens += record.prompt_tokens or 0
        self.completion_tokens += record.completion_tokens or 0
        self.latency_sum += record.latency_seconds
        if record.ttft_seconds is not None:
            self.ttft_sum += record.ttft_seconds
            self.ttft_count += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failed": self.failed,
            "client_gone": self.client_gone,
            "streamed": self.streamed,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "avg_latency_ms": _avg_ms(self.latency_sum, self.requests),
            "avg_ttft_ms": _avg_ms(self.ttft_sum, self.ttft_count),
        }


@dataclass(slots=True)
class Stats:
    """Totals since start. ``model`` keys are bounded by the caller (an unknown name
    is counted as ``"unknown"``, never as the client's string)."""

    total: Tally = field(default_factory=Tally)
    backends: dict[str, Tally] = field(default_factory=dict)
    backend_failures: Counter[str] = field(default_factory=Counter)
    models: dict[str, Tally] = field(default_factory=dict)
    apis: dict[str, Tally] = field(default_factory=dict)  # by the API the client spoke
    errors: Counter[str] = field(default_factory=Counter)
    failovers: Counter[str] = field(default_factory=Counter)  # by phase
    fallbacks: int = 0
    hedges_started: int = 0
    hedges_won: int = 0

    def add(self, record: RequestRecord, model: str) -> None:
        """Count ``record``, under the (bounded) model name ``model``."""
        self.total.add(record)
        if record.backend is not None:
            self.backends.setdefault(record.backend, Tally()).add(record)
        self.models.setdefault(model, Tally()).add(record)
        self.apis.setdefault(record.api, Tally()).add(record)
        if record.error is not None:
            self.errors[record.error] += 1
        for failover in record.failovers:
            self.backend_failures[failover.from_backend] += 1
            if failover.to_backend is not None:  # else nothing took over: no failover
                self.failovers[failover.phase] += 1
        self.fallbacks += record.fallback_from is not None
        self.hedges_started += record.hedges_started
        self.hedges_won += record.hedges_won

    def totals(self) -> dict[str, int]:
        """The headline numbers (``/health`` shows them)."""
        return {
            "requests": self.total.requests,
            "failed": self.total.failed,
            "failovers": sum(self.failovers.values()),
            "mid_stream_failovers": self.failovers[MID_STREAM],
            "fallbacks": self.fallbacks,
            "hedges_started": self.hedges_started,
            "hedges_won": self.hedges_won,
        }

    def to_json(self) -> dict[str, Any]:
        backends = {
            name: {**tally.to_json(), "failed_attempts": self.backend_failures[name]}
            for name, tally in sorted(self.backends.items())
        }
        for name in sorted(self.backend_failures.keys() - self.backends.keys()):
            backends[name] = {**Tally().to_json(), "failed_attempts": self.backend_failures[name]}
        return {
            **self.total.to_json(),
            "failovers": {
                "before_first_byte": self.failovers[BEFORE_FIRST_BYTE],
                "mid_stream": self.failovers[MID_STREAM],
            },
            "fallbacks": self.fallbacks,
            "hedges": {"started": self.hedges_started, "won": self.hedges_won},
            "errors": dict(sorted(self.errors.items())),
            "backends": backends,
            "models": {name: tally.to_json() for name, tally in sorted(self.models.items())},
            "apis": {name: tally.to_json() for name, tally in sorted(self.apis.items())},
        }


def _avg_ms(total_seconds: float, count: int) -> float | None:
    return round(total_seconds * 1000 / count, 1) if count else None
