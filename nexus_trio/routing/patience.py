"""Routing that waits a little when every backend of a model is out of rotation.

A backend taken out by a failed request is ejected for a few seconds at first
(``health_check.ejection_base_seconds``), and one that a probe found down
answers again soon after it restarts: a request arriving in that gap (or whose
last candidate just failed) is better served a moment late than refused. So
when nothing is in rotation, the request waits — for a change in the registry
that may bring a backend back (its health recovered, its ejection ended), at
most ``routing.wait_for_backend_seconds`` — and plans again. Everything else
(an unknown model, a request no backend can take) is answered at once.

A busy fleet — every backend that could serve the request is at its
``max_concurrency`` — is not refused either when a queue is given: the request
waits in it (`nexus_trio.policy.queue.FairQueue`, fair between priorities and
keys) until a freed slot wakes it, and plans again; ``[queue] max_size`` waiting
already answers 429 (`QueueFull`), ``max_wait_seconds`` waited answers 503
(`QueueTimeout`). Without a queue (or ``max_size = 0``), busy is 503 at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import trio

from nexus_trio.config import RoutingSettings, Zone
from nexus_trio.errors import BackendsBusy, NoHealthyBackend, NoLocalBackend, QueueTimeout
from nexus_trio.policy.keys import ANONYMOUS, Caller
from nexus_trio.policy.queue import FairQueue
from nexus_trio.registry import Backend, Registry
from nexus_trio.routing.affinity import ConversationKey, prefer
from nexus_trio.routing.requirements import Requirements
from nexus_trio.routing.router import Candidate, RouteDecision, plan_route

__all__ = ["plan_route_patiently", "wait_for_rotation"]

T = TypeVar("T")


async def wait_for_rotation(
    registry: Registry, look: Callable[[], T | None], seconds: float
) -> T | None:
    """``look()`` now, and again at each backend coming back into rotation, for up to
    ``seconds``; its first answer that is not None, or None."""
    if (found := look()) is not None:
        return found  # the common case: no subscription needed
    # Subscribed before looking again, so a backend that returns in between is not missed.
    with registry.subscribe(buffer=math.inf) as changes:
        if (found := look()) is not None:
            return found
        with trio.move_on_after(seconds):
            async for event in changes:
                if event.may_bring_back and (found := look()) is not None:
                    return found
    return None


async def plan_route_patiently(
    needs: Requirements,
    registry: Registry,
    routing: RoutingSettings,
    *,
    admit: Callable[[Candidate], bool] | None = None,
    wait_seconds: float | None = None,
    conversation: ConversationKey | None = None,
    caller: Caller = ANONYMOUS,
    queue: FairQueue | None = None,
) -> RouteDecision:
    """`plan_route`, waiting up to ``wait_seconds`` (``routing.wait_for_backend_seconds``
    by default) for a backend to come back into rotation when none is in it.

    ``conversation``, when given, is what the request is known by for affinity: the
    backend the registry's table says served it is preferred (`plan_route`).

    ``caller`` is who sent the request (its key's name and priority): its place in
    ``queue``, where it waits when every backend that could serve it is busy (None, or
    a queue of ``max_size`` 0: busy is refused at once).

    ``admit``, when given, keeps only the candidates it accepts (a failover leaving out
    the backends it has tried); a decision with none left counts as none in rotation.

    Raises what `plan_route` raises, once the wait is over; `NoHealthyBackend` when
    candidates were planned but ``admit`` accepted none; `QueueFull` when the queue is
    full, `QueueTimeout` when its wait is over.
    """
    wait = routing.wait_for_backend_seconds if wait_seconds is None else wait_seconds
    refused: list[NoHealthyBackend] = []

    def look() -> RouteDecision | None:
        preferred = None
        if conversation is not None:
            preferred = prefer(registry.affinity, needs.model, conversation, trio.current_time())
        try:
            decision = plan_route(
                needs, registry.backends, routing, turn=registry.next_turn(),
                rosters=registry.roster, conversation=conversation is not None,
                affinity=preferred,
            )  # fmt: skip
        except NoHealthyBackend as exc:
            if isinstance(exc, (BackendsBusy, NoLocalBackend)) or wait <= 0:
                # Busy is not down, no local backend will not come back by waiting, and
                # no waiting was wanted: answer now.
                raise
            refused.append(exc)
            return None
        if admit is not None:
            kept = [c for c in decision.candidates if admit(c)]
            if not kept:
                refused.append(NoHealthyBackend(
                    f"Every backend that could serve {needs.model!r} has been tried or is "
                    "out of rotation; retry in a few seconds."
                ))  # fmt: skip
                return None
            decision = decision._replace(candidates=kept)
        if queue is not None and queue.enabled and _all_queueing(decision):
            # Each would queue it inside itself (slots full, or a reported queue): wait
            # in Nexus's fair queue instead, woken when one has room again.
            raise BackendsBusy(
                f"Every backend that can serve {needs.model!r} is full: its own queue is "
                "not empty. Retry shortly."
            )
        return decision

    try:
        decision = await wait_for_rotation(registry, look, wait)
    except BackendsBusy:
        if queue is None or not queue.enabled:
            raise
        # No checkpoint between the busy plan and joining the queue: no freed slot is missed.
        decision = await _wait_in_queue(queue, caller, _wants(needs, routing), look)
    if decision is None:
        raise refused[-1]
    return decision


def _all_queueing(decision: RouteDecision) -> bool:
    """Whether every candidate would have to queue the request inside its server. Cheap
    in the common case: the first candidate's answer settles it when it has room."""
    return all(c.backend.queueing for c in decision.candidates)


async def _wait_in_queue(
    queue: FairQueue,
    caller: Caller,
    wants: Callable[[Backend], bool],
    look: Callable[[], RouteDecision | None],
) -> RouteDecision | None:
    """Wait in ``queue`` as ``caller``, planning with ``look`` each time a freed slot
    wakes this request, until a plan finds room (or ``look`` finds none in rotation:
    None). It leaves the queue however it ends (served, timed out, cancelled).

    Raises:
        QueueFull: the queue is full.
        QueueTimeout: ``queue.max_wait_seconds`` passed.
    """
    with queue.enter(caller.name, caller.priority, wants) as place:
        with trio.move_on_after(queue.max_wait_seconds):
            while True:
                await place.wait_woken()
                try:
                    decision = look()
                except BackendsBusy:
                    place.lost_race()  # someone else took the slot: wait on at the head
                    continue
                if decision is not None:
                    place.served(decision.candidates[0].backend)
                return decision
    raise QueueTimeout(
        f"Waited {queue.max_wait_seconds:g}s in the queue and every backend that can serve "
        "this request is still at its max_concurrency. Retry in a few seconds."
    )


def _wants(needs: Requirements, routing: RoutingSettings) -> Callable[[Backend], bool]:
    """Whether a slot freed on a backend may serve ``needs``: the backend lists a model
    the request may be routed to (its own, what its alias names, its fallbacks). Loose
    on purpose: a woken request plans again, and a slot it cannot use passes on."""
    names = {needs.model, routing.resolve_alias(needs.model)}
    for model in tuple(names):
        names.update(routing.resolve_alias(m) for m in routing.fallbacks.get(model, ()))
    wanted = frozenset(names)
    if needs.local_only:  # a cloud backend's slot is never this request's
        return lambda backend: backend.zone is Zone.LOCAL and not wanted.isdisjoint(backend.models)
    return lambda backend: not wanted.isdisjoint(backend.models)
