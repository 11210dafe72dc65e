"""What a discovery source reports: a server seen (or gone) at an address.

Sources (mDNS browsing, local port probing, the admin API) only report; the
registry decides whether a report is a new backend, one it already knows
from another source (same host and port), or a goodbye.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexus_trio.config import BackendType
from nexus_trio.registry import Source

__all__ = ["Found", "Source"]


@dataclass(frozen=True, slots=True)
class Found:
    """One report about one server.

    ``url`` is the API root (scheme, host, port and any path prefix, without a
    trailing ``/v1``). ``type`` is None when the source could not tell: the
    registry fingerprints the server before using it. ``name`` is the stable
    name the source knows it by (the mDNS instance name), if any.
    """

    source: Source
    url: str
    type: BackendType | None = None
    name: str | None = None
    gone: bool = False  # a goodbye: unroutable now, forgotten after the grace period
    version: str | None = None
    models: tuple[str, ...] = ()  # what the announcement says it serves (a hint only)
