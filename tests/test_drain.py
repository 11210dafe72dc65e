"""Graceful shutdown: drain what is in flight, refuse what is new, end the rest properly.

In-process (``serve_nexus`` with a ``stop`` event) for the details, on virtual time
(`loopback_clock`), so graces and deadlines are exact; then a real ``nexus serve`` process
and real signals for the exit path, on real time, where each deadline guards against a hang.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing

from nexus_trio.api.app import make_quart_app
from nexus_trio.config import settings_from_mapping
from nexus_trio.gateway import Gateway
from nexus_trio.supervisor import serve_nexus
from nexus_trio.testing import SimulatedBackend, expected_answer

from helpers import LISTENING, NEXUS, ProcessOutput, nexus_config, sim

MODEL = "llama3:8b"
CHAT = "/v1/chat/completions"
# Different questions, so that each stream has its own answer to check.
QUESTIONS = ["Tell me a story.", "Why is the sky blue?", "Name three rivers.", "Count to ten."]
EVENT_END = re.compile(rb"\r?\n\r?\n")


def messages(question: str) -> list[Any]:
    return [{"role": "user", "content": question}]


def chat_body(question: str, *, stream: bool = True) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages(question), "stream": stream}


@dataclass
class Streamed:
    """One streamed answer as the client saw it, every SSE event whole."""

    events: list[str] = field(default_factory=list)  # the data of each event
    rest: bytes = b""  # bytes after the last whole event: must stay empty

    @property
    def text(self) -> str:
        text = ""
        for data in self.events:
            if data != "[DONE]" and "error" not in (chunk := json.loads(data)):
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
        return text

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [
            chunk["error"]
            for data in self.events
            if data != "[DONE]" and "error" in (chunk := json.loads(data))
        ]


def _says_something(data: str) -> bool:
    if data == "[DONE]":
        return False
    chunk = json.loads(data)
    return any(c["delta"].get("content") for c in chunk.get("choices", []))


async def read_stream(
    http: httpx.AsyncClient, question: str, first_token: trio.MemorySendChannel[str]
) -> Streamed:
    """Stream an answer to its end, reporting on ``first_token`` once it has begun."""
    streamed = Streamed()
    buffer = b""
    reported = False
    async with http.stream("POST", CHAT, json=chat_body(question)) as response:
        assert response.status_code == 200
        async for raw in response.aiter_raw():
            buffer += raw
            *whole, buffer = EVENT_END.split(buffer)
            for event in whole:
                line = event.decode()
                assert line.startswith("data: "), line
                streamed.events.append(data := line.removeprefix("data: "))
                if not reported and _says_something(data):
                    reported = True
                    first_token.send_nowait(question)
    streamed.rest = buffer
    return streamed


async def read_sdk_stream(
    client: openai.AsyncOpenAI, question: str, first_token: trio.MemorySendChannel[str]
) -> str:
    """The SDK's view: the text it yielded before it raised (or the whole text)."""
    text = ""
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages(question), stream=True
    )
    async with stream:
        async for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                if not text:
                    first_token.send_nowait(question)
                text += delta
    return text


@dataclass
class Served:
    """Nexus served in-process until ``stop``; ``returned`` is set when serve_nexus returns."""

    gateway: Gateway
    stop: trio.Event
    returned: trio.Event


async def serve(nursery: trio.Nursery, backends: list[SimulatedBackend], **server: Any) -> Served:
    for backend in backends:
        await nursery.start(backend.serve)
    settings = settings_from_mapping(nexus_config(backends, server=server), environ={})
    stop, returned = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[Gateway]) -> None:
        await serve_nexus(
            settings, environ={}, handle_signals=False, stop=stop, task_status=task_status
        )
        returned.set()

    gateway = await nursery.start(run)
    return Served(gateway, stop, returned)


