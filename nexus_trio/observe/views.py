"""The fleet as the dashboard and its WebSocket show it (pure).

Never a backend's URL or key: the dashboard is served on the API's port to
whoever can reach it. Names are data, sent as JSON strings; the page renders
them as text (mDNS names are chosen by whoever announces).
"""

from __future__ import annotations

import time
from typing import Any

from nexus_trio.registry import Backend, EngineReport

__all__ = ["backend_view", "engine_view"]


def backend_view(backend: Backend, now: float, wall: float | None = None) -> dict[str, Any]:
    """One backend: status, type, where it was found, models, load, latency, and what
    the server itself said of its load (``engine``, see `engine_view`).

    ``now`` is trio.current_time(): an ejected backend's return is sent as seconds
    from now (``ejected_seconds``), which the page counts down on its own clock, so
    no clock of this machine's has to agree with the browser's. ``wall`` is
    time.time() (by default, read here), what the servers' unload times are counted from.
    """
    ttft = backend.ttft_ewma_seconds
    left = backend.ejected_seconds_left(now)
    return {
        "name": backend.name,
        "type": backend.type.value,
        "zone": backend.zone.value,
        "status": backend.status,
        "health": backend.health.value,
        "routable": backend.routable,
        "detail": backend.status_detail or None,
        "ejected_seconds": None if left is None else round(left, 1),
        "ejections": backend.ejections,
        "source": backend.source,
        "sources": sorted(backend.sources),
        "priority": backend.priority,
        "models": sorted(backend.models),
        "in_flight": backend.in_flight,
        "latency_ms": None if ttft is None else round(ttft * 1000, 1),
        "engine": engine_view(backend.engine, time.time() if wall is None else wall),
    }


def engine_view(report: EngineReport | None, wall: float) -> dict[str, Any] | None:
    """What a server last said of its load; None when it said nothing (its type tells
    nothing, or the last read failed). Within it, None is what the server did not say:

    - ``running``, ``waiting``: requests it is generating, and queued inside it;
    - ``kv_cache_usage``: the share of its KV cache in use, 0 to 1;
    - ``slots``: requests it runs at once (llama.cpp);
    - ``loaded``: the models it holds in memory, by name, each with
      ``expires_in_seconds``, the whole seconds from ``wall`` (time.time()) until the
      server unloads it if unused (None: it gave no time); None when it does not tell.
    """
    if report is None:
        return None
    loaded = None
    if report.loaded is not None:
        loaded = [
            {
                "model": m.name,
                "expires_in_seconds": None
                if m.expires_at is None
                else max(0, round(m.expires_at - wall)),
            }
            for m in sorted(report.loaded, key=lambda m: m.name)
        ]
    kv = report.kv_cache_usage
    return {
        "running": report.running,
        "waiting": report.waiting,
        "kv_cache_usage": None if kv is None else round(kv, 4),
        "slots": report.slots,
        "loaded": loaded,
    }
