"""Whatever a client sends, Nexus answers with a status and an OpenAI-shaped body — never a 500.

One Nexus (in front of one simulated backend) serves every example, in a trio
run on its own thread, so hypothesis can send hundreds of bodies cheaply.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_trio.config import settings_from_mapping
from nexus_trio.supervisor import serve_nexus

from helpers import nexus_config, sim

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "stream",
        "stop",
        "tools",
        "tool_choice",
        "max_tokens",
        "max_completion_tokens",
        "response_format",
        "stream_options",
        "n",
        "temperature",
    ]
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", ""]) | JSON_VALUES},
    optional={"content": JSON_VALUES | st.text(), "tool_calls": JSON_VALUES},
)
REQUESTS = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["llama3:8b", "nope", ""]) | JSON_VALUES,
        "messages": st.lists(MESSAGE, max_size=3) | JSON_VALUES,
    },
    optional={"stream": st.booleans() | JSON_VALUES, "max_tokens": st.integers() | JSON_VALUES},
).flatmap(
    lambda base: st.dictionaries(FIELDS, JSON_VALUES, max_size=3).map(
        lambda extra: {**base, **extra}
    )
)
BODIES = (
    REQUESTS.map(lambda r: json.dumps(r).encode())
    | JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
)


@pytest.fixture(scope="module")
def nexus_url() -> Iterator[str]:
    """A Nexus on its own thread for the whole module; stopped at the end."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        backend = sim("a")
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            config = settings_from_mapping(nexus_config([backend]), environ={})
            stop = trio.Event()
            gateway = await nursery.start(
                lambda task_status: serve_nexus(
                    config, environ={}, handle_signals=False, stop=stop, task_status=task_status
                )
            )
            state.update(url=gateway.url, stop=stop, token=trio.lowlevel.current_trio_token())
            ready.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(30), "Nexus did not start"
    yield state["url"]
    trio.from_thread.run_sync(state["stop"].set, trio_token=state["token"])
    thread.join(30)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=BODIES)
def test_any_body_gets_a_clear_answer(nexus_url: str, body: bytes) -> None:
    with httpx.Client(base_url=nexus_url, timeout=10) as http:
        response = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code != 500
    if response.status_code == 200:
        return
    assert response.status_code in {400, 404, 413, 422}, response.text
    error = response.json()["error"]
    assert error["message"]
    assert error["type"] == "invalid_request_error"
