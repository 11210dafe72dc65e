"""Active health checks: one probe loop per backend, all under one nursery.

A probe asks the backend for its model list (never a generation), so each
cycle also keeps the models current. Probes are jittered so a large fleet is
not probed in lockstep, and each runs under ``health_check.timeout_seconds``.

A backend demoted by a failed request is probed again soon (backing off from
half a second up to the interval) so it returns to service as soon as it
answers, even when periodic checks are turned off.
"""

from __future__ import annotations

import logging
import random

import httpx
import trio

from nexus_trio.backends.listing import OllamaShowCache, list_models
from nexus_trio.config import HealthCheckSettings
from nexus_trio.errors import BackendError
from nexus_trio.registry import Backend, Health, Registry

__all__ = ["probe_backend", "run_health"]

log = logging.getLogger("nexus.health")

FIRST_RECOVERY_DELAY_SECONDS = 0.5


async def probe_backend(
    registry: Registry,
    client: httpx.AsyncClient,
    backend: Backend,
    settings: HealthCheckSettings,
    cache: OllamaShowCache,
) -> bool:
    """Probe once, fold the result into the registry; True if it answered."""
    failure = f"no answer within {settings.timeout_seconds:g} s"
    with trio.move_on_after(settings.timeout_seconds):
        try:
            models = await list_models(client, backend, cache)
        except BackendError as exc:
            failure = exc.reason
        else:
            registry.set_models(backend, models)
            registry.record_probe(backend, True, recovery_threshold=settings.recovery_threshold)
            return True
    was = backend.health
    registry.record_probe(backend, False, failure, failure_threshold=settings.failure_threshold)
    if backend.health is Health.UNHEALTHY and was is not Health.UNHEALTHY:
        log.warning("backend %s is unhealthy: %s", backend.name, failure)
    return False


async def _watch(
    registry: Registry,
    client: httpx.AsyncClient,
    backend: Backend,
    settings: HealthCheckSettings,
    cache: OllamaShowCache,
) -> None:
    recovery_delay = FIRST_RECOVERY_DELAY_SECONDS
    while True:
        if backend.health is Health.UNHEALTHY:
            wait = min(recovery_delay, settings.interval_seconds)
            recovery_delay *= 2
        elif settings.enabled:
            wait = settings.interval_seconds * random.uniform(0.9, 1.1)
            recovery_delay = FIRST_RECOVERY_DELAY_SECONDS
        else:
            wait = float("inf")  # checks are off: sleep until a request demotes it
            recovery_delay = FIRST_RECOVERY_DELAY_SECONDS
        with trio.move_on_after(wait):
            await backend.recovery_wanted.wait()
            backend.recovery_wanted = trio.Event()
            continue  # demoted just now: start the recovery schedule
        was_down = backend.health is Health.UNHEALTHY
        await probe_backend(registry, client, backend, settings, cache)
        if was_down and backend.health is Health.HEALTHY:
            log.info("backend %s is healthy again", backend.name)


async def run_health(
    registry: Registry,
    client: httpx.AsyncClient,
    settings: HealthCheckSettings,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Probe every backend now, concurrently; then keep watching each until cancelled.

    Reports started once the first round is done, so the HTTP server opens on
    a registry that already knows its models.
    """
    caches = {b.name: OllamaShowCache() for b in registry}
    async with trio.open_nursery() as first_round:
        for backend in registry:
            first_round.start_soon(
                probe_backend, registry, client, backend, settings, caches[backend.name]
            )
    scopes: dict[str, trio.CancelScope] = {}

    async def watch(backend: Backend) -> None:
        cache = caches.setdefault(backend.name, OllamaShowCache())
        with trio.CancelScope() as scope:
            scopes[backend.name] = scope
            try:
                await _watch(registry, client, backend, settings, cache)
            finally:
                if scopes.get(backend.name) is scope:
                    del scopes[backend.name]
                    caches.pop(backend.name, None)

    # Subscribed only now: the first round's own changes need no reaction.
    events = registry.subscribe()
    async with trio.open_nursery() as nursery:
        for backend in registry:
            nursery.start_soon(watch, backend)
        task_status.started()
        async for event in events:
            if event.kind == "backend_added" and event.backend in registry:
                nursery.start_soon(watch, registry.get(event.backend))
            elif event.kind == "backend_removed" and event.backend in scopes:
                scopes[event.backend].cancel()
