"""Finding backends nobody configured: mDNS browsing and local port probing.

The supervisor gives discovery its slot in the root nursery now; the sources
that fill it (zeroconf browsing, probing well-known local ports) hand what
they find to the registry through a trio channel.
"""

from __future__ import annotations

import logging

import trio

from nexus_trio.config import DiscoverySettings
from nexus_trio.registry import Backend

__all__ = ["run_discovery"]

log = logging.getLogger("nexus.discovery")


async def run_discovery(
    settings: DiscoverySettings,
    found: trio.MemorySendChannel[Backend],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every enabled discovery source until cancelled, sending finds to ``found``."""
    async with found:
        task_status.started()
        if not settings.enabled:
            return
        log.debug("no discovery source is available in this build; using configured backends")
