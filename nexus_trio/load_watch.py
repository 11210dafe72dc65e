"""Read each backend's own account of its load, on a fast cycle of its own.

Nexus knows the requests it sent; the server knows all of them. A vLLM with forty
requests of other clients waiting looks idle to a Nexus that sent none, and an
Ollama that has unloaded a model costs seconds to the next request for it. So
every ``routing.engine_load.interval_seconds`` (1 s), each backend whose type tells
its load (`nexus_trio.backends.engine`) is read once, under
``routing.engine_load.timeout_seconds``, and the report goes to the registry
(`Registry.record_engine_report`), where routing reads it. Never on a request's
path: a request reads what the last cycle left.

A read that fails or times out leaves the last report standing for `KEEP_READS`
intervals (a server too loaded to answer one read in time must not look idle), then
clears it (older numbers would steer requests on a stale picture); its health checks
decide whether it is down. A path
the server does not expose is not asked again; a backend that exposes none is left
alone. The health watcher of each backend runs this beside its probes
(`nexus_trio.health`), so it lives exactly as long as the backend is watched.
"""

from __future__ import annotations

import logging
import random

import httpx
import trio

from nexus_trio.backends.engine import ENGINE_PATHS, read_engine_report
from nexus_trio.config import EngineLoadSettings
from nexus_trio.errors import BackendError
from nexus_trio.registry import Backend, EngineReport, Registry

__all__ = ["KEEP_READS", "watch_engine_load"]

log = logging.getLogger("nexus.load")

# Intervals a report still holds when reads of it fail: a server too busy to answer one
# read in time is no idle server; one that has not answered for this long says nothing.
KEEP_READS = 3
# Its own generator: the reads are jittered without touching the global random state.
_jitter = random.Random()


async def watch_engine_load(
    registry: Registry, client: httpx.AsyncClient, backend: Backend, settings: EngineLoadSettings
) -> None:
    """Read ``backend``'s load every interval until cancelled; return at once when it is
    off or the type tells nothing, and once the server exposes none of its paths."""
    paths = list(ENGINE_PATHS.get(backend.type, ())) if settings.enabled else []
    last_read = trio.current_time()
    while paths:
        report: EngineReport | None = None
        in_flight_before = backend.in_flight
        if backend.available:  # an unhealthy one is its health checks' business
            path, parse = paths[0]
            try:
                with trio.move_on_after(settings.timeout_seconds):
                    report = await read_engine_report(client, backend, path, parse)
                    if report is None:
                        log.debug("backend %s does not expose %s", backend.name, path)
                        paths.pop(0)
                        continue  # the next path now
            except BackendError as exc:
                log.debug("backend %s: reading its load failed: %s", backend.name, exc.reason)
        now = trio.current_time()
        if report is not None:
            last_read = now
            registry.record_engine_report(backend, report, in_flight_before)
        elif now - last_read >= KEEP_READS * settings.interval_seconds:
            registry.record_engine_report(backend, None)
        await trio.sleep(settings.interval_seconds * _jitter.uniform(0.9, 1.1))
    if settings.enabled and backend.type in ENGINE_PATHS:
        log.info("backend %s reports no load (%s): Nexus counts its own", backend.name,
                 ", ".join(p for p, _ in ENGINE_PATHS[backend.type]))  # fmt: skip
