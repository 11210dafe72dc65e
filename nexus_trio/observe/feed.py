"""The dashboard's live feed: typed messages fanned out to every WebSocket.

Each message is one JSON text, ``{"update_type": ..., "data": ...}``, encoded
once for all subscribers. ``BackendStatus`` and ``ModelChange`` come from the
registry's own change events (not from a timer); ``RequestComplete`` from each
request as it ends (`nexus_trio.observe.observer`); ``QueueDepth`` (``{"depth": n}``)
each time the number of requests waiting for a backend with room changes
(`nexus_trio.policy.queue`).

A subscriber that falls `BUFFER` messages behind is dropped — its channel is
closed, and its WebSocket ends — so one slow browser never slows the others or
the requests. Messages are never cut or skipped for size: a subscriber gets
every message whole, or is told it was dropped by its connection closing.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from nexus_trio.catalog import listed_models
from nexus_trio.config import RoutingSettings
from nexus_trio.observe.views import backend_view
from nexus_trio.policy.queue import FairQueue
from nexus_trio.registry import Registry, RegistryEvent

__all__ = ["BUFFER", "Feed"]

BUFFER = 512

BACKEND_STATUS = "BackendStatus"
MODEL_CHANGE = "ModelChange"
REQUEST_COMPLETE = "RequestComplete"
QUEUE_DEPTH = "QueueDepth"


class Feed:
    """Publish-subscribe for the dashboard's messages."""

    def __init__(self, buffer: int = BUFFER) -> None:
        self._buffer = buffer
        self._subscribers: list[trio.MemorySendChannel[str]] = []

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> trio.MemoryReceiveChannel[str]:
        """A channel of every later message; close it to leave. It ends (closes) if
        the subscriber falls behind."""
        send, receive = trio.open_memory_channel[str](self._buffer)
        self._subscribers.append(send)
        return receive

    def publish(self, update_type: str, data: Any) -> None:
        """Send one message to every subscriber, without waiting for any of them."""
        if not self._subscribers:
            return
        text = json.dumps({"update_type": update_type, "data": data}, separators=(",", ":"))
        alive = []
        for channel in self._subscribers:
            try:
                channel.send_nowait(text)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                channel.close()  # too slow, or gone
                continue
            alive.append(channel)
        self._subscribers = alive

    def watch_queue(self, queue: FairQueue) -> None:
        """Publish ``queue``'s depth each time it changes."""
        queue.on_depth = self._queue_depth

    def _queue_depth(self, depth: int) -> None:
        self.publish(QUEUE_DEPTH, {"depth": depth})

    async def run(
        self,
        registry: Registry,
        routing: RoutingSettings,
        created: int,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Turn the registry's changes into messages, until cancelled."""
        with registry.subscribe(buffer=float("inf")) as changes:
            task_status.started()
            async for event in changes:
                self._translate(event, registry, routing, created)

    def _translate(
        self, event: RegistryEvent, registry: Registry, routing: RoutingSettings, created: int
    ) -> None:
        if event.kind == "backend_removed":
            self.publish(BACKEND_STATUS, {"name": event.backend, "removed": True})
        elif event.backend in registry:
            self.publish(
                BACKEND_STATUS, backend_view(registry.get(event.backend), trio.current_time())
            )
        if event.kind in ("backend_added", "backend_removed", "models", "health", "ejection"):
            # The models' list says which are available: health and ejections change that too.
            self.publish(MODEL_CHANGE, {"models": listed_models(registry, routing, created)})
