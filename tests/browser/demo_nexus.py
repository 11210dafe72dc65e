"""A Nexus serving the demo fleet in-process, as the browser tests drive it."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import trio
import trio.testing

from nexus_trio.gateway import Gateway
from nexus_trio.observe.record import RequestRecord
from nexus_trio.testing import SimulatedBackend

_messages = itertools.count(1)


@dataclass
class Demo:
    """A Nexus serving the demo fleet on loopback, and what a test does to it."""

    gateway: Gateway
    http: httpx.AsyncClient
    stop: trio.Event
    stopped: trio.Event  # set once serve_nexus has returned

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def sim(self, name: str) -> SimulatedBackend:
        """One of the demo fleet's simulated backends, by name."""
        return next(s for s in self.gateway.demo_fleet if s.name == name)

    async def chat(
        self, model: str, *, stream: bool = True, request_id: str | None = None
    ) -> httpx.Response:
        """One chat request, read to its end; each asks something new, so answers differ."""
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"Hello, dashboard #{next(_messages)}"}],
            "stream": stream,
        }
        headers = {"x-request-id": request_id} if request_id else {}
        return await self.http.post("/v1/chat/completions", json=body, headers=headers)

    async def record(self, request_id: str) -> RequestRecord:
        """The finished request's record: it is kept in the request's own ``finally``,
        which may run just after the client has read the last byte."""
        with trio.fail_after(5):
            while True:
                for record in reversed(self.gateway.observer.history):
                    if record.request_id == request_id:
                        return record
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)

    async def shut_down(self) -> None:
        """Stop as a SIGTERM would (the dashboards are closed with 1001), and wait for it."""
        self.stop.set()
        with trio.fail_after(15):
            await self.stopped.wait()
        await self.http.aclose()


StartDemo = Callable[..., Awaitable[Demo]]
