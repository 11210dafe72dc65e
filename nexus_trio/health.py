"""Active health checks: one probe loop per backend, all under one nursery.

Each check is cheap and type-specific (`nexus_trio.backends.checkup`) and also
refreshes what the backend serves: its models and their capabilities, what is
loaded, how many slots it has. Checks are jittered, so a large fleet is not
probed in lockstep, and each runs under ``health_check.timeout_seconds``, so a
hanging backend delays nobody but itself.

States go ``unknown → healthy/unhealthy``; after that a backend changes state
only after ``failure_threshold`` failed or ``recovery_threshold`` good checks
in a row.

Passive detection works beside it as a second gate: a proxied request that
fails ejects its backend (`Registry.eject`) for a time that doubles with each
ejection in a row. Each watcher also runs `Registry.run_ejections` for its
backend, which ends the ejection when its time is up. Meanwhile the loop probes
the backend soon, backing off from half a second up to the interval — even with
periodic checks turned off — and one failed probe then marks it unhealthy, so a
server that is really down stays out after its ejection until it answers again.
Probes that pass never end an ejection early: a server whose health endpoint
answers while its chat fails would otherwise be back, and fail a request, every
half second.
"""

from __future__ import annotations

import logging
import math
import random

import httpx
import trio

from nexus_trio.backends.checkup import check_with_deadline
from nexus_trio.backends.listing import OllamaShowCache
from nexus_trio.config import EngineLoadSettings, HealthCheckSettings
from nexus_trio.errors import BackendError
from nexus_trio.load_watch import watch_engine_load
from nexus_trio.registry import Backend, Health, Registry

__all__ = ["probe_backend", "run_health"]

log = logging.getLogger("nexus.health")

FIRST_RECOVERY_DELAY_SECONDS = 0.5
# Its own generator: probes are jittered without touching the global random state.
_jitter = random.Random()


async def probe_backend(
    registry: Registry,
    client: httpx.AsyncClient,
    backend: Backend,
    settings: HealthCheckSettings,
    cache: OllamaShowCache,
) -> bool:
    """Check once and fold the result into the registry; True if it answered."""
    was = backend.health
    try:
        checkup = await check_with_deadline(client, backend, cache, settings.timeout_seconds)
    except BackendError as exc:
        registry.record_probe(
            backend, False, exc.reason, failure_threshold=settings.failure_threshold
        )
        if backend.health is Health.UNHEALTHY and was is not Health.UNHEALTHY:
            log.warning("backend %s is unhealthy: %s", backend.name, exc.reason)
        return False
    registry.record_checkup(backend, checkup)
    registry.record_probe(backend, True, recovery_threshold=settings.recovery_threshold)
    if backend.health is Health.HEALTHY and was is Health.UNHEALTHY:
        log.info("backend %s is healthy again", backend.name)
    return True


async def _watch(
    registry: Registry,
    client: httpx.AsyncClient,
    backend: Backend,
    settings: HealthCheckSettings,
    cache: OllamaShowCache,
) -> None:
    """Probe one backend for as long as it is registered."""
    if backend.last_checked is None:
        await probe_backend(registry, client, backend, settings, cache)
    recovery_delay = FIRST_RECOVERY_DELAY_SECONDS
    while True:
        if not backend.sources:
            wait = math.inf  # it said goodbye: nothing to check until it is announced again
        elif backend.health is Health.UNHEALTHY or backend.ejected_until is not None:
            wait = min(recovery_delay, settings.interval_seconds)
            recovery_delay *= 2
        else:
            recovery_delay = FIRST_RECOVERY_DELAY_SECONDS
            # Checks off: sleep until a failed request ejects it.
            wait = (
                settings.interval_seconds * _jitter.uniform(0.9, 1.1)
                if settings.enabled
                else math.inf
            )
        with trio.move_on_after(wait):
            await backend.recovery_wanted.wait()
            backend.recovery_wanted = trio.Event()
            # Ejected or marked unhealthy just now: start the half-open schedule over.
            recovery_delay = FIRST_RECOVERY_DELAY_SECONDS
            if backend.health is Health.UNKNOWN:  # revived: check it now
                await probe_backend(registry, client, backend, settings, cache)
            continue
        await probe_backend(registry, client, backend, settings, cache)


async def run_health(
    registry: Registry,
    client: httpx.AsyncClient,
    settings: HealthCheckSettings,
    engine_load: EngineLoadSettings | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Check every backend now, concurrently; then watch each one until cancelled: its
    probes, the end of its ejections, and its engine's load (`watch_engine_load`, with
    ``engine_load``; the defaults when None).

    Reports started once the first round is done, so the HTTP server opens on
    a registry that already knows its models. Backends added later get their
    own watcher at once; removed ones lose it.
    """
    load_settings = engine_load or EngineLoadSettings()
    # Unbounded: this subscriber must see every backend come and go.
    events = registry.subscribe(buffer=math.inf)
    caches: dict[str, OllamaShowCache] = {}
    scopes: dict[str, trio.CancelScope] = {}

    async with trio.open_nursery() as first_round:
        for backend in registry:
            cache = caches.setdefault(backend.name, OllamaShowCache())
            first_round.start_soon(probe_backend, registry, client, backend, settings, cache)

    async def watch(backend: Backend) -> None:
        cache = caches.setdefault(backend.name, OllamaShowCache())
        with trio.CancelScope() as scope:
            scopes[backend.name] = scope
            try:
                async with trio.open_nursery() as watching:
                    watching.start_soon(registry.run_ejections, backend)
                    watching.start_soon(watch_engine_load, registry, client, backend, load_settings)
                    await _watch(registry, client, backend, settings, cache)
            finally:
                # Unless a backend of the same name has been added since, its state goes.
                if scopes.get(backend.name, scope) is scope:
                    scopes.pop(backend.name, None)
                    caches.pop(backend.name, None)

    async with trio.open_nursery() as nursery:
        for backend in registry:
            nursery.start_soon(watch, backend)
        task_status.started()
        async for event in events:
            if event.kind == "backend_added" and event.backend not in scopes:
                if event.backend in registry:
                    nursery.start_soon(watch, registry.get(event.backend))
            elif event.kind == "backend_removed" and event.backend in scopes:
                scopes.pop(event.backend).cancel()
