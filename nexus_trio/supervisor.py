"""The root nursery: every long-lived task of ``nexus serve`` and its shutdown.

::

    serve_nexus
    └── root nursery
        ├── signals      SIGINT/SIGTERM → stop accepting, drain, exit
        ├── demo fleet   (--demo) simulated backends on loopback
        ├── registry     lists every backend's models, then takes in what discovery finds
        ├── health       one probe loop per backend
        ├── discovery    sources of backends nobody configured
        └── http         hypercorn's trio worker serving the app

Tasks start in that order with ``nursery.start``, each reporting ready before
the next begins, so the HTTP server opens on a registry that knows its
models. On the first signal hypercorn stops accepting and in-flight requests
get ``server.shutdown_grace_seconds`` to finish; then the root is cancelled. A
second signal cancels at once.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence

import hypercorn.config
import hypercorn.trio
import trio

from nexus_trio.api.app import make_app
from nexus_trio.config import BackendType, Settings
from nexus_trio.discovery import run_discovery
from nexus_trio.gateway import Gateway
from nexus_trio.health import run_health
from nexus_trio.proxy.upstream import open_upstream_client
from nexus_trio.registry import Backend, Registry
from nexus_trio.testing import SimulatedBackend, demo_fleet, serve_fleet

__all__ = ["serve_nexus"]

log = logging.getLogger("nexus")


async def stop_on_signal(stop: trio.Event, root: trio.CancelScope) -> None:
    """First SIGINT/SIGTERM: graceful stop. Second: cancel everything now."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not stop.is_set():
                log.info(
                    "%s: draining (a second signal stops at once)", signal.Signals(signum).name
                )
                stop.set()
            else:
                log.warning("second signal: stopping now")
                root.cancel()
                return


async def run_registry(
    backends: Sequence[Backend],
    inbox: trio.MemoryReceiveChannel[Backend],
    *,
    task_status: trio.TaskStatus[Registry] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own the registry: report it, then take in the backends discovery finds."""
    registry = Registry(backends)
    task_status.started(registry)
    async with inbox:
        async for backend in inbox:
            if backend.name not in registry:
                registry.add(backend)


def _hypercorn_config(settings: Settings) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    host = settings.server.host
    config.bind = [
        f"[{host}]:{settings.server.port}" if ":" in host else f"{host}:{settings.server.port}"
    ]
    config.graceful_timeout = settings.server.shutdown_grace_seconds
    config.accesslog = None  # our request log says more, once per request
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75  # longer than common client pools keep idle sockets
    return config


def demo_backends(fleet: Sequence[SimulatedBackend]) -> list[Backend]:
    return [
        Backend(name=sim.name, url=sim.url, type=BackendType(sim.flavor.value), sources={"demo"})
        for sim in fleet
    ]


async def serve_nexus(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    handle_signals: bool = True,
    stop: trio.Event | None = None,
    on_ready: Callable[[Gateway], None] | None = None,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run Nexus until stopped (a signal, or ``stop`` being set).

    Reports the running `Gateway` (``gateway.url`` is where it listens) once it
    serves, and calls ``on_ready`` with it. ``stop`` lets an embedding program or
    a test stop it the way a signal would.

    Example::

        gateway = await nursery.start(serve_nexus, load_settings(overrides={"server.port": 0}))
    """
    environ = os.environ if environ is None else environ
    stop = trio.Event() if stop is None else stop
    backends = [Backend.from_settings(b, environ) for b in settings.backends]
    async with (
        open_upstream_client(settings.routing.timeouts.connect_seconds) as client,
        trio.open_nursery() as root,
    ):
        if handle_signals:
            root.start_soon(stop_on_signal, stop, root.cancel_scope)
        if settings.demo:
            fleet = demo_fleet()
            await root.start(serve_fleet, fleet)
            backends += demo_backends(fleet)
        found, inbox = trio.open_memory_channel[Backend](64)
        registry = await root.start(run_registry, backends, inbox)
        await root.start(run_health, registry, client, settings.health_check)
        await root.start(run_discovery, settings.discovery, found)
        gateway = Gateway(settings, registry, client)
        binds = await root.start(_serve_http, gateway, stop, root.cancel_scope)
        gateway.url = url = binds[0]
        log.info(
            "Nexus %s: %s backends, %s models; listening on %s",
            "demo" if settings.demo else "ready",
            len(registry),
            len(registry.model_ids()),
            url,
        )
        if on_ready is not None:
            on_ready(gateway)
        task_status.started(gateway)
        await stop.wait()
        gateway.draining = True
        # hypercorn now drains in-flight requests (graceful_timeout); then _serve_http
        # cancels the root.


async def _serve_http(
    gateway: Gateway,
    stop: trio.Event,
    root: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await hypercorn.trio.serve(
            make_app(gateway),
            _hypercorn_config(gateway.settings),
            shutdown_trigger=stop.wait,
            task_status=task_status,
        )
    finally:
        # The server has drained: every other task stops with it.
        root.cancel()
