"""The root nursery: every long-lived task of ``nexus serve`` and its shutdown.

::

    serve_nexus
    ├── store            keys and usage (SQLite), open around everything else
    └── root nursery
        ├── store writer usage written in batches, off the event loop
        ├── signals      SIGINT/SIGTERM → stop accepting, drain, exit
        ├── demo fleet   (--demo) simulated backends on loopback
        ├── fleet        merges what every source finds into the registry
        ├── health       one probe loop per backend
        ├── (demo)       the demo fleet announces itself over mDNS on loopback
        ├── discovery    mDNS browsing and local port probing
        └── http         hypercorn's trio worker serving the app

Tasks start in that order with ``nursery.start``, each reporting ready before
the next begins, so the HTTP server opens on a registry that knows its
models, and with the keys loaded from the store.

Shutdown (the first SIGINT/SIGTERM, or ``stop``), in this order:

1. drain: the gateway's `Drain` refuses new chat requests (503, ``Retry-After``,
   code ``shutting_down``) — on new connections and kept-alive ones alike, since
   the server still accepts — and waits up to ``server.shutdown_grace_seconds``
   for the requests in flight;
2. cut: it cancels the requests still running; each ends its own response with
   one SSE error event (or a 503 if nothing was sent yet), never mid-event;
3. hypercorn's shutdown trigger fires only now: it stops accepting, closes idle
   connections and waits (``graceful_timeout``) for what is left, which is no
   chat stream, so it never cuts one; when it returns, the root is cancelled and
   health, discovery and the fleet stop with it;
4. the store writer writes the usage still queued, and the store is closed
   (each bounded, even when Nexus is being cancelled).

A second signal cuts the requests in flight at once (each still gets its error
event, within a couple of seconds) and cancels the root. Either way
``serve_nexus`` returns normally, so ``nexus serve`` exits 0: a signal is how it
is asked to stop, and every response it had begun was ended properly. (One
thing can still hold the exit: hypercorn shields its socket writes, so a client
that has stopped reading with its receive window full blocks its connection
until it reads or goes away.)
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import hypercorn.config
import hypercorn.trio
import trio

from nexus_trio.api.app import make_app
from nexus_trio.config import BackendType, Settings
from nexus_trio.discovery import Found, run_discovery
from nexus_trio.drain import Drain
from nexus_trio.fleet import Fleet, StateFile, default_state_path
from nexus_trio.gateway import Gateway
from nexus_trio.health import run_health
from nexus_trio.instance import new_instance_id
from nexus_trio.observe import Observer
from nexus_trio.registry import Backend, Registry
from nexus_trio.store import SqliteStore, store_for
from nexus_trio.testing import SimulatedBackend, demo_fleet, serve_fleet
from nexus_trio.upstream.client import open_upstream_client

if TYPE_CHECKING:
    from zeroconf import ServiceInfo

__all__ = ["serve_nexus"]

log = logging.getLogger("nexus")

# hypercorn's graceful_timeout, which starts after our drain: see _hypercorn_config.
HTTP_CLOSE_SECONDS = 5.0
# The longest closing the store may take (its last usage written) once the root is done.
STORE_CLOSE_SECONDS = 5.0


async def stop_on_signal(stop: trio.Event, drain: Drain, root: trio.CancelScope) -> None:
    """First SIGINT/SIGTERM: graceful stop. Second: cut what is in flight, cancel everything."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not stop.is_set():
                log.debug("%s: stopping", signal.Signals(signum).name)
                stop.set()
            else:
                log.warning(
                    "second %s: stopping now; %d requests in flight cut",
                    signal.Signals(signum).name,
                    drain.cut(),
                )
                root.cancel()
                return


@asynccontextmanager
async def _open_store(settings: Settings, state_dir: Path) -> AsyncIterator[SqliteStore]:
    """The store, open; closed (what is queued written) within `STORE_CLOSE_SECONDS`,
    even when Nexus is being cancelled."""
    store = store_for(settings, state_dir)
    await store.open()
    try:
        yield store
    finally:
        with trio.move_on_after(STORE_CLOSE_SECONDS, shield=True):
            await store.close()


