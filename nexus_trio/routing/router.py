"""Which backends may serve a request, best first (pure: no I/O, no mutation).

``plan_route`` reads the fleet as it stands and the routing policy, and returns
every candidate that can serve the request, in the order the proxy should try
them, each with a reason for ``X-Nexus-Route-Reason``. When nothing can serve
it, it raises the error that tells the client why.

Order of candidates: those of the requested model (after aliases) ranked by
the strategy, then those of each fallback model in the configured order. A
fallback is used only when no candidate of the model could answer.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from nexus_trio.config import RoutingSettings, Strategy
from nexus_trio.errors import (
    BackendsBusy,
    ContextLengthExceeded,
    ModelCannotServe,
    ModelNotFound,
    NexusError,
    NoHealthyBackend,
)
from nexus_trio.registry import Backend, Capability
from nexus_trio.routing.requirements import Requirements

__all__ = ["Candidate", "RouteDecision", "Why", "nearest_models", "plan_route", "rank"]


# What ranked a backend, as of the decision: the strategy, then its numbers (see `rank`).
Why = tuple[object, ...]


class Candidate(NamedTuple):
    """A backend that can serve the request, and the model to ask it for. A tuple: one is
    made per backend ranked, for every request."""

    backend: Backend
    model: str  # the model id to ask this backend for
    why: Why
    fallback_from: str | None = None  # the model the client asked for, when this is a fallback
    via: str = ""  # "alias:a->b;" or "fallback:a->b;" when the model is not the one asked for

    @property
    def reason(self) -> str:
        """Why this backend, for ``X-Nexus-Route-Reason``; put in words only when asked
        (one candidate per request is), not for every backend ranked."""
        return self.via + _explain(self.why)


def _explain(why: Why) -> str:
    strategy = why[0]
    if strategy is Strategy.RANDOM:
        return "random"
    if strategy is Strategy.ROUND_ROBIN:
        return f"round_robin:turn={why[1]}"
    if strategy is Strategy.PRIORITY:
        return f"priority:{why[1]}"
    if strategy is Strategy.LEAST_BUSY:
        return f"least_busy:load={why[1]:.2f}"
    _, priority, cold, load, ttft = why
    shown = f"{ttft * 1000:.0f}ms" if isinstance(ttft, float) else "n/a"
    return f"smart:priority={priority}{',cold' if cold else ''},load={load:.2f},ttft={shown}"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    requested: str  # as the client wrote it
    model: str  # after aliases
    candidates: tuple[Candidate, ...]


def _incapability(backend: Backend, model: str, needs: Requirements) -> str | None:
    """Why this backend cannot serve the request, or None if it can (as far as we know)."""
    info = backend.models[model]
    if needs.vision and not info.supports(Capability.VISION):
        return "vision"
    if needs.tools and not info.supports(Capability.TOOLS):
        return "tools"
    if needs.json and not info.supports(Capability.JSON):
        return "json"
    if info.context_length is not None and needs.context_tokens > info.context_length:
        return "context"
    return None


def rank(
    backends: Sequence[Backend],
    strategy: Strategy,
    *,
    turn: int,
    rng: random.Random | None = None,
    model: str | None = None,
) -> list[tuple[Backend, Why]]:
    """Order eligible backends by the strategy; equal ones rotate with ``turn``.

    Returns (backend, why) pairs, best first: ``why`` holds the strategy and the
    numbers it ranked by (`Candidate.reason` puts them in words). ``model`` lets
    `smart` prefer backends that have it loaded already.
    """
    n = len(backends)
    if n == 0:
        return []
    if strategy is Strategy.RANDOM:
        shuffled = list(backends)
        (rng or random.Random(turn)).shuffle(shuffled)
        return [(b, (strategy,)) for b in shuffled]
    # Each row: the sort key, the rotation (unique, so rows never compare further), the
    # backend. Built in one pass: this runs for every request over every eligible backend.
    if strategy is Strategy.ROUND_ROBIN:
        why: Why = (strategy, turn % n)
        rows = sorted(((i - turn) % n, b) for i, b in enumerate(backends))
        return [(b, why) for _, b in rows]
    if strategy is Strategy.PRIORITY:
        ranked = sorted((b.priority, (i - turn) % n, b) for i, b in enumerate(backends))
        return [(b, (strategy, priority)) for priority, _, b in ranked]
    if strategy is Strategy.LEAST_BUSY:
        loads = sorted((b.load, (i - turn) % n, b) for i, b in enumerate(backends))
        return [(b, (strategy, load)) for load, _, b in loads]

    # smart: the priority tier first; within it a backend with the model loaded
    # (no load time), then load relative to capacity, then how fast the backend
    # has been starting its answers. A backend without a TTFT sample yet ranks
    # as the best of its peers, so it gets one.
    smart = sorted(
        (
            b.priority,
            model is not None and b.warm_models is not None and model not in b.warm_models,
            b.in_flight / (b.max_concurrency or b.slots or 1),
            b.ttft_ewma_seconds or 0.0,
            (i - turn) % n,
            b,
        )
        for i, b in enumerate(backends)
    )
    return [
        (b, (strategy, priority, cold, load, b.ttft_ewma_seconds))
        for priority, cold, load, _, _, b in smart
    ]


def _why_none(model: str, serving: Sequence[Backend], needs: Requirements) -> NexusError:
    """The error for a model whose backends exist but none can take this request."""
    routable = [b for b in serving if b.routable]
    if not routable:
        return NoHealthyBackend(
            f"No healthy backend serves {model!r} right now ("
            + ", ".join(f"{b.name}: {b.health_detail or b.health.value}" for b in serving)
            + "). Retry after a few seconds."
        )
    reasons = {_incapability(b, model, needs) for b in routable}
    if None in reasons:
        # Some backend could serve it and is only busy: that passes, so say retry.
        return BackendsBusy(
            f"Every backend that can serve this request for {model!r} is at its "
            "max_concurrency. Retry shortly."
        )
    if "context" in reasons:
        longest = max(
            b.models[model].context_length or 0
            for b in routable
            if _incapability(b, model, needs) == "context"
        )
        return ContextLengthExceeded(
            f"The request needs about {needs.context_tokens} tokens but {model!r} accepts at "
            f"most {longest}. Shorten the messages or lower max_tokens.",
            param="messages",
        )
    what = {"vision": "images", "tools": "tools", "json": "JSON response_format"}
    missing = sorted(what[r] for r in reasons if r in what)
    return ModelCannotServe(
        f"No backend serving {model!r} supports {' and '.join(missing)}. Choose a model "
        "that does (see GET /v1/models).",
        param="model",
    )


def _eligible(backends: Sequence[Backend], model: str, needs: Requirements) -> list[Backend]:
    """The backends that serve ``model`` and can take this request now."""
    if needs.vision or needs.tools or needs.json:
        return [
            b
            for b in backends
            if model in b.models
            and b.routable
            and not b.saturated
            and _incapability(b, model, needs) is None
        ]
    # Most requests need only the context: checked inline (this runs over the fleet).
    tokens = needs.context_tokens
    return [
        b
        for b in backends
        if (info := b.models.get(model)) is not None
        and (info.context_length is None or tokens <= info.context_length)
        and b.routable
        and not b.saturated
    ]


def nearest_models(model: str, known: Sequence[str], limit: int = 3) -> list[str]:
    return difflib.get_close_matches(model, known, n=limit, cutoff=0.5)


def plan_route(
    needs: Requirements,
    backends: Sequence[Backend],
    routing: RoutingSettings,
    *,
    turn: int = 0,
    rng: random.Random | None = None,
) -> RouteDecision:
    """Every backend that can serve ``needs``, best first, with fallbacks after.

    Raises:
        ModelNotFound: no backend serves the model (or any of its fallbacks).
        NoHealthyBackend: backends serve it, but none is healthy or free.
        ModelCannotServe, ContextLengthExceeded: none can take this request.
    """
    model = routing.resolve_alias(needs.model)
    candidates: list[Candidate] = []
    first_error: NexusError | None = None
    # A fallback may name the model itself or repeat one (directly or by alias):
    # each model is tried once, so a backend that just failed is not retried.
    # Fallbacks are looked up under the name the client used and the model it resolves to.
    fallbacks = (*routing.fallbacks.get(needs.model, ()), *routing.fallbacks.get(model, ()))
    chain = dict.fromkeys((model, *(routing.resolve_alias(m) for m in fallbacks)))
    for position, name in enumerate(chain):
        eligible = _eligible(backends, name, needs)
        if not eligible:
            serving = [b for b in backends if name in b.models]
            if serving:
                first_error = first_error or _why_none(name, serving, needs)
            continue
        fallback_from = needs.model if position else None
        if fallback_from:
            via = f"fallback:{model}->{name};"
        elif name != needs.model:
            via = f"alias:{needs.model}->{name};"
        else:
            via = ""
        candidates += [
            Candidate(backend, name, why, fallback_from, via)
            for backend, why in rank(eligible, routing.strategy, turn=turn, rng=rng, model=name)
        ]
    if candidates:
        return RouteDecision(needs.model, model, tuple(candidates))
    if first_error is not None:
        raise first_error
    known = sorted({m for b in backends for m in b.models} | set(routing.aliases))
    raise ModelNotFound(needs.model, nearest_models(needs.model, known))
