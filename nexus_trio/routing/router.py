"""Which backends may serve a request, best first (pure: no I/O, no mutation).

``plan_route`` reads the fleet as it stands and the routing policy, and returns
every candidate that can serve the request, in the order the proxy should try
them, each with a reason for ``X-Nexus-Route-Reason``. When nothing can serve
it, it raises the error that tells the client why.

Order of candidates: those of the requested model (after aliases) ranked by
the strategy, then those of each fallback model in the configured order. A
fallback is used only when no candidate of the model could answer.

A request that must stay local (``Requirements.local_only``) never gets a cloud
backend as a candidate, of the model or of a fallback (`_eligible`); when only
cloud ones could serve it, it is refused with `NoLocalBackend`.
"""

from __future__ import annotations

import difflib
import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar, overload

from nexus_trio.config import BackendType, RoutingSettings, Strategy, Zone, is_alias_pattern
from nexus_trio.errors import (
    BackendsBusy,
    ContextLengthExceeded,
    ModelCannotServe,
    ModelNotFound,
    NexusError,
    NoHealthyBackend,
    NoLocalBackend,
    RequestError,
)
from nexus_trio.registry import Backend, Capability, ModelInfo, Roster, RosterEntry
from nexus_trio.routing.affinity import Preference
from nexus_trio.routing.requirements import Requirements

__all__ = [
    "HIT",
    "MISS",
    "YIELDED",
    "Candidate",
    "Candidates",
    "RouteDecision",
    "Why",
    "local_roster",
    "nearest_models",
    "plan_route",
    "rank",
]


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
    _, priority, queueing, coldness, warm, load, ttft = why
    shown = f"{ttft * 1000:.0f}ms" if isinstance(ttft, float) else "n/a"
    standing = ",queueing" if queueing else ""
    if coldness:
        standing += ",cold_start"
    elif warm:
        standing += ",warm"
    return f"smart:priority={priority}{standing},load={load:.2f},ttft={shown}"


class Candidates(Sequence[Candidate]):
    """A decision's candidates, best first, each made when it is first read: a request
    reads one or two, where a big fleet ranks a hundred."""

    __slots__ = ("_made", "_pending")

    def __init__(self, runs: Iterable[Iterator[Candidate]]) -> None:
        self._made: list[Candidate] = []
        self._pending = itertools.chain.from_iterable(runs)

    def _reach(self, count: int | None) -> list[Candidate]:
        """The candidates made so far, after making them up to ``count`` (None: all)."""
        made = self._made
        if count is None or count > len(made):
            made += itertools.islice(self._pending, None if count is None else count - len(made))
        return made

    @overload
    def __getitem__(self, index: int) -> Candidate: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Candidate]: ...
    def __getitem__(self, index: int | slice) -> Candidate | Sequence[Candidate]:
        if isinstance(index, slice) or index < 0:
            return self._reach(None)[index]
        return self._reach(index + 1)[index]

    def __len__(self) -> int:
        return len(self._reach(None))

    def __iter__(self) -> Iterator[Candidate]:
        i = 0
        while i < len(self._reach(i + 1)):
            yield self._made[i]
            i += 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Candidates({tuple(self)!r})"


# What conversation affinity did for a decision (`RouteDecision.affinity`).
HIT = "hit"  # the backend that served the conversation goes first
MISS = "miss"  # no backend is known to hold it
YIELDED = "yielded"  # one is, but it is out, full or loaded well above the rest


class RouteDecision(NamedTuple):
    requested: str  # as the client wrote it
    model: str  # after aliases
    candidates: Sequence[Candidate]
    affinity: str | None = None  # HIT, MISS, YIELDED; None when it did not apply


def _incapability(info: ModelInfo, needs: Requirements) -> str | None:
    """Why a backend with this model cannot serve the request, or None if it can (as far
    as we know)."""
    if needs.vision and not info.supports(Capability.VISION):
        return "vision"
    if needs.tools and not info.supports(Capability.TOOLS):
        return "tools"
    if needs.json and not info.supports(Capability.JSON):
        return "json"
    if info.context_length is not None and needs.context_tokens > info.context_length:
        return "context"
    return None


