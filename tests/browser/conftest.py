"""The real-browser tests' fixtures: Nexus run as ``nexus serve --demo`` runs it, in-process.

Chromium is Debian's (``apt-get install chromium chromium-driver``), driven by
Playwright for Python: ``playwright install`` downloads a browser build, which
cannot be fetched here, so the tests launch ``/usr/bin/chromium`` themselves.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from demo_nexus import Demo, StartDemo

from nexus_trio.config import settings_from_mapping
from nexus_trio.gateway import Gateway
from nexus_trio.supervisor import serve_nexus
from nexus_trio.testing import SimulatedBackend

CHROMIUM = Path("/usr/bin/chromium")

if importlib.util.find_spec("playwright") is None:
    # Only `nox -s browser` installs Playwright. Elsewhere these tests are deselected
    # (-m 'not browser'), but their module could not even be imported to be deselected.
    collect_ignore = ["test_dashboard.py"]


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium: missing is a failure, never a skip, so CI cannot pass without it."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(apt-get install chromium chromium-driver); .ci/run installs it"
        )
    return str(CHROMIUM)


@pytest.fixture
async def start_demo(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartDemo]:
    """``await start_demo(port=0, backends=[...])``: Nexus with ``--demo``'s fleet, on loopback.

    The settings are those of ``nexus serve --demo --port 0`` but for what keeps a
    test quick and hermetic: zeroconf is bound to 127.0.0.1 only, no well-known
    local port is probed (a real Ollama on this machine would join the fleet),
    health probes run every second (a backend brought back returns in ~2 s) and
    a request with no backend left is answered at once.
    """
    started: list[Demo] = []

    async def start(*, port: int = 0, backends: Sequence[SimulatedBackend] = ()) -> Demo:
        for backend in backends:
            if not backend.accepting:
                await nursery.start(backend.serve)
        mapping: dict[str, Any] = {
            "server": {
                "host": "127.0.0.1",
                "port": port,
                "shutdown_grace_seconds": 2.0,
                "state_file": str(tmp_path / "nexus.state.json"),
            },
            "discovery": {"interfaces": ["127.0.0.1"], "probe_local": False},
            "health_check": {"interval_seconds": 1.0, "timeout_seconds": 1.0},
            "routing": {"wait_for_backend_seconds": 0},
            "backends": [{"name": b.name, "url": b.url, "type": b.flavor.value} for b in backends],
        }
        # `demo` is a command-line flag only (no config key), as `nexus serve --demo` sets it.
        settings = dataclasses.replace(settings_from_mapping(mapping, environ={}), demo=True)
        stop, stopped = trio.Event(), trio.Event()

        async def serve(*, task_status: trio.TaskStatus[Gateway]) -> None:
            try:
                await serve_nexus(
                    settings, environ={}, handle_signals=False, stop=stop, task_status=task_status
                )
            finally:
                stopped.set()

        gateway: Gateway = await nursery.start(serve)
        demo = Demo(gateway, httpx.AsyncClient(base_url=gateway.url, timeout=30), stop, stopped)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        await demo.http.aclose()
