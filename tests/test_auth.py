"""Keys, limits, budgets and usage, end to end: the official SDKs with keys made on the
running Nexus, against simulated backends on loopback.

A missing, unknown or revoked key is refused in the shape of the API asked; a key's
models, requests, tokens and concurrency per minute and its budget hold; every request's
usage is recorded and priced; a key appears nowhere but in the client's own headers.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected, wrap_client_stream

from nexus_trio.config import Priority
from nexus_trio.policy.budget import cost_usd
from nexus_trio.policy.keys import Caller, KeyRecord
from nexus_trio.store.base import UsageRecord
from nexus_trio.testing import Flavor

from helpers import Running, sim

MODEL = "llama3:8b"
MESSAGES: list[Any] = [{"role": "user", "content": "Say something short."}]
AUTH = {"enabled": True}


def openai_client(nexus: Running, key: str | None) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=nexus.url + "/v1", api_key=key or "", max_retries=0)
    nexus.sdk_clients.append(client)
    return client


def anthropic_client(nexus: Running, key: str) -> anthropic.AsyncAnthropic:
    client = anthropic.AsyncAnthropic(base_url=nexus.url, api_key=key, max_retries=0)
    nexus.sdk_clients.append(client)
    return client


async def ask(nexus: Running, key: str | None, model: str = MODEL, **extra: Any) -> Any:
    return await openai_client(nexus, key).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, temperature=0, **extra
    )


async def test_a_key_opens_every_api_and_nothing_else_does(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")], auth=AUTH)
    key, record = await nexus.gateway.keyring.create("alice")
    assert key.startswith("nx-")
    assert len(key) >= 3 + 32
    assert record.key_hash != key
    assert key not in repr(record)
    assert (await ask(nexus, key)).headers["x-nexus-backend"] == "a"
    answer = await anthropic_client(nexus, key).messages.create(
        model=MODEL, max_tokens=32, messages=MESSAGES
    )
    assert answer.content
    listed = await nexus.http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
    assert listed.status_code == 200
    ollama = await nexus.http.post(
        "/api/chat", headers={"x-api-key": key},
        json={"model": MODEL, "messages": MESSAGES, "stream": False},
    )  # fmt: skip
    assert ollama.status_code == 200

    missing = await nexus.http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES}
    )
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    for wrong in ("nx-not-a-key", key[:-1] + ("A" if key[-1] != "A" else "B")):
        with pytest.raises(openai.AuthenticationError) as raised:
            await ask(nexus, wrong)
        assert raised.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as refused:
        await anthropic_client(nexus, "nx-wrong").messages.create(
            model=MODEL, max_tokens=32, messages=MESSAGES
        )
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    bare = await nexus.http.post("/api/chat", json={"model": MODEL, "messages": MESSAGES})
    assert bare.status_code == 401
    assert set(bare.json()) == {"error"}  # Ollama's shape: {"error": "..."}
    assert (await nexus.http.get("/v1/models")).status_code == 401
    # Open without a key: liveness and metrics.
    assert (await nexus.http.get("/health")).status_code == 200
    assert (await nexus.http.get("/metrics")).status_code == 200

    await nexus.gateway.keyring.revoke("alice")
    with pytest.raises(openai.AuthenticationError):
        await ask(nexus, key)


async def test_a_key_may_use_its_models_only(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a", Flavor.VLLM, MODEL, "phi3:mini")], auth=AUTH)
    key, _ = await nexus.gateway.keyring.create("ci", models=("llama3*",))
    assert (await ask(nexus, key)).status_code == 200
    with pytest.raises(openai.PermissionDeniedError) as raised:
        await ask(nexus, key, model="phi3:mini")
    assert raised.value.code == "model_not_allowed"
    assert "phi3:mini" in raised.value.message


async def test_the_key_is_never_logged_counted_returned_or_forwarded(
    start_nexus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend], auth=AUTH)
    caplog.set_level(logging.DEBUG)
    key, record = await nexus.gateway.keyring.create("alice", rpm=100)
    raw = await ask(nexus, key)
    stream = await openai_client(nexus, key).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    async for _ in stream:
        pass
    await anthropic_client(nexus, key).messages.create(
        model=MODEL, max_tokens=16, messages=MESSAGES
    )
    with pytest.raises(openai.NotFoundError):
        await ask(nexus, key, model="nope")  # an error path too
    seen = [
        caplog.text,
        (await nexus.http.get("/metrics")).text,
        raw.text,
        str(dict(raw.headers)),
        str(backend.stats.last_headers),
        str(backend.stats.last_chat_body),
        (await nexus.http.get("/admin/keys")).text,
    ]
    for text in seen:
        assert key not in text
        assert record.key_hash not in text
    assert "authorization" not in backend.stats.last_headers
    assert "x-api-key" not in backend.stats.last_headers


async def test_requests_per_minute_and_the_headers_that_tell_them(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    nexus = await start_nexus([sim("a")], auth=AUTH)
    key, _ = await nexus.gateway.keyring.create("bot", rpm=2)
    first = await ask(nexus, key)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    second = await ask(nexus, key)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" not in second.headers  # the key has no tpm
    with pytest.raises(openai.RateLimitError) as raised:
        await ask(nexus, key)
    refused = raised.value.response
    assert raised.value.code == "rate_limit_exceeded"
    retry = int(refused.headers["retry-after"])
    assert 1 <= retry <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    await trio.sleep(retry)  # virtual time: the window has room again
    assert (await ask(nexus, key)).status_code == 200


async def test_tokens_per_minute_count_what_the_backends_report(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    nexus = await start_nexus([sim("a")], auth=AUTH)
    key, _ = await nexus.gateway.keyring.create("bot", tpm=10)
    first = await ask(nexus, key)
    used = first.parse().usage.total_tokens
    assert used > 10  # one answer overshoots the minute's tokens
    assert first.headers["x-ratelimit-limit-tokens"] == "10"
    with pytest.raises(openai.RateLimitError) as raised:
        await ask(nexus, key)
    assert raised.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    await trio.sleep(61)
    assert (await ask(nexus, key)).status_code == 200


async def test_concurrent_requests_of_a_key(start_nexus: Any) -> None:
    slow = sim("a")
    slow.faults.delay_before_headers_seconds = 30
    nexus = await start_nexus(
        [slow, sim("b")], auth=AUTH, routing={"strategy": "priority"},
        backend_options={"a": {"priority": 1}, "b": {"priority": 2}},
    )  # fmt: skip
    key, _ = await nexus.gateway.keyring.create("bot", concurrency=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, nexus, key)  # waits at "a"
        await nexus.settled()
        while slow.stats.chat_in_flight < 1:
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        with pytest.raises(openai.RateLimitError) as raised:
            await ask(nexus, key)
        assert "at once" in raised.value.message or "concurren" in raised.value.message
        nursery.cancel_scope.cancel()


async def test_a_budget_lets_a_running_stream_finish_then_refuses(start_nexus: Any) -> None:
    prices = {"price_input_per_mtok": 2_000_000.0, "price_output_per_mtok": 3_000_000.0}
    backend = sim("a")
    nexus = await start_nexus([backend], auth=AUTH, backend_options={"a": prices})
    store = nexus.gateway.store
    key, _ = await nexus.gateway.keyring.create("contractor", budget_usd=100.0, period="month")
    # The first answer costs more than the whole budget, and is streamed to its end.
    text, finished = "", None
    async for chunk in await openai_client(nexus, key).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    ):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finished = choice.finish_reason or finished
    assert finished == "stop"
    assert text
    await nexus.settled()
    (record,) = await store.usage(key="contractor")
    assert (record.backend, record.requests) == ("a", 1)
    assert record.cost_usd == cost_usd(
        record.prompt_tokens, record.completion_tokens, 2_000_000.0, 3_000_000.0
    )
    assert record.cost_usd > 100.0
    with pytest.raises(openai.RateLimitError) as raised:
        await ask(nexus, key)
    assert raised.value.code == "insufficient_quota"
    assert int(raised.value.response.headers["retry-after"]) >= 1


async def test_a_budget_warns_past_80_percent(
    start_nexus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    prices = {"price_input_per_mtok": 1.0, "price_output_per_mtok": 1.0}
    nexus = await start_nexus([sim("a")], auth=AUTH, backend_options={"a": prices})
    key, _ = await nexus.gateway.keyring.create("team", budget_usd=1.0)
    quiet = await ask(nexus, key)
    assert "x-nexus-budget-remaining" not in quiet.headers
    # Spent earlier this month (what the store holds), on top of that first request:
    await nexus.settled()
    (first,) = await nexus.gateway.store.usage(key="team")
    nexus.gateway.store.record_usage(UsageRecord(time.time(), "team", MODEL, "a", 0, 0, 0.85, 200))
    nexus.gateway.gatekeeper.forget_spending("team")
    caplog.set_level(logging.WARNING, logger="nexus.auth")
    remaining = []
    for _ in range(2):
        warned = await ask(nexus, key)
        remaining.append(float(warned.headers["x-nexus-budget-remaining"]))
        await nexus.settled()
    assert remaining[0] == pytest.approx(1.0 - 0.85 - first.cost_usd, rel=1e-9)
    assert remaining[1] < remaining[0]
    assert caplog.text.count("of its $1 budget") == 1  # the log warns once


async def test_a_local_only_key_never_reaches_the_cloud(start_nexus: Any) -> None:
    cloud = sim("cloud")
    nexus = await start_nexus(
        [cloud, sim("home")], auth=AUTH, routing={"strategy": "priority"},
        backend_options={"cloud": {"zone": "cloud", "priority": 1}, "home": {"priority": 2}},
    )  # fmt: skip
    private, _ = await nexus.gateway.keyring.create("lab", privacy="local")
    anyone, _ = await nexus.gateway.keyring.create("web")
    assert (await ask(nexus, private)).headers["x-nexus-backend"] == "home"
    # The header cannot widen what the key may do.
    widened = await ask(nexus, private, extra_headers={"X-Nexus-Privacy": "any"})
    assert widened.headers["x-nexus-backend"] == "home"
    assert cloud.stats.chat_requests == 0
    assert (await ask(nexus, anyone)).headers["x-nexus-backend"] == "cloud"


async def test_usage_is_recorded_for_everyone_with_auth_off(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    assert (await ask(nexus, "any-or-none")).status_code == 200
    await nexus.settled()
    (row,) = await nexus.gateway.store.usage()
    assert (row.key, row.model, row.backend, row.requests) == ("anonymous", MODEL, "a", 1)
    assert row.prompt_tokens > 0
    assert row.completion_tokens > 0


async def test_the_dashboard_data_needs_a_key_and_its_page_does_not(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")], auth=AUTH)
    key, _ = await nexus.gateway.keyring.create("ops")
    assert (await nexus.http.get("/")).status_code == 200
    assert (await nexus.http.get("/v1/stats")).status_code == 401
    headers = {"authorization": f"Bearer {key}"}
    assert (await nexus.http.get("/v1/stats", headers=headers)).status_code == 200
    with pytest.raises(httpx.HTTPError):
        async with nexus.http.stream("GET", "/ws") as response:
            response.raise_for_status()


async def test_the_dashboard_feed_takes_its_key_as_a_subprotocol(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")], auth=AUTH)
    key, _ = await nexus.gateway.keyring.create("ops")
    address = urlsplit(nexus.url)
    assert address.hostname is not None
    assert address.port is not None

    statuses: list[int] = []

    async def first_message(subprotocols: list[str]) -> dict[str, Any]:
        """The first message of the feed, or the status it was refused with."""
        stream = await trio.open_tcp_stream(address.hostname, address.port)
        try:
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(
                    nursery, stream, address.hostname, "/ws", subprotocols=subprotocols
                )
                try:
                    assert ws.subprotocol == "nexus-key"
                    message: dict[str, Any] = json.loads(await ws.get_message())
                    return message
                finally:
                    await ws.aclose()
        except* ConnectionRejected as refused:
            (rejection,) = refused.exceptions
            assert isinstance(rejection, ConnectionRejected)
            statuses.append(rejection.status_code)
        finally:
            await stream.aclose()
        return {"refused": statuses[-1]}

    assert (await first_message(["nexus-key", key]))["update_type"] == "Snapshot"
    assert await first_message(["nexus-key", "nx-wrong"]) == {"refused": 403}


@pytest.mark.parametrize(
    ("own", "asked", "expected"),
    [
        (Priority.HIGH, Priority.LOW, Priority.LOW),
        (Priority.NORMAL, Priority.LOW, Priority.LOW),
        (Priority.LOW, Priority.HIGH, Priority.LOW),  # never raised
        (Priority.NORMAL, Priority.HIGH, Priority.NORMAL),
        (Priority.HIGH, None, Priority.HIGH),
    ],
)
def test_a_request_may_lower_its_priority_never_raise_it(
    own: Priority, asked: Priority | None, expected: Priority
) -> None:
    record = KeyRecord("k", "hash", "nx-abcdef", 0.0, priority=own)
    assert Caller("k", record, lowered=asked).priority is expected
    assert Caller("anonymous", None, lowered=asked).priority is (
        Priority.LOW if asked is Priority.LOW else Priority.NORMAL
    )
