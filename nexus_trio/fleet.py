"""Turning reports from every source into one registry without duplicates.

Config, the admin API, ``--demo``, mDNS and local probing each report the
servers they know (`Found`). The fleet decides what a report means:

- a server already registered (same host and port; loopback addresses are one
  host, names are resolved) gains a source, and is revived if it had said
  goodbye — the first source in `SOURCE_PRECEDENCE` names it and sets its
  priority, so config wins;
- a new server is fingerprinted when its type is unknown, checked once (so it
  is routable the moment it is added, models listed), named stably (config
  name, mDNS instance name, or ``type@host:port``) and added;
- a goodbye takes the source away and the backend out of rotation at once; a
  backend no source knows any more is forgotten after
  ``discovery.grace_period_seconds`` unless it is announced again.

Backends added through the admin API are written to a state file so they come
back after a restart.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from nexus_trio.backends.checkup import check_with_deadline
from nexus_trio.backends.detect import fingerprint, nexus_refusal
from nexus_trio.backends.listing import OllamaShowCache
from nexus_trio.config import BackendType, Settings
from nexus_trio.discovery.found import Found
from nexus_trio.errors import BackendExists, NexusError, NotAServer
from nexus_trio.registry import Backend, Registry, api_root, default_zone, endpoint_of

__all__ = [
    "Fleet",
    "StateFile",
    "default_state_path",
    "resolve_endpoint",
]

log = logging.getLogger("nexus.fleet")

RESOLVE_TIMEOUT_SECONDS = 2.0


def default_state_path(settings: Settings) -> Path:
    """Where admin-added backends are kept: ``server.state_file``, else next to the
    config file, else the user's state directory."""
    if settings.server.state_file:
        return Path(settings.server.state_file).expanduser()
    if settings.config_path is not None:
        return settings.config_path.with_name("nexus.state.json")
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "nexus" / "state.json"


@dataclass(frozen=True, slots=True)
class StateFile:
    """Admin-added backends as JSON: ``{"backends": [{"name", "url", "type", "priority"}]}``."""

    path: Path

    async def load(self) -> list[dict[str, Any]]:
        try:
            text = await trio.Path(self.path).read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read the state file %s: %s", self.path, exc)
            return []
        try:
            entries = json.loads(text)["backends"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring the state file %s: it is not what Nexus writes", self.path)
            return []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("url"), str)]

    async def save(self, backends: list[Backend]) -> None:
        entries = [
            {"name": b.name, "url": b.url, "type": b.type.value, "priority": b.priority}
            for b in backends
        ]
        path = trio.Path(self.path)
        await path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        # Write then rename: a crash leaves the old file or the new one, never half.
        await partial.write_text(json.dumps({"backends": entries}, indent=2) + "\n")
        await partial.replace(path)


