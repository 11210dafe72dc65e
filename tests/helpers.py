"""What many tests share: simulated backends, a config for them, a running Nexus."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import trio
import trio.testing

from nexus_trio.gateway import Gateway
from nexus_trio.registry import Health, RegistryEvent
from nexus_trio.testing import Flavor, SimModel, SimulatedBackend


@dataclass
class Running:
    """A Nexus serving on loopback, with what a test needs to talk to it."""

    gateway: Gateway
    http: httpx.AsyncClient
    stop: trio.Event
    sdk_clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        # No SDK retries: a test must see what Nexus itself answered.
        client = openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key="not-needed", max_retries=0, **kwargs
        )
        self.sdk_clients.append(client)
        return client

    def anthropic(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        # No SDK retries, as above; any key (Nexus takes none unless configured to).
        client = anthropic.AsyncAnthropic(
            base_url=self.url, api_key="not-needed", max_retries=0, **kwargs
        )
        self.sdk_clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.sdk_clients:
            await client.close()
        await self.http.aclose()

    async def health(self) -> dict[str, Any]:
        response = await self.http.get("/health")
        body: dict[str, Any] = response.json()
        return body

    async def settled(self) -> None:
        """Wait until every task has run as far as it can: a response the client has
        read may still have its bookkeeping (counters, log line) to do."""
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)

    async def in_flight(self) -> dict[str, int]:
        """Requests in flight per backend, once every task has settled."""
        await self.settled()
        return {b.name: b.in_flight for b in self.gateway.registry}


def loopback_clock() -> trio.testing.MockClock:
    """Virtual time for a trio run that talks over real loopback sockets.

    Like pytest-trio's ``autojump_clock``, it jumps to the next deadline when nothing can run,
    so sleeps, timeouts and deadlines are instant and exact. Unlike it, it first waits for
    every task to have been blocked for 10 ms of real time: with a threshold of 0, a task
    waiting on the kernel (a connection being accepted, bytes on their way through the
    loopback) would look idle, and the clock would jump past deadlines that were not due.
    Runs without a TCP socket use ``autojump_clock``: over in-memory streams, or a Unix
    socket pair, whose bytes are in the other end's queue by the time a send returns.
    """
    return trio.testing.MockClock(autojump_threshold=0.01)


def sim(name: str, flavor: Flavor = Flavor.VLLM, *models: str, **kwargs: Any) -> SimulatedBackend:
    """A simulated backend as fast as it can go, serving ``models`` (default ``llama3:8b``)."""
    return SimulatedBackend(
        flavor=flavor,
        models=[SimModel(m, tools=True) for m in (models or ("llama3:8b",))],
        name=name,
        **kwargs,
    )


def nexus_config(
    backends: Sequence[SimulatedBackend],
    backend_options: dict[str, dict[str, Any]] | None = None,
    **sections: dict[str, Any],
) -> dict[str, Any]:
    """A config mapping: these backends (already serving), loopback, no discovery.

    ``backend_options`` adds keys to a backend's entry by name (``{"a": {"priority": 2}}``).
    """
    options = backend_options or {}
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "discovery": {"enabled": False, "interfaces": ["127.0.0.1"]},
        # Answer "no healthy backend" at once: tests/test_patience.py covers the wait.
        "routing": {"wait_for_backend_seconds": 0},
        # Keys and usage in SQLite's in-memory database: nothing written beside the
        # default state file, which is shared (the user's state directory).
        "store": {"url": "sqlite:///:memory:"},
        "backends": [
            {"name": b.name, "url": b.url, "type": b.flavor.value, **options.get(b.name, {})}
            for b in backends
        ],
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


async def wait_for_health(
    events: trio.MemoryReceiveChannel[RegistryEvent], backend: str, health: Health
) -> None:
    """Wait for the registry to report ``backend`` turning ``health``."""
    async for event in events:
        if event.kind == "health" and event.backend == backend and event.detail == health.value:
            return
    raise AssertionError("the registry stopped publishing")


async def wait_for_ejection_end(
    events: trio.MemoryReceiveChannel[RegistryEvent], backend: str
) -> None:
    """Wait for the registry to report the end of ``backend``'s ejection."""
    async for event in events:
        if (event.kind, event.backend, event.detail) == ("ejection", backend, "ended"):
            return
    raise AssertionError("the registry stopped publishing")


# ``nexus`` as a process, and the line that says where it listens.
NEXUS = [sys.executable, "-m", "nexus_trio"]
LISTENING = re.compile(rb"listening on (http://\S+)")


class ProcessOutput:
    """A process's output, read to its end in the background so the pipe never fills."""

    def __init__(self) -> None:
        self.seen = bytearray()
        self.ended = False
        self._changed = trio.Event()

    async def run(self, stream: trio.abc.ReceiveStream) -> None:
        async with stream:
            async for data in stream:
                self.seen += data
                self._changed.set()
                self._changed = trio.Event()
        self.ended = True
        self._changed.set()

    async def wait_for(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        while (match := pattern.search(self.seen)) is None:
            if self.ended:
                raise AssertionError(f"never printed {pattern.pattern!r}:\n{self.text}")
            await self._changed.wait()
        return match

    @property
    def text(self) -> str:
        return self.seen.decode(errors="replace")
