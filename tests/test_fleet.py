"""One registry from every source: merging, goodbyes, the admin API and its state file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from nexus_trio.api.app import make_app
from nexus_trio.discovery.found import Found
from nexus_trio.errors import NotAServer
from nexus_trio.registry import RegistryEvent
from nexus_trio.testing import Flavor

from helpers import sim

HELLO: dict[str, Any] = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}]}


async def next_event(events: trio.MemoryReceiveChannel[RegistryEvent], kind: str) -> RegistryEvent:
    with trio.fail_after(10):
        async for event in events:
            if event.kind == kind:
                return event
    raise AssertionError("no more events")


async def test_one_server_from_three_sources_is_one_backend(start_nexus: Any) -> None:
    backend = sim("configured", Flavor.OLLAMA)
    nexus = await start_nexus([backend], backend_options={"configured": {"priority": 3}})
    fleet = nexus.gateway.fleet
    port = backend.port
    by_probe = await fleet.admit(Found("probe", f"http://127.0.0.1:{port}"))
    by_mdns = await fleet.admit(Found("mdns", f"http://localhost:{port}/v1", name="office-ollama"))
    assert by_probe is by_mdns is nexus.gateway.registry.get("configured")
    assert len(nexus.gateway.registry) == 1
    assert by_probe.sources == {"config", "probe", "mdns"}
    assert by_probe.priority == 3  # config wins for name and priority
    assert (await nexus.http.get("/health")).json()["backends"]["configured"]["sources"] == [
        "config",
        "mdns",
        "probe",
    ]


async def test_a_discovered_server_is_fingerprinted_and_routable_at_once(start_nexus: Any) -> None:
    nexus = await start_nexus([])
    stranger = sim("stranger", Flavor.LLAMACPP, "smollm2:135m")
    async with trio.open_nursery() as nursery:
        await nursery.start(stranger.serve)
        backend = await nexus.gateway.fleet.admit(Found("mdns", stranger.url, name="lab-box"))
        assert (backend.name, backend.type.value) == ("lab-box", "llamacpp")
        assert "smollm2:135m" in backend.models
        response = await nexus.http.post(
            "/v1/chat/completions", json={**HELLO, "model": "smollm2:135m"}
        )
        assert response.status_code == 200
        assert response.headers["x-nexus-backend"] == "lab-box"
        nursery.cancel_scope.cancel()


async def test_unnamed_discoveries_are_named_by_type_and_address(start_nexus: Any) -> None:
    nexus = await start_nexus([])
    server = sim("x", Flavor.VLLM)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        backend = await nexus.gateway.fleet.admit(Found("probe", server.url))
        assert backend.name == f"vllm@127.0.0.1:{server.port}"
        nursery.cancel_scope.cancel()


async def test_goodbye_grace_and_return(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    # Virtual time: "within the grace period" holds however slow this machine is.
    server = sim("x", Flavor.VLLM)
    nexus = await start_nexus([], discovery={"enabled": False, "grace_period_seconds": 5})
    fleet, registry = nexus.gateway.fleet, nexus.gateway.registry
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        found = Found("mdns", server.url, name="gpu")
        await fleet.admit(found)
        fleet.farewell(Found("mdns", server.url, name="gpu", gone=True))
        assert not registry.get("gpu").routable  # at once
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
        assert response.status_code == 503

        await fleet.admit(found)  # announced again within the grace period
        assert registry.get("gpu").routable
        assert (await nexus.http.post("/v1/chat/completions", json=HELLO)).status_code == 200

        events = registry.subscribe()
        fleet.farewell(Found("mdns", server.url, name="gpu", gone=True))
        said_goodbye = trio.current_time()
        removed = await next_event(events, "backend_removed")
        assert trio.current_time() - said_goodbye >= 5  # kept for the whole grace period
        assert removed.backend == "gpu"
        assert "gpu" not in registry
        nursery.cancel_scope.cancel()


async def test_goodbye_from_one_source_keeps_a_configured_backend(start_nexus: Any) -> None:
    server = sim("configured")
    nexus = await start_nexus([server], discovery={"enabled": False, "grace_period_seconds": 0})
    fleet, registry = nexus.gateway.fleet, nexus.gateway.registry
    await fleet.admit(Found("mdns", server.url, name="gpu"))
    fleet.farewell(Found("mdns", server.url, name="gpu", gone=True))
    await nexus.settled()
    assert "configured" in registry
    assert registry.get("configured").sources == {"config"}


# -- the admin API -----------------------------------------------------------------------------


async def test_admin_add_list_remove_and_the_state_file(
    start_nexus: Any, nursery: trio.Nursery, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    nexus = await start_nexus([sim("configured")], server={"state_file": str(state)})
    extra = sim("extra", Flavor.OLLAMA, "qwen2.5:7b")
    await nursery.start(extra.serve)

    added = await nexus.http.post(
        "/admin/backends", json={"url": extra.url, "name": "desk", "priority": 2}
    )
    assert added.status_code == 201, added.text
    view = added.json()["backend"]
    assert (view["name"], view["type"], view["sources"], view["priority"]) == (
        "desk",
        "ollama",
        ["admin"],
        2,
    )
    assert view["models"] == ["qwen2.5:7b"]
    assert json.loads(state.read_text())["backends"] == [
        {"name": "desk", "url": extra.url, "type": "ollama", "priority": 2}
    ]

    listed = (await nexus.http.get("/admin/backends")).json()["backends"]
    assert [b["name"] for b in listed] == ["configured", "desk"]
    models = {m["id"]: m for m in (await nexus.http.get("/admin/models")).json()["models"]}
    assert models["qwen2.5:7b"]["backends"] == ["desk"]
    chat = await nexus.http.post("/v1/chat/completions", json={**HELLO, "model": "qwen2.5:7b"})
    assert chat.headers["x-nexus-backend"] == "desk"

    again = await nexus.http.post("/admin/backends", json={"url": extra.url})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "backend_exists"

    removed = await nexus.http.delete("/admin/backends/desk")
    assert removed.json() == {"removed": "desk"}
    assert json.loads(state.read_text())["backends"] == []
    assert (await nexus.http.delete("/admin/backends/desk")).status_code == 404


async def test_admin_backends_survive_a_restart(
    start_nexus: Any, nursery: trio.Nursery, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    extra = sim("extra", Flavor.VLLM, "mistral:7b")
    await nursery.start(extra.serve)
    first = await start_nexus([], server={"state_file": str(state)})
    assert (await first.http.post("/admin/backends", json={"url": extra.url, "name": "kept"})).\
        status_code == 201  # fmt: skip
    first.stop.set()

    second = await start_nexus([], server={"state_file": str(state)})
    assert "kept" in second.gateway.registry
    assert second.gateway.registry.get("kept").sources == {"admin"}
    response = await second.http.post("/v1/chat/completions", json={**HELLO, "model": "mistral:7b"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"name": "x"}, 400, "url"),
        ({"url": "ftp://example"}, 400, "url"),
        ({"url": "http://127.0.0.1:9", "type": "nonsense"}, 400, "type"),
        ({"url": "http://127.0.0.1:9", "name": "has space"}, 400, "name"),
        ({"url": "http://127.0.0.1:9", "priority": -1}, 400, "priority"),
        ({"url": "http://127.0.0.1:9"}, 422, None),  # nothing answers on the discard port
    ],
)
async def test_admin_add_refuses_what_it_cannot_use(
    start_nexus: Any, body: dict[str, Any], status: int, param: str | None
) -> None:
    nexus = await start_nexus([])
    response = await nexus.http.post("/admin/backends", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]


async def _admin_status(app: Any, peer: str, headers: dict[str, str]) -> int:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://nexus") as http:
        return (await http.get("/admin/backends", headers=headers)).status_code


async def test_admin_is_loopback_only_and_trusts_no_forwarded_header(start_nexus: Any) -> None:
    nexus = await start_nexus([])
    app = make_app(nexus.gateway)
    assert await _admin_status(app, "127.0.0.1", {}) == 200
    assert await _admin_status(app, "::1", {}) == 200
    assert await _admin_status(app, "192.0.2.7", {}) == 403
    forged = {
        "x-forwarded-for": "127.0.0.1",
        "x-real-ip": "127.0.0.1",
        "forwarded": "for=127.0.0.1",
    }
    assert await _admin_status(app, "192.0.2.7", forged) == 403
    # The rest of the API is for everyone.
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://nexus") as http:
        assert (await http.get("/v1/models")).status_code == 200


async def test_admin_token_is_required_everywhere_once_set(start_nexus: Any) -> None:
    nexus = await start_nexus([], server={"admin_token": "s3cret-token"})
    app = make_app(nexus.gateway)
    for peer in ("127.0.0.1", "192.0.2.7"):
        assert await _admin_status(app, peer, {}) == 403
        assert await _admin_status(app, peer, {"authorization": "Bearer wrong-token"}) == 403
        assert await _admin_status(app, peer, {"authorization": "Bearer s3cret-token"}) == 200
    denied = await nexus.http.get("/admin/backends")
    assert denied.json()["error"]["type"] == "permission_error"
    assert "s3cret-token" not in denied.text


async def test_mdns_cannot_point_nexus_at_its_own_loopback_from_the_network(
    start_nexus: Any,
) -> None:
    server = sim("local-only")
    # Discovery listening on every interface: an announcement may come from anywhere.
    nexus = await start_nexus([], discovery={"interfaces": []})
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        with pytest.raises(NotAServer, match="loopback"):
            await nexus.gateway.fleet.admit(Found("mdns", server.url, name="sneaky"))
        assert "sneaky" not in nexus.gateway.registry
        # The same server found by the local probe is fine: Nexus looked itself.
        assert (await nexus.gateway.fleet.admit(Found("probe", server.url))).sources == {"probe"}
        nursery.cancel_scope.cancel()