class Fleet:
    """The one writer of backends into the registry (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        client: httpx.AsyncClient,
        settings: Settings,
        state: StateFile | None = None,
        *,
        instance_id: str | None = None,
    ) -> None:
        self.registry = registry
        self.instance_id = instance_id  # this Nexus's X-Nexus-Via: never its own backend
        self.client = client
        self.settings = settings
        self.state = state
        self._endpoints: dict[str, tuple[str, int]] = {}  # backend name → resolved endpoint
        self._locks: dict[tuple[str, int], trio.Lock] = {}
        self._forget: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._mdns_on_loopback = all(
            _is_loopback_address(a) for a in settings.discovery.interfaces or ["0.0.0.0"]
        )

    # -- the task ---------------------------------------------------------------------

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[Found],
        *,
        task_status: trio.TaskStatus[Fleet] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take in reports until cancelled. Reports started once the backends already
        registered are resolved and the state file's backends are back."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            async with trio.open_nursery() as first:
                for backend in self.registry:
                    first.start_soon(self._remember_endpoint, backend)
            if self.state is not None:
                async with trio.open_nursery() as restore:
                    for entry in await self.state.load():
                        restore.start_soon(self._restore, entry)
            task_status.started(self)
            async with inbox:
                async for found in inbox:
                    if found.gone:
                        self.farewell(found)
                    else:
                        nursery.start_soon(self._admit_quietly, found)
            # Every source has stopped (or none runs); the admin API and the
            # grace timers still need this nursery.
            await trio.sleep_forever()

    async def _remember_endpoint(self, backend: Backend) -> None:
        self._endpoints[backend.name] = await resolve_endpoint(backend.url)

    async def _restore(self, entry: Mapping[str, Any]) -> None:
        try:
            kind = BackendType(entry["type"]) if entry.get("type") else None
            priority = entry.get("priority")
            await self.admit(
                Found("admin", entry["url"], kind, name=entry.get("name")),
                priority=priority if isinstance(priority, int) else None,
                persist=False,
            )
        except (NexusError, ValueError) as exc:
            # Kept in the file: the server may only be down for now.
            log.warning("backend %s from the state file is not back: %s", entry["url"], exc)

    async def _admit_quietly(self, found: Found) -> None:
        try:
            await self.admit(found)
        except NexusError as exc:
            log.debug("ignoring %s from %s: %s", found.url, found.source, exc)

    # -- reports ----------------------------------------------------------------------

    def find(self, endpoint: tuple[str, int]) -> Backend | None:
        for name, known in self._endpoints.items():
            if known == endpoint and name in self.registry:
                return self.registry.get(name)
        return None

    async def admit(
        self, found: Found, *, priority: int | None = None, persist: bool = True
    ) -> Backend:
        """Register the server ``found`` reports, or add the source to the one it is.

        Raises:
            NotAServer: its type was not given and nothing LLM-like answers there.
            BackendExists: an admin add of a name already taken by another server.
            BackendError: it was found but its first check failed (not added).
        """
        url = api_root(found.url)
        endpoint = await resolve_endpoint(url)
        if found.source == "mdns" and endpoint[0] == "loopback" and not self._mdns_on_loopback:
            # mDNS is unauthenticated: from the network, "127.0.0.1" would point Nexus
            # at this machine's own services.
            raise NotAServer(f"ignoring an mDNS announcement of a loopback address ({url})")
        lock = self._locks.setdefault(endpoint, trio.Lock())
        async with lock:  # two sources reporting one server at once add it once
            existing = self.find(endpoint)
            if existing is not None:
                if found.source == "admin" and persist:
                    raise BackendExists(
                        f"{url} is already registered as {existing.name!r}.", param="url"
                    )
                self._join(existing, found)
                return existing
            backend = await self._new_backend(found, url, priority)
            self._endpoints[backend.name] = endpoint
            self.registry.add(backend)
        log.info(
            "backend %s (%s, %s) found by %s: %d models",
            backend.name, backend.type.value, backend.url, found.source, len(backend.models),
        )  # fmt: skip
        if found.source == "admin" and persist:
            await self._persist()
        return backend

    def _join(self, backend: Backend, found: Found) -> None:
        was_gone = not backend.sources
        self.registry.set_sources(backend, backend.sources | {found.source})
        scope = self._forget.pop(backend.name, None)
        if scope is not None:
            scope.cancel()
        if was_gone:
            # Announced again within the grace period: back in rotation, checked at once.
            self.registry.revive(backend)
            log.info("backend %s is back (%s)", backend.name, found.source)

    async def _new_backend(self, found: Found, url: str, priority: int | None) -> Backend:
        kind = found.type
        # Detected when its type is unknown, and always for an admin add (a URL someone
        # typed may be a Nexus): a Nexus is refused there. A type in the config file is
        # trusted as it is written.
        if kind is None or found.source == "admin":
            detected = await fingerprint(self.client, url)
            if detected is not None and (why := nexus_refusal(detected, self.instance_id)):
                raise NotAServer(why)
            if kind is None:
                if detected is None:
                    raise NotAServer(f"No LLM server answers at {url}.")
                kind = detected.type
        name = self._unique_name(found.name or address_name(kind, url), found.source)
        backend = Backend(
            name=name,
            url=url,
            type=kind,
            priority=priority if priority is not None else 1,
            sources={found.source},
            zone=default_zone(kind),
        )
        # Checked before it is added: routable the moment it appears, models listed.
        health = self.settings.health_check
        checkup = await check_with_deadline(
            self.client, backend, OllamaShowCache(), health.timeout_seconds
        )
        self.registry.record_checkup(backend, checkup)
        self.registry.record_probe(backend, True)
        return backend

    def _unique_name(self, wanted: str, source: str) -> str:
        if wanted not in self.registry:
            return wanted
        if source == "admin":
            raise BackendExists(
                f"A backend named {wanted!r} already exists; choose another name.", param="name"
            )
        n = 2
        while f"{wanted}-{n}" in self.registry:
            n += 1
        return f"{wanted}-{n}"

    def farewell(self, found: Found) -> None:
        """A source says the server is gone: out of rotation now, forgotten later."""
        backend = (
            self.registry.get(found.name)
            if found.name is not None and found.name in self.registry
            else None
        )
        if backend is None or found.source not in backend.sources:
            backend = self.find(endpoint_of(api_root(found.url)))
        if backend is None or found.source not in backend.sources:
            return
        self.registry.set_sources(backend, backend.sources - {found.source})
        self.registry.mark_unhealthy(backend, f"said goodbye ({found.source})")
        log.info("backend %s said goodbye (%s)", backend.name, found.source)
        if not backend.sources and self._nursery is not None:
            self._nursery.start_soon(self._forget_later, backend)

    async def _forget_later(self, backend: Backend) -> None:
        with trio.CancelScope() as scope:
            self._forget[backend.name] = scope
            await trio.sleep(self.settings.discovery.grace_period_seconds)
            # By identity: a backend removed meanwhile may have a successor of its name.
            current = self.registry.get(backend.name) if backend.name in self.registry else None
            if not backend.sources and current is backend:
                self._drop(backend.name)
                log.info("forgot backend %s: gone for the grace period", backend.name)
        if self._forget.get(backend.name) is scope:
            del self._forget[backend.name]

    async def remove(self, name: str) -> None:
        """Remove a backend now (admin). A configured one returns at the next start."""
        was_admin = "admin" in self.registry.get(name).sources
        self._drop(name)
        if was_admin:
            await self._persist()

    def _drop(self, name: str) -> None:
        self.registry.remove(name)
        self._endpoints.pop(name, None)
        timer = self._forget.pop(name, None)
        if timer is not None:
            timer.cancel()  # its backend is gone; a successor of its name is not its business

    async def _persist(self) -> None:
        if self.state is None:
            return
        kept = [b for b in self.registry if "admin" in b.sources]
        try:
            await self.state.save(kept)
        except OSError as exc:
            log.warning("cannot write the state file %s: %s", self.state.path, exc)


def address_name(kind: BackendType, url: str) -> str:
    """``type@host:port``: the stable name of a server no source has named."""
    parts = urlsplit(url)
    host = parts.hostname or "unknown"
    host = f"[{host}]" if ":" in host else host
    return f"{kind.value}@{host}:{endpoint_of(url)[1]}"


async def resolve_endpoint(url: str) -> tuple[str, int]:
    """`endpoint_of`, with a host name resolved to its address (bounded, best effort)."""
    host, port = endpoint_of(url)
    if host == "loopback":
        return host, port
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    with trio.move_on_after(RESOLVE_TIMEOUT_SECONDS):
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        except OSError:
            return host, port
        if infos:
            return endpoint_of(f"http://{_bracket(str(infos[0][4][0]))}:{port}")
    return host, port


def _is_loopback_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address
