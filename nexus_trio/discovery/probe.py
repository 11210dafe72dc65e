"""Probing well-known ports on this host for LLM servers nobody configured.

Every ``probe_interval_seconds`` each port in ``probe_ports`` (Ollama 11434,
llama.cpp and LocalAI 8080, vLLM 8000, LM Studio 1234, exo 52415) is
fingerprinted, all at once; what changed since the last cycle is reported to the
registry as :class:`~nexus_trio.discovery.found.Found` (``source="probe"``): a
server that is new or now tells another type or version, and a goodbye
(``gone=True``) for one that answered last cycle and does not now.

The cycle is split so that its logic is tested without sockets or sleeps:
:func:`probe_once` does the I/O of one cycle, :func:`diff_cycles` (pure) turns
two cycles into reports, :func:`run_local_probe` loops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import httpx
import trio

from nexus_trio.backends.detect import (
    DEFAULT_TIMEOUT_SECONDS,
    Fingerprint,
    fingerprint,
    nexus_refusal,
)
from nexus_trio.config import DiscoverySettings
from nexus_trio.discovery.found import Found

__all__ = ["diff_cycles", "local_url", "probe_once", "run_local_probe"]

log = logging.getLogger("nexus.discovery")

Cycle = Mapping[int, Fingerprint | None]


def local_url(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 host in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def probe_once(
    client: httpx.AsyncClient,
    ports: Iterable[int],
    *,
    host: str = "127.0.0.1",
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[int, Fingerprint | None]:
    """Fingerprint ``http://{host}:{port}`` for every port at once; one probe cycle.

    Each port gets its own ``timeout_seconds``, and they run concurrently, so
    the cycle takes about the slowest one (a closed port on loopback is refused
    at once).

    Returns:
        For each port, in the order given, its fingerprint, or None when no LLM
        server answered there.

    Example::

        cycle = await probe_once(client, [11434, 8080])  # {11434: Fingerprint(...), 8080: None}
    """
    ports = tuple(dict.fromkeys(ports))
    results: dict[int, Fingerprint | None] = {}

    async def probe(port: int) -> None:
        url = local_url(host, port)
        results[port] = await fingerprint(client, url, timeout_seconds=timeout_seconds)

    async with trio.open_nursery() as nursery:
        for port in ports:
            nursery.start_soon(probe, port)
    return {port: results[port] for port in ports}


def diff_cycles(previous: Cycle, current: Cycle) -> list[Found]:
    """What to tell the registry after a cycle: new or changed servers, then goodbyes.

    A server is reported when it is new, or its fingerprint (type, version)
    changed; one that was there last cycle and is not now (or whose port is no
    longer probed) gets ``Found(gone=True)``. An unchanged server is not
    reported again. Pure.

    Example::

        diff_cycles({}, {11434: Fingerprint(BackendType.OLLAMA, "0.12.6", url)})
        # [Found(source="probe", url=url, type=BackendType.OLLAMA, version="0.12.6")]
    """
    reports: list[Found] = []
    for port, now in current.items():
        before = previous.get(port)
        if now is not None and now != before:
            reports.append(Found(source="probe", url=now.url, type=now.type, version=now.version))
    for port, before in previous.items():
        if before is not None and current.get(port) is None:
            reports.append(Found(source="probe", url=before.url, gone=True))
    return reports


async def run_local_probe(
    settings: DiscoverySettings,
    client: httpx.AsyncClient,
    found: trio.MemorySendChannel[Found],
    *,
    own_port: int | None,
    own_id: str | None = None,
    host: str = "127.0.0.1",
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Probe the well-known local ports until cancelled, sending what changes to ``found``.

    The first cycle runs at once, and ``task_status.started()`` is called only
    after its reports have been sent, so that ``nexus serve`` on a machine
    running Ollama serves its models as soon as it listens. Later cycles start
    every ``settings.probe_interval_seconds``.

    Args:
        settings: ``probe_ports`` and ``probe_interval_seconds`` are read; with
            ``enabled`` or ``probe_local`` off this reports started and returns.
        client: the upstream client (connect timeouts are its own).
        found: where reports go. Not closed here: the caller owns it. Sends
            block while it is full, so give it room for one report per port (or
            drain it from another task) or ``nursery.start`` waits on the drain.
        own_port: the port Nexus itself listens on, never probed (vLLM's 8000
            is Nexus's too: probing ourselves would make us our own backend).
        own_id: this Nexus's instance id (`nexus_trio.instance`). A port where a
            Nexus answers (itself, or another) is skipped whatever its id; the id
            only tells the log which.
        host: the address to probe; loopback by default.
        timeout_seconds: the deadline of each port's fingerprint.

    Returns when the receiving end of ``found`` is closed (nobody listens any more).

    Example::

        announce, inbox = trio.open_memory_channel[Found](64)
        await nursery.start(partial(run_local_probe, settings, client, announce, own_port=8000))
    """
    ports = tuple(dict.fromkeys(p for p in settings.probe_ports if p != own_port))
    if not (settings.enabled and settings.probe_local and ports):
        task_status.started()
        return
    previous: dict[int, Fingerprint | None] = {}
    refused: set[str] = set()  # told once each
    started = False
    while True:
        began = trio.current_time()
        current = await probe_once(client, ports, host=host, timeout_seconds=timeout_seconds)
        for port, seen in current.items():
            why = nexus_refusal(seen, own_id) if seen is not None else None
            if why is not None:
                current[port] = None
                if why not in refused:
                    refused.add(why)
                    log.info("probe: skipping port %d: %s", port, why)
        for report in diff_cycles(previous, current):
            if report.gone:
                log.info("probe: the server at %s has stopped answering", report.url)
            else:
                log.info("probe: %s server at %s", report.type, report.url)
            try:
                await found.send(report)
            except trio.BrokenResourceError:
                log.debug("probe: nobody takes reports any more; stopping")
                if not started:
                    task_status.started()
                return
        previous = current
        if not started:
            task_status.started()
            started = True
        # Keep the cadence whatever a cycle took (a hung port costs its timeout).
        await trio.sleep_until(began + settings.probe_interval_seconds)
