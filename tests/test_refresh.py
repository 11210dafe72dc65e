"""Each health cycle refreshes what backends can do and what they have loaded.

On virtual time (`loopback_clock`): health cycles come every 10 s, as by default, and a
test waits for the one that sees the change without waiting 10 real seconds.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from nexus_trio.registry import RegistryEvent
from nexus_trio.testing import Flavor, SimModel

from helpers import sim

IMAGE: dict[str, Any] = {
    "model": "llava:7b",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in the picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ],
}


async def models_changed(events: trio.MemoryReceiveChannel[RegistryEvent], backend: str) -> None:
    with trio.fail_after(60):  # virtual: a guard, a few health cycles long
        async for event in events:
            if event.kind == "models" and event.backend == backend:
                return


async def test_a_model_that_gains_vision_is_routable_for_images_next_cycle(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    server = sim("box", Flavor.OLLAMA, "llava:7b")
    server.set_models([SimModel("llava:7b", vision=False)])
    nexus = await start_nexus([server])
    refused = await nexus.http.post("/v1/chat/completions", json=IMAGE)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "model_not_capable"

    events = nexus.gateway.registry.subscribe()
    server.set_models([SimModel("llava:7b", vision=True)])
    await models_changed(events, "box")
    served = await nexus.http.post("/v1/chat/completions", json=IMAGE)
    assert served.status_code == 200
    assert served.headers["x-nexus-backend"] == "box"


async def test_a_model_added_on_the_backend_appears_in_the_listing(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    server = sim("box", Flavor.VLLM, "llama3:8b")
    nexus = await start_nexus([server])
    events = nexus.gateway.registry.subscribe()
    server.set_models([SimModel("llama3:8b"), SimModel("phi3:mini")])
    await models_changed(events, "box")
    listed = {m["id"] for m in (await nexus.http.get("/v1/models")).json()["data"]}
    assert listed == {"llama3:8b", "phi3:mini"}


async def test_smart_routing_prefers_the_backend_with_the_model_loaded(start_nexus: Any) -> None:
    cold, warm = sim("cold", Flavor.OLLAMA), sim("warm", Flavor.OLLAMA)
    warm.mark_loaded("llama3:8b")
    nexus = await start_nexus([cold, warm])
    assert nexus.gateway.registry.get("warm").warm_models == {"llama3:8b"}
    assert nexus.gateway.registry.get("cold").warm_models == set()
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}]}
    for _ in range(4):
        response = await nexus.http.post("/v1/chat/completions", json=body)
        assert response.headers["x-nexus-backend"] == "warm"
    assert cold.stats.chat_requests == 0