def _kind_fits(info: ModelInfo, needs: Requirements) -> bool:
    """Whether the model does this kind of work, as far as we know: an embeddings request
    needs a model that embeds; any other request one that is not embedding-only."""
    if needs.embedding:
        return info.supports(Capability.EMBEDDING)
    return not info.embeds_only


def _fills_in(backend: Backend, info: ModelInfo) -> bool:
    """Whether ``backend`` can fill in the middle with this model, each in its own way:
    Ollama takes a ``suffix`` (for a model with the ``insert`` capability, or one it did
    not describe); llama.cpp has ``/infill`` (it answers 501 for a model without FIM
    tokens, and the next candidate is tried). vLLM and the rest refuse a suffix."""
    if backend.type is BackendType.OLLAMA:
        return info.supports(Capability.INSERT)
    return backend.type is BackendType.LLAMACPP


def rank(
    entries: Sequence[RosterEntry],
    strategy: Strategy,
    *,
    turn: int,
    rng: random.Random | None = None,
    bounded: bool = True,
) -> Iterator[tuple[Backend, Why]] | None:
    """Those of ``entries`` not at their max_concurrency, ordered by the strategy, best
    first; None when there are none. Equal ones rotate with ``turn``.

    Yields (backend, why) pairs: ``why`` holds the strategy and the numbers it ranked by
    (`Candidate.reason` puts them in words). The numbers are read now; the order as it
    is read, since a request reads one backend of a fleet or a few: the first costs one
    pass over the rows, the rest a sort (`_in_order`). ``bounded`` False says that no
    backend of ``entries`` has a known point where it queues (`Roster.bounded`), so
    ``smart`` need not test for it.
    """
    if strategy is Strategy.RANDOM or strategy is Strategy.ROUND_ROBIN:
        free = [entry[0] for entry in entries if entry[0].in_flight < entry[5]]
        if not free:
            return None
        if strategy is Strategy.RANDOM:
            (rng or random.Random(turn)).shuffle(free)
            return ((b, _RANDOM) for b in free)
        # Each free backend first once per len(free) turns.
        k = turn % len(free)
        why: Why = (strategy, k)
        return ((b, why) for b in (*free[k:], *free[:k]))
    if not entries:
        return None
    # Rotated by the turn, so that the position in ``rotated`` breaks ties: each of the
    # equal ones comes first in turn. Each row: the sort key, the position (unique, so
    # rows never compare further), the backend. Busy backends are left out in the same
    # pass: this runs for every request over every backend that serves the model.
    k = turn % len(entries)
    rotated = (*entries[k:], *entries[:k])
    if strategy is Strategy.PRIORITY:
        rows: list[tuple[Any, ...]] = [
            (b.priority, i, b)
            for i, (b, _, _, _, _, limit) in enumerate(rotated)
            if b.in_flight < limit
        ]
        return _in_order(rows, lambda row: (strategy, row[0]))
    if strategy is Strategy.LEAST_BUSY:
        rows = [
            ((b.in_flight + b.engine_others) / cap, i, b)
            for i, (b, _, _, _, cap, limit) in enumerate(rotated)
            if b.in_flight < limit
        ]
        return _in_order(rows, lambda row: (strategy, row[0]))
    # smart, by weight: the priority tier; in it a backend that would not queue the
    # request (`Backend.queueing`); then one with the model loaded, else the best place
    # to load it (`RosterEntry` coldness); then the load relative to capacity, counting
    # the requests the server reports beyond Nexus's own (other clients'); then how fast
    # it has been starting its answers. A backend without a TTFT sample yet ranks as the
    # best of its peers, so it gets one. (Affinity, between coldness and load, is
    # `_may_prefer`'s.)
    if not bounded:  # no backend here has a known point where it queues: no test for it
        rows = [
            (priority, coldness, (b.in_flight + b.engine_others) / cap,
             b.ttft_ewma_seconds or 0.0, i, b)
            for i, (b, _, priority, coldness, cap, limit) in enumerate(rotated)
            if b.in_flight < limit
        ]  # fmt: skip
        return _in_order(rows, lambda row: _smart_why(row[-1], (row[0], False, *row[1:3])))
    rows = [
        (
            priority,
            (busy := b.in_flight + b.engine_others) >= b.engine_capacity,
            coldness,
            busy / cap,
            b.ttft_ewma_seconds or 0.0,
            i,
            b,
        )
        for i, (b, _, priority, coldness, cap, limit) in enumerate(rotated)
        if b.in_flight < limit
    ]
    return _in_order(rows, lambda row: _smart_why(row[-1], row[:4]))


