"""One client request as the proxy works on it: what every attempt shares, and what
happened to it (`Outcome`, read by the request record when it is over)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nexus_trio.config import TimeoutSettings
from nexus_trio.errors import BackendError
from nexus_trio.proxy.writer import Writer
from nexus_trio.registry import Backend, Registry
from nexus_trio.routing.affinity import ConversationKey
from nexus_trio.routing.router import Candidate
from nexus_trio.upstream.client import UpstreamClient

__all__ = ["BEFORE_FIRST_BYTE", "MID_STREAM", "Exchange", "Failover", "Outcome"]


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
    affinity: str | None = None  # what conversation affinity did: hit, miss, yielded
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
class Exchange:
    """One client request being proxied: the upstream client, the registry, the writer
    of the client's response, and the outcome. Built once per request; every attempt at a
    backend (failover, hedge, continuation) shares it."""

    client: UpstreamClient
    registry: Registry
    timeouts: TimeoutSettings
    request_id: str
    writer: Writer
    outcome: Outcome
    # Backend name -> its `Backend.returns` when this request last tried it: a backend that
    # failed is not tried again, by a failover or a continuation, until it has come back.
    tried: dict[str, int] = field(default_factory=dict)
    # What the request is known by for conversation affinity (None: affinity is off, or
    # it is no conversation), and the model the client named: the backend that answers
    # it is remembered under them.
    conversation: ConversationKey | None = None
    model: str = ""

    def timeouts_for(self, backend: Backend, model: str) -> TimeoutSettings:
        """The routing timeouts for ``model`` at ``backend``: with the backend's own
        overrides applied, and ``cold_start_seconds`` more for the first token where the
        model is known not to be loaded (the server loads it first)."""
        cold = not backend.is_warm(model)
        if not cold and backend.first_token_seconds is None and backend.stream_idle_seconds is None:
            return self.timeouts
        first_token = backend.first_token_seconds or self.timeouts.first_token_seconds
        return replace(
            self.timeouts,
            first_token_seconds=first_token + (self.timeouts.cold_start_seconds if cold else 0),
            stream_idle_seconds=backend.stream_idle_seconds or self.timeouts.stream_idle_seconds,
        )
