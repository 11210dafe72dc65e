"""Keys: the client's never reach a backend; a backend's never reach anyone else."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from helpers import sim

HELLO: dict[str, Any] = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}]}
BACKEND_KEY = "sk-backend-secret-0123456789"
CLIENT_KEY = "sk-client-secret-9876543210"


async def test_keys_go_only_where_they_belong(
    start_nexus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cloud = sim("cloud", api_key=BACKEND_KEY)
    local = sim("local")
    nexus = await start_nexus(
        [cloud, local],
        environ={"CLOUD_KEY": BACKEND_KEY},
        backend_options={"cloud": {"api_key_env": "CLOUD_KEY"}},
        routing={"strategy": "round_robin"},
    )
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    bodies = []
    for _ in range(4):  # round robin: both backends answer
        response = await nexus.http.post("/v1/chat/completions", json=HELLO, headers=headers)
        assert response.status_code == 200
        bodies.append(response.text + str(response.headers))
    assert cloud.stats.chat_requests == local.stats.chat_requests == 2

    assert cloud.stats.last_headers["authorization"] == f"Bearer {BACKEND_KEY}"
    assert "authorization" not in local.stats.last_headers
    for backend in (cloud, local):
        assert CLIENT_KEY not in str(backend.stats.last_headers)

    listing = (await nexus.http.get("/v1/models")).text
    health = (await nexus.http.get("/health")).text
    for shown in [
        *bodies,
        listing,
        health,
        caplog.text,
        repr(nexus.gateway.settings),
        repr(list(nexus.gateway.registry)),
    ]:
        assert BACKEND_KEY not in shown
        assert CLIENT_KEY not in shown
