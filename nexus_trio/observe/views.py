"""The fleet as the dashboard and its WebSocket show it (pure).

Never a backend's URL or key: the dashboard is served on the API's port to
whoever can reach it. Names are data, sent as JSON strings; the page renders
them as text (mDNS names are chosen by whoever announces).
"""

from __future__ import annotations

from typing import Any

from nexus_trio.registry import Backend

__all__ = ["backend_view"]


def backend_view(backend: Backend, now: float) -> dict[str, Any]:
    """One backend: status, type, where it was found, models, load, latency.

    ``now`` is trio.current_time(): an ejected backend's return is sent as seconds
    from now (``ejected_seconds``), which the page counts down on its own clock, so
    no clock of this machine's has to agree with the browser's.
    """
    ttft = backend.ttft_ewma_seconds
    left = backend.ejected_seconds_left(now)
    return {
        "name": backend.name,
        "type": backend.type.value,
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
    }
