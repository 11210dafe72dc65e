"""A client that goes away cancels the upstream request; every counter returns to zero.

On virtual time (`loopback_clock`): the backends' pacing and delays cost nothing, and a
deadline here says what Nexus does, not how fast this machine is.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
import trio.testing

from helpers import sim

HELLO: dict[str, Any] = {
    "model": "llama3:8b",
    "messages": [{"role": "user", "content": "A long story, please."}],
    "stream": True,
}


async def test_client_disconnect_mid_stream_cancels_the_upstream(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    backend = sim("a", tokens_per_second=20)  # slow enough that the client leaves mid-answer
    nexus = await start_nexus([backend])
    async with nexus.http.stream("POST", "/v1/chat/completions", json=HELLO) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if '"content"' in line and '"content":""' not in line.replace(" ", ""):
                break  # one real token seen: leave
    # Leaving the block closed the connection; the backend must see it at once, not when the
    # rest of its answer (27 tokens at 20 a second, on the virtual clock) is out.
    with trio.fail_after(0.5):
        await backend.stats.disconnected.wait()
    assert backend.stats.disconnects == 1
    assert backend.stats.completed == 0
    assert await nexus.in_flight() == {"a": 0}
    assert backend.stats.chat_in_flight == 0


async def test_client_disconnect_before_the_first_token(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    backend = sim("a")
    backend.faults.delay_before_headers_seconds = 30
    nexus = await start_nexus([backend])
    async with trio.open_nursery() as client:
        client.start_soon(partial(nexus.http.post, "/v1/chat/completions", json=HELLO))
        await nexus.settled()  # the request has reached the backend, which says nothing yet
        assert (backend.stats.chat_in_flight, await nexus.in_flight()) == (1, {"a": 1})
        client.cancel_scope.cancel()  # the client leaves before the first token
    assert await nexus.in_flight() == {"a": 0}
    assert backend.stats.disconnects == 1
    health = await nexus.health()
    assert health["backends"]["a"]["in_flight"] == 0
    assert health["backends"]["a"]["status"] == "healthy"  # leaving is not the backend's fault