def _smart_why(backend: Backend, standing: tuple[Any, ...]) -> Why:
    """Why ``backend`` ranks where it does under ``smart``: its (priority, queueing,
    coldness, load), whether the model is known loaded there, and its TTFT."""
    priority, queueing, coldness, load = standing
    warm = not coldness and backend.warm_models is not None
    return (Strategy.SMART, priority, queueing, coldness, warm, load, backend.ttft_ewma_seconds)


_RANDOM: Why = (Strategy.RANDOM,)

Row = TypeVar("Row", bound=tuple[Any, ...])


def _in_order(rows: list[Row], why: Callable[[Row], Why]) -> Iterator[tuple[Backend, Why]] | None:
    """The rows' backends (each row's last item) in the rows' order, or None for no rows."""
    return _sorted_as_read(rows, why) if rows else None


def _sorted_as_read(rows: list[Row], why: Callable[[Row], Why]) -> Iterator[tuple[Backend, Why]]:
    # The first is found in one pass; the rest are sorted only if a second is read.
    best = min(rows)
    yield best[-1], why(best)
    rows.sort()
    for row in itertools.islice(rows, 1, None):
        yield row[-1], why(row)


def _out_because(backend: Backend) -> str:
    """Why a backend is out of rotation, in a few words."""
    if backend.ejected_until is not None:
        return f"ejected after a failed request ({backend.ejection_reason})"
    return backend.health_detail or backend.health.value


def _why_none(model: str, serving: Sequence[Backend], needs: Requirements) -> NexusError:
    """The error for a model whose backends exist but none can take this request.

    A request that must stay local is answered as if the model's cloud backends did not
    exist, except when only they could have served it: then `NoLocalBackend`, never a
    quiet turn to the cloud. A local backend that is down or busy keeps its usual error.
    """
    if not needs.local_only:
        return _why_none_of(model, serving, needs)
    local = [b for b in serving if b.zone is Zone.LOCAL]
    if not local:
        return _no_local(model, "its backends are all cloud ones")
    error = _why_none_of(model, local, needs)
    if isinstance(error, RequestError) and any(
        _could_serve(b, model, needs) for b in serving if b.zone is not Zone.LOCAL
    ):
        # The local ones cannot take this request (capabilities, context), a cloud one could.
        return _no_local(model, f"its local backends cannot ({error.message})")
    return error


def _could_serve(backend: Backend, model: str, needs: Requirements) -> bool:
    """Whether ``backend``'s model can take this request, up or not (as far as we know)."""
    info = backend.models[model]
    fills_in = not needs.fim or _fills_in(backend, info)
    return fills_in and _kind_fits(info, needs) and _incapability(info, needs) is None


def _no_local(model: str, why: str) -> NoLocalBackend:
    return NoLocalBackend(
        f"This request must stay on local backends (X-Nexus-Privacy: local, or its key's "
        f"privacy), and none can serve {model!r}: {why}, and it is never sent to the "
        "cloud. Remove X-Nexus-Privacy: local or use a key allowed to use the cloud, or "
        f"add a local backend of {model!r}."
    )


