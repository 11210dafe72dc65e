"""What every request handler shares: settings, the registry, the upstream client,
what Nexus sees of its traffic (`nexus_trio.observe.Observer`), and the requests in
flight (`nexus_trio.drain.Drain`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nexus_trio.config import Settings
from nexus_trio.drain import Drain
from nexus_trio.gatekeeper import Gatekeeper
from nexus_trio.instance import new_instance_id
from nexus_trio.observe import Observer
from nexus_trio.policy.keyring import Keyring
from nexus_trio.policy.queue import FairQueue
from nexus_trio.registry import Registry
from nexus_trio.store.base import Store
from nexus_trio.store.memory import MemoryStore
from nexus_trio.upstream.client import UpstreamClient

if TYPE_CHECKING:
    from nexus_trio.fleet import Fleet
    from nexus_trio.testing import SimulatedBackend

__all__ = ["Gateway"]


@dataclass(eq=False)
class Gateway:
    settings: Settings
    registry: Registry
    client: UpstreamClient
    observer: Observer
    started_at: float = field(default_factory=time.monotonic)
    # Unix time of the start: the ``created`` of every model Nexus lists.
    created: int = field(default_factory=lambda: int(time.time()))
    url: str = ""  # where the HTTP server listens, once it does
    fleet: Fleet | None = None  # adds and removes backends at run time (admin API)
    drain: Drain = field(default_factory=Drain)  # requests in flight; shutdown
    demo_fleet: list[SimulatedBackend] = field(default_factory=list)  # `nexus serve --demo`
    # Sent on every response as X-Nexus-Via: detection refuses a server that answers with it.
    instance_id: str = field(default_factory=new_instance_id)
    # Keys and usage: the store they outlive the process in, and the keys in memory.
    store: Store = field(default_factory=MemoryStore)
    keyring: Keyring = field(init=False)
    # Who may ask, and how much: keys, their models, limits and budgets, usage recorded.
    gatekeeper: Gatekeeper = field(init=False)
    # Requests waiting for a backend with room ([queue]); freed slots wake them.
    queue: FairQueue = field(init=False)

    def __post_init__(self) -> None:
        self.keyring = Keyring(self.store)
        self.gatekeeper = Gatekeeper(self.settings.auth, self.keyring, self.store, self.registry)
        self.queue = FairQueue.from_settings(self.settings.queue)
        self.registry.slot_freed_hook = self.queue.slot_freed
        self.observer.metrics.watch_queue(self.queue)
        self.observer.feed.watch_queue(self.queue)

    @property
    def draining(self) -> bool:
        """Set on the first shutdown signal: new requests get 503."""
        return self.drain.draining

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_at