def _hypercorn_config(settings: Settings) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    host = settings.server.host
    config.bind = [
        f"[{host}]:{settings.server.port}" if ":" in host else f"{host}:{settings.server.port}"
    ]
    # hypercorn is told to stop only once our drain is over (see serve_nexus), so its
    # own grace never cuts a chat stream; it bounds what is left by then: requests on
    # the Quart routes and connections closing.
    config.graceful_timeout = HTTP_CLOSE_SECONDS
    config.accesslog = None  # our request log says more, once per request
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75  # longer than common client pools keep idle sockets
    return config


LOOPBACK = ("127.0.0.1",)


def demo_announcements(fleet: Sequence[SimulatedBackend]) -> list[ServiceInfo]:
    """mDNS announcements of the demo fleet, as `nexus advertise` would make them."""
    # Imported here, as mDNS browsing is (`run_discovery`): zeroconf takes 3 MB resident,
    # loaded only when something announces or browses.
    from nexus_trio.discovery.advertise import service_info_for

    return [
        service_info_for(
            sim.url, BackendType(sim.flavor.value), sim.name, models=[m.id for m in sim.models]
        )
        for sim in fleet
    ]


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
    a test stop it the way a signal would: it drains (see the module docstring),
    then returns.

    Example::

        gateway = await nursery.start(serve_nexus, load_settings(overrides={"server.port": 0}))
    """
    environ = os.environ if environ is None else environ
    if settings.demo and not settings.discovery.interfaces:
        # The demo fleet announces itself on loopback and Nexus listens there too, so
        # the demo never sends multicast off the machine (unless told to).
        settings = replace(settings, discovery=replace(settings.discovery, interfaces=LOOPBACK))
    stop = trio.Event() if stop is None else stop
    backends = [Backend.from_settings(b, environ) for b in settings.backends]
    drain = Drain()
    instance_id = new_instance_id()
    state_path = default_state_path(settings)
    async with (
        # Outside the root: closed once every request has ended and recorded its usage.
        _open_store(settings, state_path.parent) as store,
        open_upstream_client(settings.routing.timeouts.connect_seconds, instance_id) as client,
        trio.open_nursery() as root,
    ):
        await root.start(store.run_writer)
        if handle_signals:
            root.start_soon(stop_on_signal, stop, drain, root.cancel_scope)
        fleet_sims = demo_fleet() if settings.demo else []
        if fleet_sims:
            await root.start(serve_fleet, fleet_sims)
            backends += demo_backends(fleet_sims)
        registry = Registry(backends, settings.health_check, settings.routing.affinity)
        found, inbox = trio.open_memory_channel[Found](256)
        state = StateFile(state_path)
        fleet = await root.start(
            Fleet(registry, client, settings, state, instance_id=instance_id).run, inbox
        )
        await root.start(
            run_health, registry, client, settings.health_check, settings.routing.engine_load
        )
        if fleet_sims:
            # Not awaited: zeroconf first checks for ~1.5 s that the names are free, and
            # the demo's own backends are registered directly anyway.
            from nexus_trio.discovery.advertise import advertise

            root.start_soon(
                advertise, demo_announcements(fleet_sims), settings.discovery.interfaces
            )
        await root.start(
            lambda task_status: run_discovery(
                settings.discovery, client, found, own_port=settings.server.port or None,
                own_id=instance_id,
                task_status=task_status,
            )
        )  # fmt: skip
        gateway = Gateway(
            settings, registry, client, Observer(settings, registry), fleet=fleet, drain=drain,
            demo_fleet=fleet_sims, instance_id=instance_id, store=store,
        )  # fmt: skip
        await gateway.keyring.open()
        await root.start(gateway.observer.feed.run, registry, settings.routing, gateway.created)
        http_stop = trio.Event()  # hypercorn's shutdown trigger: set once we have drained
        binds = await root.start(_serve_http, gateway, http_stop, root.cancel_scope)
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
        grace = settings.server.shutdown_grace_seconds
        began = trio.current_time()
        log.info(
            "draining: %d requests in flight, up to %g s to finish; new ones get 503%s",
            drain.in_flight,
            grace,
            " (a second signal stops at once)" if handle_signals else "",
        )
        cut = await drain.drain(grace)
        log.info(
            "drained in %.1f s: %d requests cut at the grace deadline",
            trio.current_time() - began,
            cut,
        )
        http_stop.set()
        # hypercorn stops accepting, waits for what is left and returns; then
        # _serve_http cancels the root, and every other task stops with it.


async def _serve_http(
    gateway: Gateway,
    stop: trio.Event,  # hypercorn's shutdown trigger
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