async def run_all(calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run every call concurrently; their results in order."""
    results: list[Any] = [None] * len(calls)

    async def one(index: int) -> None:
        results[index] = await calls[index]()

    async with trio.open_nursery() as nursery:
        for index in range(len(calls)):
            nursery.start_soon(one, index)
    return results


async def wait_first_tokens(receive: trio.MemoryReceiveChannel[str], count: int) -> None:
    with trio.fail_after(10):
        for _ in range(count):
            await receive.receive()


def assert_refused_for_shutdown(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    error = response.json()["error"]
    assert error["code"] == "shutting_down"
    assert "shutting down" in error["message"]


def client_address(response: httpx.Response) -> Any:
    return response.extensions["network_stream"].get_extra_info("client_addr")


# -- in-process ---------------------------------------------------------------------------


async def test_streams_in_flight_finish_and_new_requests_get_503(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, loopback_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    backend = sim("a", tokens_per_second=40)  # about a second per answer
    nexus = await serve(nursery, [backend])
    first_token, first_tokens = trio.open_memory_channel[str](8)
    async with (
        httpx.AsyncClient(base_url=nexus.gateway.url, timeout=30) as streams,
        httpx.AsyncClient(base_url=nexus.gateway.url, timeout=30) as kept_alive,
        httpx.AsyncClient(base_url=nexus.gateway.url, timeout=30) as fresh,
        trio.open_nursery() as clients,
    ):
        before = await kept_alive.get("/health")  # its connection stays open, idle
        results: list[Streamed] = []

        async def stream(question: str) -> None:
            results.append(await read_stream(streams, question, first_token))

        for question in QUESTIONS[:3]:
            clients.start_soon(stream, question)
        await wait_first_tokens(first_tokens, 3)

        nexus.stop.set()
        await trio.testing.wait_all_tasks_blocked()  # serve_nexus has begun to drain
        assert nexus.gateway.draining
        assert nexus.gateway.drain.in_flight == 3

        # A new request on a kept-alive connection, and one on a new connection.
        refused = await kept_alive.post(CHAT, json=chat_body("Hi!", stream=False))
        assert_refused_for_shutdown(refused)
        assert client_address(refused) == client_address(before)
        assert_refused_for_shutdown(await fresh.post(CHAT, json=chat_body("Hi!")))

    assert len(results) == 3
    for streamed in results:
        assert streamed.events[-1] == "[DONE]"
        assert streamed.errors == []
        assert streamed.rest == b""
    assert sorted(s.text for s in results) == sorted(
        expected_answer(MODEL, messages(q)) for q in QUESTIONS[:3]
    )
    with trio.fail_after(5):
        await nexus.returned.wait()
    assert nexus.gateway.drain.in_flight == 0
    assert [b.in_flight for b in nexus.gateway.registry] == [0]
    assert backend.stats.chat_in_flight == 0
    assert backend.stats.completed == 3
    logged = [r.getMessage() for r in caplog.records if r.name == "nexus"]
    assert any(m.startswith("draining: 3 requests in flight") for m in logged), logged
    assert any(re.match(r"drained in [\d.]+ s: 0 requests cut", m) for m in logged), logged


async def test_at_the_grace_deadline_each_stream_ends_with_one_error_event(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, loopback_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.INFO, logger="nexus")
    backend = sim("a", tokens_per_second=20)  # a second and a half or more per answer
    nexus = await serve(nursery, [backend], shutdown_grace_seconds=0.3)
    first_token, first_tokens = trio.open_memory_channel[str](8)
    sdk = openai.AsyncOpenAI(base_url=nexus.gateway.url + "/v1", api_key="-", max_retries=0)
    sdk_error: list[openai.APIError] = []

    async def sdk_stream() -> None:
        with pytest.raises(openai.APIError) as raised:
            await read_sdk_stream(sdk, QUESTIONS[3], first_token)
        sdk_error.append(raised.value)

    async with (
        sdk,
        httpx.AsyncClient(base_url=nexus.gateway.url, timeout=30) as http,
        trio.open_nursery() as clients,
    ):
        results: list[Streamed] = []

        async def stream(question: str) -> None:
            results.append(await read_stream(http, question, first_token))

        for question in QUESTIONS[:3]:
            clients.start_soon(stream, question)
        clients.start_soon(sdk_stream)
        await wait_first_tokens(first_tokens, 4)
        stopped = trio.current_time()
        nexus.stop.set()
        with trio.fail_after(10):  # a guard against a hang
            await nexus.returned.wait()
        # Virtual time: the whole grace, then the cut, long before any answer was done.
        assert 0.3 <= trio.current_time() - stopped < 1

    assert len(results) == 3
    for streamed in results:
        assert streamed.rest == b""  # nothing cut mid-event
        assert "[DONE]" not in streamed.events
        assert len(streamed.errors) == 1
        assert streamed.events[-1].startswith('{"error"')
        error = streamed.errors[0]
        assert error["code"] == "shutting_down"
        assert error["type"] == "service_unavailable"
        assert "shutting down" in error["message"]
        # What did arrive is the start of the right answer.
        assert any(
            expected_answer(MODEL, messages(q)).startswith(streamed.text) for q in QUESTIONS[:3]
        )
        assert streamed.text
    (raised,) = sdk_error
    assert "shutting down" in raised.message
    assert raised.body is not None
    assert nexus.gateway.drain.in_flight == 0
    assert [b.in_flight for b in nexus.gateway.registry] == [0]
    await trio.testing.wait_all_tasks_blocked(cushion=0.01)  # the backend sees the hang-ups
    assert backend.stats.chat_in_flight == 0
    assert backend.stats.completed == 0
    logged = [r.getMessage() for r in caplog.records if r.name == "nexus"]
    assert any(m.startswith("draining: 4 requests in flight") for m in logged), logged
    assert any(re.match(r"drained in [\d.]+ s: 4 requests cut", m) for m in logged), logged


async def test_a_request_cut_before_its_first_token_gets_503(
    nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    backend = sim("a")
    backend.faults.delay_before_headers_seconds = 30
    nexus = await serve(nursery, [backend], shutdown_grace_seconds=0.2)
    async with httpx.AsyncClient(base_url=nexus.gateway.url, timeout=30) as http:
        answered: list[httpx.Response] = []

        async def ask() -> None:
            answered.append(await http.post(CHAT, json=chat_body("Hi!")))

        async with trio.open_nursery() as clients:
            clients.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            assert backend.stats.chat_in_flight == 1  # the request has reached the backend
            nexus.stop.set()
    (response,) = answered
    assert_refused_for_shutdown(response)
    assert "in time" in response.json()["error"]["message"]
    with trio.fail_after(10):  # a guard against a hang
        await nexus.returned.wait()
    assert nexus.gateway.drain.in_flight == 0


async def test_stop_with_nothing_in_flight_returns_at_once(
    nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    nexus = await serve(nursery, [sim("a")])
    async with httpx.AsyncClient(base_url=nexus.gateway.url, timeout=30) as http:
        assert (await http.post(CHAT, json=chat_body("Hi!", stream=False))).status_code == 200
    stopped = trio.current_time()
    nexus.stop.set()
    with trio.fail_after(60):  # a guard against a hang
        await nexus.returned.wait()
    assert trio.current_time() - stopped < 1  # virtual time: at once, not after the 30 s grace


async def test_nothing_cuts_a_stream_longer_than_a_minute(
    nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    # Quart's RESPONSE_TIMEOUT (60 s) cuts streams silently: the chat route does not go
    # through Quart, and the Quart routes have it off. Virtual time: a token every 3 s.
    backend = sim("a", tokens_per_second=1 / 3)
    nexus = await serve(nursery, [backend], shutdown_grace_seconds=0.3)
    assert make_quart_app(nexus.gateway).config["RESPONSE_TIMEOUT"] is None
    first_token, _ = trio.open_memory_channel[str](8)
    began = trio.current_time()
    async with httpx.AsyncClient(base_url=nexus.gateway.url, timeout=30) as http:
        streamed = await read_stream(http, QUESTIONS[0], first_token)
    assert trio.current_time() - began > 60
    assert streamed.events[-1] == "[DONE]"
    assert streamed.text == expected_answer(MODEL, messages(QUESTIONS[0]))
    nexus.stop.set()
    await nexus.returned.wait()


# -- a real process -----------------------------------------------------------------------


@dataclass
class Process:
    process: trio.Process
    stderr: ProcessOutput
    url: str


async def start_process(
    nursery: trio.Nursery, tmp_path: Path, backend: SimulatedBackend, grace: float
) -> Process:
    config = tmp_path / "nexus.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0
shutdown_grace_seconds = {grace}

[discovery]
enabled = false
interfaces = ["127.0.0.1"]
probe_local = false

[[backends]]
name = "{backend.name}"
url = "{backend.url}"
type = "{backend.flavor.value}"
"""
    )
    process = await nursery.start(
        partial(
            trio.run_process,
            [*NEXUS, "serve", "--config", str(config)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
    )
    stderr = ProcessOutput()
    assert process.stderr is not None
    nursery.start_soon(stderr.run, process.stderr)
    with trio.fail_after(20):
        url = (await stderr.wait_for(LISTENING)).group(1).decode()
    return Process(process, stderr, url)


@pytest.mark.slow
async def test_sigterm_drains_streams_refuses_new_requests_and_exits_0(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = sim("a", tokens_per_second=20)
    await nursery.start(backend.serve)
    nexus = await start_process(nursery, tmp_path, backend, grace=30)
    first_token, first_tokens = trio.open_memory_channel[str](8)
    async with (
        httpx.AsyncClient(base_url=nexus.url, timeout=30) as http,
        httpx.AsyncClient(base_url=nexus.url, timeout=30) as other,
    ):
        assert (await other.get("/health")).status_code == 200
        streamer = partial(read_stream, http, first_token=first_token)

        async def sigterm_then_ask() -> httpx.Response:
            await wait_first_tokens(first_tokens, 3)
            nexus.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await nexus.stderr.wait_for(re.compile(rb"draining: 3 requests in flight"))
            return await other.post(CHAT, json=chat_body("Hi!", stream=False))

        *results, refused = await run_all(
            [partial(streamer, q) for q in QUESTIONS[:3]] + [sigterm_then_ask]
        )
    assert_refused_for_shutdown(refused)
    for question, streamed in zip(QUESTIONS, results, strict=False):
        assert streamed.events[-1] == "[DONE]"
        assert streamed.text == expected_answer(MODEL, messages(question))
    with trio.fail_after(15):
        assert await nexus.process.wait() == 0
    assert re.search(r"drained in [\d.]+ s: 0 requests cut", nexus.stderr.text)


@pytest.mark.slow
async def test_a_second_sigterm_stops_at_once_and_still_ends_each_stream(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = sim("a", tokens_per_second=10)  # three seconds or more per answer
    await nursery.start(backend.serve)
    nexus = await start_process(nursery, tmp_path, backend, grace=3600)
    first_token, first_tokens = trio.open_memory_channel[str](8)
    async with httpx.AsyncClient(base_url=nexus.url, timeout=30) as http:
        streamer = partial(read_stream, http, first_token=first_token)

        async def sigterm_twice() -> None:
            await wait_first_tokens(first_tokens, 3)
            nexus.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await nexus.stderr.wait_for(re.compile(rb"draining: 3 requests in flight"))
            nexus.process.send_signal(signal.SIGTERM)

        *results, _ = await run_all([partial(streamer, q) for q in QUESTIONS[:3]] + [sigterm_twice])
        # A guard against a hang: waiting out the hour's grace would trip it. That the
        # second signal cut the streams, rather than letting them finish, is shown below.
        with trio.fail_after(15):
            assert await nexus.process.wait() == 0
    for streamed in results:
        assert streamed.rest == b""
        assert "[DONE]" not in streamed.events
        assert [e["code"] for e in streamed.errors] == ["shutting_down"]
    assert "second SIGTERM: stopping now; 3 requests in flight cut" in nexus.stderr.text
