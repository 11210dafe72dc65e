"""Local port probing: one cycle, the reports between cycles, and the loop on loopback.

The loop runs on virtual time (`loopback_clock`), with 30 s between cycles as in real use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio
import trio.testing

from nexus_trio.backends.detect import PROBE_PATHS, Fingerprint
from nexus_trio.config import BackendType, DiscoverySettings
from nexus_trio.discovery.found import Found
from nexus_trio.discovery.probe import diff_cycles, local_url, probe_once, run_local_probe
from nexus_trio.testing import Flavor, SimModel, SimulatedBackend
from nexus_trio.upstream.client import open_upstream_client

OLLAMA = Fingerprint(BackendType.OLLAMA, "0.12.6", "http://127.0.0.1:11434")
VLLM = Fingerprint(BackendType.VLLM, "0.11.0", "http://127.0.0.1:8000")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with open_upstream_client(1.0) as client:
        yield client


async def start(nursery: trio.Nursery, flavor: Flavor) -> SimulatedBackend:
    sim = SimulatedBackend(flavor, [SimModel("llama3:8b")])
    await nursery.start(sim.serve)
    return sim


async def closed_port() -> int:
    """A loopback port nothing listens on (it did a moment ago)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


def drain(inbox: trio.MemoryReceiveChannel[Found]) -> list[Found]:
    reports = []
    while True:
        try:
            reports.append(inbox.receive_nowait())
        except trio.WouldBlock:
            return reports


