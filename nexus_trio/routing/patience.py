"""Routing that waits a little when every backend of a model is out of rotation.

A backend taken out by a failed request gets a half-open probe within half a
second, and most come back within a second or two: a request arriving in that
gap is better served a moment late than refused. So when `plan_route` finds
backends for the model but none routable, the request waits — for a health
change in the registry, at most ``routing.wait_for_backend_seconds`` — and
plans again. Everything else (an unknown model, a busy fleet, a request no
backend can take) is answered at once.
"""

from __future__ import annotations

import math

import trio

from nexus_trio.config import RoutingSettings
from nexus_trio.errors import BackendsBusy, NoHealthyBackend
from nexus_trio.registry import Registry
from nexus_trio.routing.requirements import Requirements
from nexus_trio.routing.router import RouteDecision, plan_route

__all__ = ["plan_route_patiently"]


async def plan_route_patiently(
    needs: Requirements, registry: Registry, routing: RoutingSettings
) -> RouteDecision:
    """`plan_route`, waiting up to ``routing.wait_for_backend_seconds`` for a backend to
    come back into rotation when none is in it.

    Raises what `plan_route` raises, once the wait is over.
    """
    try:
        return plan_route(needs, registry.backends, routing, turn=registry.next_turn())
    except NoHealthyBackend as exc:
        if routing.wait_for_backend_seconds <= 0 or isinstance(exc, BackendsBusy):
            raise  # no waiting wanted, or only busy (max_concurrency): answer now
        refused = exc
    changes = registry.subscribe(buffer=math.inf)
    with changes, trio.move_on_after(routing.wait_for_backend_seconds):
        async for event in changes:
            if event.kind == "health" and event.detail != "unhealthy":
                try:
                    return plan_route(needs, registry.backends, routing, turn=registry.next_turn())
                except NoHealthyBackend as exc:
                    refused = exc
    raise refused
