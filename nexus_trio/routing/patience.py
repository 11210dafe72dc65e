"""Routing that waits a little when every backend of a model is out of rotation.

A backend taken out by a failed request is ejected for a few seconds at first
(``health_check.ejection_base_seconds``), and one that a probe found down
answers again soon after it restarts: a request arriving in that gap (or whose
last candidate just failed) is better served a moment late than refused. So
when nothing is in rotation, the request waits — for a change in the registry
that may bring a backend back (its health recovered, its ejection ended), at
most ``routing.wait_for_backend_seconds`` — and plans again. Everything else
(an unknown model, a busy fleet, a request no backend can take) is answered at
once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import trio

from nexus_trio.config import RoutingSettings
from nexus_trio.errors import BackendsBusy, NoHealthyBackend
from nexus_trio.policy.keys import ANONYMOUS, Caller
from nexus_trio.registry import Registry
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
) -> RouteDecision:
    """`plan_route`, waiting up to ``wait_seconds`` (``routing.wait_for_backend_seconds``
    by default) for a backend to come back into rotation when none is in it.

    ``conversation``, when given, is what the request is known by for affinity: the
    backend the registry's table says served it is preferred (`plan_route`).

    ``caller`` is who sent the request (its key's name and priority).

    ``admit``, when given, keeps only the candidates it accepts (a failover leaving out
    the backends it has tried); a decision with none left counts as none in rotation.

    Raises what `plan_route` raises, once the wait is over; `NoHealthyBackend` when
    candidates were planned but ``admit`` accepted none.
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
            if isinstance(exc, BackendsBusy) or wait <= 0:
                raise  # busy is not down, and no waiting was wanted: answer now
            refused.append(exc)
            return None
        if admit is None:
            return decision
        kept = [c for c in decision.candidates if admit(c)]
        if kept:
            return decision._replace(candidates=kept)
        refused.append(NoHealthyBackend(
            f"Every backend that could serve {needs.model!r} has been tried or is out of "
            "rotation; retry in a few seconds."
        ))  # fmt: skip
        return None

    decision = await wait_for_rotation(registry, look, wait)
    if decision is None:
        raise refused[-1]
    return decision
