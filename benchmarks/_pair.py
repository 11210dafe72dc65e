"""Nexus in process, in front of two simulated backends: the in-process benchmarks' fleet."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import trio

from nexus_trio.config import settings_from_mapping
from nexus_trio.gateway import Gateway
from nexus_trio.registry import Registry
from nexus_trio.supervisor import serve_nexus
from nexus_trio.testing import SimulatedBackend


async def serve_pair(
    nursery: trio.Nursery,
    a: SimulatedBackend,
    b: SimulatedBackend,
    *,
    routing: dict[str, Any] | None = None,
    log_level: str = "warning",
) -> Gateway:
    """Serve ``a`` and ``b`` on loopback and Nexus in front of them, ``a`` first (priority
    routing), health checks out of the way, and a failure ejecting its backend for a
    millisecond only (see `wait_in_rotation`); all of it stops with ``nursery``."""
    for sim in (a, b):
        await nursery.start(sim.serve)
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "discovery": {"enabled": False, "interfaces": ["127.0.0.1"]},
        "health_check": {
            "interval_seconds": 3600,
            "ejection_base_seconds": 0.001,
            "ejection_max_seconds": 0.001,
        },
        "logging": {"level": log_level},
        "routing": {"strategy": "priority", **(routing or {})},
        "backends": [
            {"name": s.name, "url": s.url, "type": s.flavor.value, "priority": priority}
            for priority, s in enumerate((a, b), start=1)
        ],
    }
    settings = settings_from_mapping(config, environ={})
    gateway: Gateway = await nursery.start(
        partial(serve_nexus, settings, environ={}, handle_signals=False)
    )
    return gateway


async def wait_in_rotation(registry: Registry, *names: str) -> None:
    """Wait until each backend named is in rotation again: its ejection over, so that a run
    starts where the one before it did."""
    with registry.subscribe(buffer=math.inf) as changes:
        while not all(registry.get(name).routable for name in names):
            await changes.receive()
