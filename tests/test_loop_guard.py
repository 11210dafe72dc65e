"""The loop guard: every response says which Nexus sent it (X-Nexus-Via), and no Nexus
takes itself or another Nexus for a backend, whether it probes, is told by the admin
API, or hears of one over discovery."""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from nexus_trio.backends.detect import fingerprint, nexus_refusal
from nexus_trio.config import BackendType, DiscoverySettings, settings_from_mapping
from nexus_trio.discovery.found import Found
from nexus_trio.discovery.probe import run_local_probe
from nexus_trio.errors import BackendProtocolError
from nexus_trio.registry import Backend
from nexus_trio.supervisor import serve_nexus
from nexus_trio.testing import Flavor
from nexus_trio.upstream.client import open_upstream_client

from helpers import nexus_config, sim

CHAT = "/v1/chat/completions"
HELLO = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}


async def test_every_response_carries_the_instance_id(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    own = nexus.gateway.instance_id
    assert len(own) == 16
    http = nexus.http
    answers = {
        "chat": await http.post("/v1/chat/completions", json=HELLO),
        "chat stream": await http.post("/v1/chat/completions", json={**HELLO, "stream": True}),
        "messages": await http.post("/v1/messages", json={**HELLO, "max_tokens": 20}),
        "models": await http.get("/v1/models"),
        "health": await http.get("/health"),
        "unknown path": await http.get("/nowhere"),
        "bad body": await http.post("/v1/chat/completions", content=b"{"),
        "wrong method": await http.get("/v1/chat/completions"),
    }
    for what, response in answers.items():
        assert response.headers.get("x-nexus-via") == own, what
    assert answers["chat"].status_code == 200
    assert answers["bad body"].status_code == 400


async def test_two_nexus_have_different_ids(start_nexus: Any) -> None:
    one = await start_nexus([sim("a")])
    two = await start_nexus([sim("b")])
    assert one.gateway.instance_id != two.gateway.instance_id


async def test_admin_refuses_this_nexus_itself(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    for body in ({"url": nexus.url}, {"url": nexus.url, "type": "openai"}):
        refused = await nexus.http.post("/admin/backends", json=body)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert "is this Nexus itself" in error["message"]
    assert [b.name for b in nexus.gateway.registry] == ["a"]


async def test_admin_refuses_another_nexus(start_nexus: Any) -> None:
    front = await start_nexus([sim("a")])
    other = await start_nexus([sim("b", Flavor.OLLAMA, "qwen2.5:7b")])
    refused = await front.http.post("/admin/backends", json={"url": other.url})
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    assert "another Nexus" in message
    assert other.gateway.instance_id in message
    assert "gateway, not a backend" in message
    # discovery (mDNS) is refused the same way, quietly
    fleet = front.gateway.fleet
    assert fleet is not None
    await fleet._admit_quietly(Found("mdns", other.url))
    assert [b.name for b in front.gateway.registry] == ["a"]


async def test_a_configured_nexus_is_trusted(start_nexus: Any, nursery: trio.Nursery) -> None:
    """A Nexus written in the config file with its type is what the user asked for."""
    behind = await start_nexus([sim("b")])
    config = nexus_config([])
    config["backends"] = [{"name": "tier2", "url": behind.url, "type": "generic"}]
    stop = trio.Event()
    gateway = await nursery.start(
        partial(serve_nexus, settings_from_mapping(config, environ={}), environ={},
                handle_signals=False, stop=stop)
    )  # fmt: skip
    assert [b.name for b in gateway.registry] == ["tier2"]
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        answer = await http.post("/v1/chat/completions", json=HELLO)
    assert answer.status_code == 200
    assert answer.headers["x-nexus-via"] == gateway.instance_id
    stop.set()


async def test_fingerprint_tells_a_nexus(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    async with httpx.AsyncClient(trust_env=False) as client:
        found = await fingerprint(client, nexus.url)
    assert found is not None
    assert found.nexus_via == nexus.gateway.instance_id
    own = nexus_refusal(found, nexus.gateway.instance_id)
    assert own is not None
    assert "itself" in own
    other = nexus_refusal(found, "0123456789abcdef")
    assert other is not None
    assert "another Nexus" in other


async def test_probing_skips_every_nexus(
    start_nexus: Any,
    nursery: trio.Nursery,
    loopback_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours = await start_nexus([sim("a")])
    other = await start_nexus([sim("b")])
    ollama = sim("c", Flavor.OLLAMA)
    await nursery.start(ollama.serve)
    ports = [int(n.url.rsplit(":", 1)[1]) for n in (ours, other)] + [ollama.port]
    settings = DiscoverySettings(probe_ports=tuple(ports), probe_interval_seconds=30)
    announce, inbox = trio.open_memory_channel[Found](16)
    caplog.set_level(logging.INFO, logger="nexus.discovery")
    async with httpx.AsyncClient(trust_env=False) as client, trio.open_nursery() as probing:
        await probing.start(
            partial(
                run_local_probe, settings, client, announce, own_port=None,
                own_id=ours.gateway.instance_id,
            )
        )  # fmt: skip
        first = [inbox.receive_nowait()]
        with pytest.raises(trio.WouldBlock):
            inbox.receive_nowait()
        await trio.sleep(65)  # two more cycles: nothing new, and no second log line
        with pytest.raises(trio.WouldBlock):
            inbox.receive_nowait()
        probing.cancel_scope.cancel()
    assert [f.url for f in first] == [ollama.url]
    skipped = [r.getMessage() for r in caplog.records if "skipping port" in r.getMessage()]
    assert len(skipped) == 2  # once per Nexus, not once per cycle
    assert any("this Nexus itself" in s for s in skipped)
    assert any("another Nexus" in s for s in skipped)


async def test_a_request_that_comes_back_is_refused_at_once(start_nexus: Any) -> None:
    """A backend whose URL leads back to this Nexus (a configured one is trusted as
    written): the request Nexus sends it carries Nexus's own id, so it is refused at once
    (508) instead of being forwarded again, and the refusal's id tells the sender it met
    itself, so the attempt fails and routing moves on."""
    nexus = await start_nexus([sim("a")])
    own = nexus.gateway.instance_id
    looped = await nexus.http.post(CHAT, json=HELLO, headers={"x-nexus-via": own})
    assert looped.status_code == 508
    assert looped.json()["error"]["code"] == "loop_detected"
    assert looped.headers["x-nexus-via"] == own
    # Another Nexus's id is no loop: a chain of two is served.
    assert (await nexus.http.post(CHAT, json=HELLO, headers={"x-nexus-via": "other"})).is_success
    itself = Backend(name="myself", url=nexus.url, type=BackendType.GENERIC)
    async with open_upstream_client(5.0, own) as client:
        with pytest.raises(BackendProtocolError, match="leads back to this Nexus"):
            await client.open_chat(itself, "r-1", json.dumps(HELLO).encode())