def _why_none_of(model: str, serving: Sequence[Backend], needs: Requirements) -> NexusError:
    """`_why_none` over ``serving`` as they are, zones aside."""
    routable = [b for b in serving if b.routable]
    if not routable:
        return NoHealthyBackend(
            f"No healthy backend serves {model!r} right now ("
            + ", ".join(f"{b.name}: {_out_because(b)}" for b in serving)
            + "). Retry after a few seconds."
        )
    if needs.fim and not any(_fills_in(b, b.models[model]) for b in routable):
        return ModelCannotServe(
            f"No backend of model {model!r} can fill in the middle (suffix): that takes "
            "Ollama with an insert-capable model, or llama.cpp with a model that has FIM "
            "tokens (its /infill). Send the request without 'suffix', or choose such a model.",
            param="suffix",
        )
    if not any(_kind_fits(b.models[model], needs) for b in routable):
        if needs.embedding:
            return ModelCannotServe(
                f"{model!r} is not an embedding model (its backends say it cannot embed). "
                "Choose an embedding model (see GET /v1/models: capabilities 'embedding').",
                param="model",
            )
        return ModelCannotServe(
            f"{model!r} is an embedding model: it makes embeddings, not text. Send it to "
            "POST /v1/embeddings (Ollama: /api/embed), or choose a chat model.",
            param="model",
        )
    reasons = {_incapability(b.models[model], needs) for b in routable}
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
            if _incapability(b.models[model], needs) == "context"
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


def local_roster(roster: Roster) -> Roster:
    """``roster`` without its cloud backends: what a request that must stay local sees.
    As in every roster, the breaker yields when it has ejected every local backend that
    is available (a cloud one in rotation does not stop it: it may not serve)."""
    local = (b for b in roster.listing if b.zone is Zone.LOCAL)
    return Roster.of(local, roster.model)


def _eligible(roster: Roster, needs: Requirements) -> Sequence[RosterEntry]:
    """The roster's backends that can serve this request, busy or not (`rank` leaves out
    those at their max_concurrency); never a cloud one for a request that must stay local.
    Every route goes through here: the plan, its fallbacks, and every re-plan (failover,
    hedges, continuations), so none of them can reach the cloud with local-only work."""
    entries: Sequence[RosterEntry] = roster.ready
    if needs.local_only:  # one test of a flag for every other request
        entries = [e for e in entries if e[0].zone is Zone.LOCAL]
        if not entries:  # none in rotation: maybe those the breaker yields (`local_roster`)
            roster = local_roster(roster)
            entries = roster.ready
    tokens = needs.context_tokens
    if (needs.vision or needs.tools or needs.json) and roster.capabilities_known:
        entries = [e for e in entries if _incapability(e[1], needs) is None]
    elif roster.shortest_context is not None and tokens > roster.shortest_context:
        entries = [
            e for e in entries if e[1].context_length is None or tokens <= e[1].context_length
        ]
    if needs.fim:
        entries = [e for e in entries if _fills_in(e[0], e[1])]
    if roster.capabilities_known:
        entries = [e for e in entries if _kind_fits(e[1], needs)]
    return entries


def nearest_models(model: str, known: Sequence[str], limit: int = 3) -> list[str]:
    return difflib.get_close_matches(model, known, n=limit, cutoff=0.5)


