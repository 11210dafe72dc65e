"""The dashboard's WebSocket ``/ws``, through trio-websocket: a snapshot first, then
typed events as they happen; big messages whole; a slow client dropped alone.

"As they happen" is checked on virtual time (`loopback_clock`): an event that came from a
timer rather than at once would trip a one-second virtual deadline on any machine. The
other deadlines here guard against a hang.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from nexus_trio.config import BackendType
from nexus_trio.observe.feed import BUFFER, Feed
from nexus_trio.observe.views import backend_view
from nexus_trio.registry import Backend, EngineReport, LoadedModel, Secret
from nexus_trio.testing import Flavor, SimModel, SimulatedBackend

from helpers import sim

CHAT = "/v1/chat/completions"
HELLO: dict[str, Any] = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}]}


@asynccontextmanager
async def open_dashboard(nexus: Any) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket to ``/ws``, on a TCP stream the test owns: trio-websocket's client
    waits for the server's TCP close after a close frame and then leaves its own
    socket to the garbage collector, so the stream is closed here."""
    address = urlsplit(nexus.gateway.url)
    assert address.hostname is not None
    assert address.port is not None
    stream = await trio.open_tcp_stream(address.hostname, address.port)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery, stream, address.hostname, "/ws", max_message_size=2**24
            )
            try:
                yield ws
            finally:
                await ws.aclose()
    finally:
        await stream.aclose()


async def close_code(ws: WebSocketConnection) -> int:
    """Read until the server closes the connection; its close code."""
    while True:
        try:
            await ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code


async def next_of(ws: WebSocketConnection, update_type: str, **match: Any) -> dict[str, Any]:
    """The data of the next message of ``update_type`` whose data has ``match``."""
    while True:
        message = json.loads(await ws.get_message())
        data = message["data"]
        if message["update_type"] == update_type and all(
            data.get(k) == v for k, v in match.items()
        ):
            return data  # type: ignore[no-any-return]


async def test_snapshot_first_then_backend_status_and_request_complete(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b], routing={"strategy": "priority"}, backend_options={"b": {"priority": 2}}
    )
    await nexus.http.post(CHAT, json=HELLO)  # one request before the page opens
    await nexus.settled()
    async with open_dashboard(nexus) as ws:
        first = json.loads(await ws.get_message())
        assert first["update_type"] == "Snapshot"
        snapshot = first["data"]
        assert {b["name"] for b in snapshot["backends"]} == {"a", "b"}
        assert [m["id"] for m in snapshot["models"]] == ["llama3:8b"]
        assert len(snapshot["requests"]) == 1
        assert snapshot["stats"]["requests"] == 1
        assert "url" not in snapshot["backends"][0]  # the page is public: no addresses

        await a.refuse_connections()
        with trio.fail_after(1):
            # A stream that fails on a takes it out of rotation: the page hears at once.
            await nexus.http.post(CHAT, json={**HELLO, "stream": True})
            down = await next_of(ws, "BackendStatus", name="a")
            done = await next_of(ws, "RequestComplete")
        assert (down["status"], down["routable"]) == ("ejected", False)
        assert done["stream"] is True
        assert done["backend"] == "b"
        assert done["failovers"] == [{"from": "a", "to": "b", "phase": "before_first_byte"}]


async def test_a_backend_going_down_is_heard_within_a_second(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    nexus = await start_nexus([sim("a"), sim("b")])
    async with open_dashboard(nexus) as ws:
        await next_of(ws, "Snapshot")
        nexus.gateway.registry.mark_unhealthy(nexus.gateway.registry.get("a"), "probe failed")
        with trio.fail_after(1):
            status = await next_of(ws, "BackendStatus", name="a")
        assert (status["status"], status["routable"]) == ("unhealthy", False)
        assert status["detail"] == "probe failed"
        with trio.fail_after(1):
            change = await next_of(ws, "ModelChange")
        assert change["models"][0]["backends"] == ["a", "b"]


async def test_an_ejected_backend_shows_when_it_returns_and_then_returns(
    autojump_clock: trio.testing.MockClock, start_nexus: Any
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b], routing={"strategy": "priority"}, backend_options={"b": {"priority": 2}}
    )
    a.faults.status = 500  # its chat fails while its probes pass
    async with open_dashboard(nexus) as ws:
        await next_of(ws, "Snapshot")
        assert (await nexus.http.post(CHAT, json=HELLO)).headers["x-nexus-backend"] == "b"
        ejected_at = trio.current_time()
        out = await next_of(ws, "BackendStatus", name="a", status="ejected")
        assert (out["routable"], out["health"], out["ejections"]) == (False, "healthy", 1)
        assert 4 < out["ejected_seconds"] <= 5  # the page counts down from here
        assert "500" in out["detail"]
        change = await next_of(ws, "ModelChange")
        assert change["models"][0]["backends"] == ["a", "b"]

        async with open_dashboard(nexus) as late:  # a page opened now sees it too
            snapshot = await next_of(late, "Snapshot")
        shown = {v["name"]: v["status"] for v in snapshot["backends"]}
        assert shown == {"a": "ejected", "b": "healthy"}

        back = await next_of(ws, "BackendStatus", name="a", status="healthy")
        assert trio.current_time() - ejected_at == pytest.approx(5, abs=0.5)
        assert (back["routable"], back["ejected_seconds"]) == (True, None)


