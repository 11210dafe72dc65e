"""Finding backends nobody configured: mDNS browsing and local port probing.

No major inference server announces itself over mDNS today, so zero
configuration takes both: browsing (``_ollama._tcp``, ``_llm._tcp``, or what
``discovery.service_types`` says; servers announced with ``nexus advertise``)
and probing this host's well-known ports. Both only report what they see
(`Found`); `nexus_trio.fleet.Fleet` merges the reports into the registry.
"""

from __future__ import annotations

import logging

import httpx
import trio

from nexus_trio.config import DiscoverySettings
from nexus_trio.discovery.found import Found
from nexus_trio.discovery.probe import run_local_probe

__all__ = ["Found", "run_discovery"]

log = logging.getLogger("nexus.discovery")


async def run_discovery(
    settings: DiscoverySettings,
    client: httpx.AsyncClient,
    found: trio.MemorySendChannel[Found],
    *,
    own_port: int | None,
    own_id: str | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every enabled source until cancelled, each reporting to ``found``.

    Reports started once mDNS is browsing and the first probe round is done,
    so servers already running are known when the HTTP server opens.
    """
    async with found, trio.open_nursery() as nursery:
        if settings.enabled:
            # zeroconf (3 MB resident) is loaded only when mDNS runs.
            from nexus_trio.discovery.mdns import run_mdns_browser

            where = ", ".join(settings.interfaces) or "all interfaces"
            log.info("discovery: browsing %s on %s", " ".join(settings.service_types), where)
            await nursery.start(run_mdns_browser, settings, found)
            if settings.probe_local:
                await nursery.start(
                    lambda task_status: run_local_probe(
                        settings, client, found, own_port=own_port, own_id=own_id,
                        task_status=task_status,
                    )
                )  # fmt: skip
        task_status.started()