def plan_route(
    needs: Requirements,
    backends: Sequence[Backend],
    routing: RoutingSettings,
    *,
    turn: int = 0,
    rng: random.Random | None = None,
    rosters: Callable[[str], Roster] | None = None,
    conversation: bool = False,
    affinity: Preference | None = None,
) -> RouteDecision:
    """Every backend that can serve ``needs``, best first, with fallbacks after.

    ``rosters`` gives the roster of a model (`Registry.roster` keeps them between fleet
    changes); without it they are built from ``backends``.

    ``conversation``: the request belongs to a conversation affinity follows; ``affinity``:
    the backend that served it (None: none known). With ``smart`` routing that backend
    goes first when `_may_prefer` lets it; the decision says whether it did.

    Raises:
        ModelNotFound: no backend serves the model (or any of its fallbacks).
        NoHealthyBackend: backends serve it, but none is healthy or free.
        NoLocalBackend: the request must stay local (``needs.local_only``) and only cloud
            backends could serve it.
        ModelCannotServe, ContextLengthExceeded: none can take this request.
    """
    patterns = bool(routing.alias_patterns)
    if patterns:  # a name some backend serves is never redirected by a pattern
        served = rosters(needs.model) if rosters else Roster.of(backends, needs.model)
        patterns = not served.listing
    model = routing.resolve_alias(needs.model, patterns=patterns)
    runs: list[Iterator[Candidate]] = []
    outcome: str | None = None
    if conversation and routing.strategy is Strategy.SMART:
        outcome = MISS if affinity is None else YIELDED
    first_error: NexusError | None = None
    chain: Iterable[str] = (model,)
    if routing.fallbacks:
        # A fallback may name the model itself or repeat one (directly or by alias): each
        # model is tried once, so a backend that just failed is not retried. Fallbacks are
        # looked up under the name the client used and the model it resolves to.
        fallbacks = (*routing.fallbacks.get(needs.model, ()), *routing.fallbacks.get(model, ()))
        chain = dict.fromkeys((model, *(routing.resolve_alias(m) for m in fallbacks)))
    for position, name in enumerate(chain):
        roster = rosters(name) if rosters else Roster.of(backends, name)
        eligible = _eligible(roster, needs)
        ranked = rank(eligible, routing.strategy, turn=turn, rng=rng, bounded=roster.bounded)
        if ranked is None:
            if roster.listing:
                first_error = first_error or _why_none(name, roster.listing, needs)
            continue
        fallback_from = needs.model if position else None
        if fallback_from:
            via = f"fallback:{model}->{name};"
        elif name != needs.model:
            via = f"alias:{needs.model}->{name};"
        else:
            via = ""
        if outcome == YIELDED and not position and affinity is not None:
            preferred = _may_prefer(eligible, affinity.backend, routing.affinity.slack)
            if preferred is not None:
                outcome = HIT
                first = Candidate(preferred[0], name, preferred[1], None, affinity.reason + via)
                runs.append(iter((first,)))
                ranked = (pair for pair in ranked if pair[0] is not preferred[0])
        runs.append(_candidates(ranked, name, fallback_from, via))
    if runs:
        return RouteDecision(needs.model, model, Candidates(runs), outcome)
    if first_error is not None:
        raise first_error
    names = {a for a in routing.aliases if not is_alias_pattern(a)}
    known = sorted({m for b in backends for m in b.models} | names)
    raise ModelNotFound(needs.model, nearest_models(needs.model, known))


def _may_prefer(
    entries: Sequence[RosterEntry], name: str, slack: float
) -> tuple[Backend, Why] | None:
    """The backend ``name`` among ``entries`` with why it ranks, if affinity may send it
    the request: in rotation (not ejected), below its max_concurrency, in the best class
    of those that are by the weights above it (priority, not queueing, warm), and loaded
    no more than ``1 + slack`` times the mean load of them all (counting what the
    servers report), so a conversation never waits where a replica has room."""
    # A few passes of plain comprehensions: cheaper than one loop doing it all.
    mine = next((e for e in entries if e[0].name == name), None)
    if mine is None:
        return None
    backend, _, priority, coldness, cap, limit = mine
    if backend.ejected_until is not None or backend.in_flight >= limit:
        return None
    load = backend.busy / cap
    mean = sum([e[0].busy / e[4] for e in entries]) / len(entries)
    if load > (1 + slack) * mean:
        return None
    standing = (priority, backend.queueing, coldness)
    if any(
        (e[2], e[0].queueing, e[3]) < standing
        and e[0].in_flight < e[5]
        and e[0].ejected_until is None
        for e in entries
    ):
        return None  # a backend of a better class has room
    return backend, _smart_why(backend, (*standing, load))


def _candidates(
    ranked: Iterator[tuple[Backend, Why]], model: str, fallback_from: str | None, via: str
) -> Iterator[Candidate]:
    return (Candidate(backend, model, why, fallback_from, via) for backend, why in ranked)