class RequestCounter:
    """An httpx request hook counting the GETs sent to one port, to wait for cycles.

    A cycle's reports are sent before the next cycle's first GET, so once the
    count passes ``n * len(PROBE_PATHS)`` more, ``n`` whole cycles have been
    reported: no sleeping on a guess of how long a cycle takes.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self._waiters: list[tuple[int, trio.Event]] = []

    async def __call__(self, request: httpx.Request) -> None:
        if request.url.port == self.port:
            self.count += 1
            for target, event in self._waiters:
                if self.count >= target:
                    event.set()

    async def wait_cycles(self, cycles: int) -> None:
        """Return once ``cycles`` more whole cycles (and their reports) are done."""
        event = trio.Event()
        self._waiters.append((self.count + cycles * len(PROBE_PATHS) + 1, event))
        await event.wait()


# -- the cycle logic (pure) ---------------------------------------------------------------------


def test_diff_reports_new_servers() -> None:
    assert diff_cycles({}, {11434: OLLAMA, 8080: None, 8000: VLLM}) == [
        Found("probe", OLLAMA.url, BackendType.OLLAMA, version="0.12.6"),
        Found("probe", VLLM.url, BackendType.VLLM, version="0.11.0"),
    ]


def test_diff_is_silent_on_unchanged_servers() -> None:
    cycle = {11434: OLLAMA, 8080: None}
    assert diff_cycles(cycle, dict(cycle)) == []
    assert diff_cycles({8080: None}, {8080: None}) == []


def test_diff_says_goodbye_once() -> None:
    assert diff_cycles({11434: OLLAMA, 8000: VLLM}, {11434: OLLAMA, 8000: None}) == [
        Found("probe", VLLM.url, gone=True)
    ]
    assert diff_cycles({11434: OLLAMA, 8000: None}, {11434: OLLAMA, 8000: None}) == []
    # a port no longer probed is gone too
    assert diff_cycles({11434: OLLAMA}, {}) == [Found("probe", OLLAMA.url, gone=True)]


def test_diff_reports_a_changed_server() -> None:
    upgraded = Fingerprint(BackendType.OLLAMA, "0.13.0", OLLAMA.url)
    assert diff_cycles({11434: OLLAMA}, {11434: upgraded}) == [
        Found("probe", OLLAMA.url, BackendType.OLLAMA, version="0.13.0")
    ]
    # another server now on the port (llama.cpp where LocalAI was): reported as itself
    llamacpp = Fingerprint(BackendType.LLAMACPP, None, "http://127.0.0.1:8080")
    localai = Fingerprint(BackendType.LOCALAI, "v3.6.0", "http://127.0.0.1:8080")
    assert diff_cycles({8080: localai}, {8080: llamacpp}) == [
        Found("probe", llamacpp.url, BackendType.LLAMACPP)
    ]


def test_local_url() -> None:
    assert local_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert local_url("::1", 8080) == "http://[::1]:8080"
    assert local_url("[::1]", 8080) == "http://[::1]:8080"


# -- one cycle, on loopback ---------------------------------------------------------------------


async def test_probe_once(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    ollama = await start(nursery, Flavor.OLLAMA)
    localai = await start(nursery, Flavor.LOCALAI)
    closed = await closed_port()
    with trio.fail_after(5):
        cycle = await probe_once(client, [closed, ollama.port, localai.port, ollama.port])
    assert list(cycle) == [closed, ollama.port, localai.port]  # as asked, once each
    assert cycle == {
        closed: None,
        ollama.port: Fingerprint(BackendType.OLLAMA, "0.12.6", ollama.url),
        localai.port: Fingerprint(BackendType.LOCALAI, "v3.6.0", localai.url),
    }


# -- the loop -------------------------------------------------------------------------------------


async def test_run_local_probe(
    nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    ollama = await start(nursery, Flavor.OLLAMA)
    vllm = await start(nursery, Flavor.VLLM)
    ourselves = await start(nursery, Flavor.GENERIC)  # stands for Nexus on its own port
    closed = await closed_port()
    settings = DiscoverySettings(
        probe_ports=(ollama.port, vllm.port, closed, ourselves.port), probe_interval_seconds=30
    )
    announce, inbox = trio.open_memory_channel[Found](16)
    cycles = RequestCounter(ollama.port)
    client = httpx.AsyncClient(trust_env=False, event_hooks={"request": [cycles]})

    with trio.fail_after(30 * 20):  # virtual: a guard, past the dozen cycles below
        async with client, trio.open_nursery() as probing:
            await probing.start(
                partial(run_local_probe, settings, client, announce, own_port=ourselves.port)
            )
            # the first cycle's reports are in before started
            assert drain(inbox) == [
                Found("probe", ollama.url, BackendType.OLLAMA, version="0.12.6"),
                Found("probe", vllm.url, BackendType.VLLM, version="0.11.0"),
            ]

            # unchanged servers are not reported again, cycle after cycle
            await cycles.wait_cycles(3)
            assert drain(inbox) == []

            await vllm.refuse_connections()
            assert await inbox.receive() == Found("probe", vllm.url, gone=True)
            await vllm.accept_connections()
            again = await inbox.receive()
            assert again == Found("probe", vllm.url, BackendType.VLLM, version="0.11.0")

            # goodbye once, not every cycle
            await vllm.refuse_connections()
            assert await inbox.receive() == Found("probe", vllm.url, gone=True)
            await cycles.wait_cycles(3)
            assert drain(inbox) == []
            probing.cancel_scope.cancel()
    assert ourselves.stats.requests == 0  # our own port is never probed
    announce.send_nowait(Found("probe", "http://x"))  # the caller's channel is left open


async def test_nothing_to_probe_starts_and_returns(
    client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    announce, inbox = trio.open_memory_channel[Found](1)
    for settings, own_port in [
        (DiscoverySettings(probe_local=False), None),
        (DiscoverySettings(enabled=False), None),
        (DiscoverySettings(probe_ports=(8000,)), 8000),
    ]:
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(run_local_probe, settings, client, announce, own_port=own_port)
            )
        assert trio.current_time() == began  # returned at once, not after an interval
    assert drain(inbox) == []


async def test_stops_when_nobody_listens(
    nursery: trio.Nursery, client: httpx.AsyncClient, loopback_clock: trio.testing.MockClock
) -> None:
    ollama = await start(nursery, Flavor.OLLAMA)
    announce, inbox = trio.open_memory_channel[Found](0)
    await inbox.aclose()  # the registry has gone
    settings = DiscoverySettings(probe_ports=(ollama.port,), probe_interval_seconds=30)
    with trio.fail_after(600):  # virtual: a guard against a hang
        async with trio.open_nursery() as inner:
            await inner.start(partial(run_local_probe, settings, client, announce, own_port=None))
    # returned by itself: the inner nursery closed without being cancelled
