"""The candidates one request may still try, in order, within its attempt budget."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Sequence

import trio

from nexus_trio.config import RoutingSettings
from nexus_trio.errors import NexusError
from nexus_trio.registry import Registry
from nexus_trio.routing.patience import plan_route_patiently
from nexus_trio.routing.requirements import Requirements
from nexus_trio.routing.router import Candidate, local_roster

__all__ = ["CandidateQueue", "Replan", "replanner"]

# Plans the route again: the candidates that pass the filter, waiting up to the given
# seconds for one to come into rotation; none when nothing came.
Replan = Callable[[Callable[[Candidate], bool], float], Awaitable[Sequence[Candidate]]]


class CandidateQueue:
    """The candidates of one request, in order, within its attempt budget.

    Each backend is tried at most once per stay in rotation: one that failed
    (and was taken out) is tried again only after it has come back, and only once
    the planned candidates have run out. Then the route is planned again from the
    registry as it is now — waiting a moment (``routing.wait_for_backend_seconds``)
    if nothing is in rotation — untried backends first. Two limits end it:
    ``routing.max_attempts`` attempts, and no new attempt after
    ``routing.failover_timeout_seconds`` (0: no limit). What the request has tried
    (``tried``) is shared by every queue of the request, continuations included.
    ``local_only``: the request must stay local, so the breaker's yield counts its local
    backends only.
    """

    def __init__(
        self,
        planned: Sequence[Candidate],
        replan: Replan,
        routing: RoutingSettings,
        registry: Registry,
        tried: dict[str, int],
        *,
        local_only: bool = False,
    ) -> None:
        self._queue: Iterator[Candidate] = iter(planned)  # read as needed (see `Candidates`)
        self._replan = replan
        self._registry = registry
        self.budget = routing.max_attempts
        self._wait_seconds = routing.wait_for_backend_seconds
        timeout = routing.failover_timeout_seconds
        self._deadline = trio.current_time() + timeout if timeout > 0 else math.inf
        self.tried = tried  # backend name -> its `Backend.returns` when last tried
        self.tried_here = 0  # attempts this queue started
        self._local_only = local_only  # the request must stay local (`Requirements`)

    def _may_try(self, candidate: Candidate) -> bool:
        backend = candidate.backend
        seen = self.tried.get(backend.name)
        if seen is not None and backend.returns <= seen:
            return False  # it failed this request and has not come back since
        if backend.routable:
            return True
        # Ejected since it was planned: only while the breaker has ejected every backend
        # of the model (then routing serves from those rather than none); for a request
        # that must stay local, every local one (a cloud one in rotation may not serve it).
        roster = self._registry.roster(candidate.model)
        if self._local_only:
            roster = local_roster(roster)
        ready = roster.ready
        return backend.available and bool(ready) and ready[0][0].ejected_until is not None

    async def next(self) -> Candidate | None:
        """The next candidate to try, or None when none is left or the budget is spent."""
        while self.budget > 0 and trio.current_time() < self._deadline:
            for candidate in self._queue:
                if self._may_try(candidate):
                    self.tried[candidate.backend.name] = candidate.backend.returns
                    self.budget -= 1
                    self.tried_here += 1
                    return candidate
            wait = min(self._wait_seconds, self._deadline - trio.current_time())
            fresh = await self._replan(self._may_try, wait)
            if not fresh:
                return None
            # Backends this request has not tried yet go first (the sort is stable).
            self._queue = iter(sorted(fresh, key=lambda c: c.backend.name in self.tried))
        return None


def replanner(
    needs: Requirements,
    registry: Registry,
    routing: RoutingSettings,
    keep: Callable[[Candidate], bool] | None = None,
) -> Replan:
    """A `Replan` for ``needs`` that keeps only the candidates ``keep`` accepts."""

    async def replan(may_try: Callable[[Candidate], bool], wait: float) -> Sequence[Candidate]:
        def admit(candidate: Candidate) -> bool:
            return may_try(candidate) and (keep is None or keep(candidate))

        try:
            decision = await plan_route_patiently(
                needs, registry, routing, admit=admit, wait_seconds=wait
            )
        except NexusError:
            return []
        return decision.candidates

    return replan