async def test_a_big_fleet_arrives_whole(start_nexus: Any) -> None:
    many = SimulatedBackend(
        Flavor.VLLM, [SimModel(f"model-{i:04d}:7b") for i in range(600)], name="big"
    )
    nexus = await start_nexus([many])
    async with open_dashboard(nexus) as ws:
        text = await ws.get_message()
    assert len(text) > 64 * 1024  # far past any 10 KB limit
    snapshot = json.loads(text)["data"]
    assert len(snapshot["backends"][0]["models"]) == 600
    assert len(snapshot["models"]) == 600


async def test_a_slow_client_is_dropped_and_the_others_get_everything(
    start_nexus: Any, nursery: trio.Nursery
) -> None:
    nexus = await start_nexus([sim("a")])
    feed = nexus.gateway.observer.feed
    received_send, received = trio.open_memory_channel[int](0)

    async def read_everything(task_status: trio.TaskStatus[None]) -> None:
        async with open_dashboard(nexus) as ws:
            await next_of(ws, "Snapshot")
            task_status.started()
            while (n := (await next_of(ws, "RequestComplete"))["n"]) >= 0:
                await received_send.send(n)

    async with open_dashboard(nexus) as slow:
        await next_of(slow, "Snapshot")
        await nursery.start(read_everything)
        assert feed.subscribers == 2
        payload = "x" * 32_000
        published = 0
        # The slow client reads nothing: once its socket buffers and its place in the
        # feed are full, it is dropped; the reader keeps getting every message in turn.
        with trio.fail_after(60):
            while feed.subscribers == 2:
                feed.publish("RequestComplete", {"n": published, "pad": payload})
                assert await received.receive() == published
                published += 1
        assert published > BUFFER
        for n in range(published, published + 5):
            feed.publish("RequestComplete", {"n": n, "pad": payload})
            assert await received.receive() == n
        feed.publish("RequestComplete", {"n": -1})  # the reader is done
        with trio.fail_after(30):  # it reads what it was sent before the drop, then the close
            assert await close_code(slow) == 1013


def test_the_feed_drops_only_the_subscriber_that_falls_behind() -> None:
    feed = Feed(buffer=3)
    slow, quick = feed.subscribe(), feed.subscribe()
    got = []
    for n in range(10):
        feed.publish("RequestComplete", {"n": n})
        got.append(json.loads(quick.receive_nowait())["data"]["n"])
    assert got == list(range(10))
    assert feed.subscribers == 1
    assert [json.loads(slow.receive_nowait())["data"]["n"] for _ in range(3)] == [0, 1, 2]
    with pytest.raises(trio.EndOfChannel):
        slow.receive_nowait()


async def test_dashboards_close_when_nexus_shuts_down(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    async with open_dashboard(nexus) as ws:
        await next_of(ws, "Snapshot")
        nexus.stop.set()
        with trio.fail_after(3):
            assert await close_code(ws) == 1001


def test_the_backend_view_shows_what_the_server_said_of_its_load() -> None:
    backend = Backend(
        "a", "http://10.1.2.3:11434", BackendType.OLLAMA, api_key=Secret("sk-do-not-show")
    )
    assert backend_view(backend, now=0.0, wall=1000.0)["engine"] is None  # never read

    backend.engine = EngineReport(running=3, waiting=2, kv_cache_usage=0.45123)
    assert backend_view(backend, now=0.0, wall=1000.0)["engine"] == {
        "running": 3,
        "waiting": 2,
        "kv_cache_usage": 0.4512,
        "slots": None,
        "loaded": None,  # this server does not tell what it holds
    }
    backend.engine = EngineReport(running=1, slots=2)  # llama.cpp's /slots
    engine = backend_view(backend, now=0.0, wall=1000.0)["engine"]
    assert (engine["running"], engine["slots"], engine["waiting"]) == (1, 2, None)

    backend.engine = EngineReport(
        loaded=(
            LoadedModel("qwen2.5:7b", expires_at=None, size_bytes=5_000_000_000),
            LoadedModel("llama3:8b", expires_at=1299.6, size_bytes=4_000_000_000),
            LoadedModel("phi3:mini", expires_at=990.0),  # past its time, still listed
        )
    )
    view = backend_view(backend, now=0.0, wall=1000.0)
    assert view["engine"]["loaded"] == [
        {"model": "llama3:8b", "expires_in_seconds": 300},
        {"model": "phi3:mini", "expires_in_seconds": 0},
        {"model": "qwen2.5:7b", "expires_in_seconds": None},
    ]
    assert view["engine"]["running"] is None
    text = json.dumps(view)
    assert "10.1.2.3" not in text
    assert "sk-do-not-show" not in text

    backend.engine = EngineReport(loaded=())
    assert backend_view(backend, now=0.0, wall=1000.0)["engine"]["loaded"] == []


async def test_the_engine_load_reaches_the_page_as_it_changes(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    a = sim("a")
    nexus = await start_nexus([a])
    async with open_dashboard(nexus) as ws:
        await next_of(ws, "Snapshot")
        a.busy_elsewhere = 3  # other clients' requests: only the server's report has them
        with trio.fail_after(3):  # the load is read every second
            while True:
                status = await next_of(ws, "BackendStatus", name="a")
                if status["engine"] and status["engine"]["running"] == 3:
                    break
        assert status["engine"]["waiting"] == 0
        assert status["in_flight"] == 0  # none of them is Nexus's
    listed = (await nexus.http.get("/admin/backends")).json()["backends"]
    assert listed[0]["engine"]["running"] == 3
