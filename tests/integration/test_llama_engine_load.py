"""Engine load on real llama.cpp: Nexus reads each llama-server's ``/slots`` on its own
cycle, sends nothing to a server whose slots another client holds, and uses it again once
they are free."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from harness import ALIAS, PARALLEL, LlamaServer, NexusProcess, config_for

ROUTING = '[routing]\nstrategy = "smart"\n[routing.engine_load]\ninterval_seconds = 0.2\n'


@contextmanager
def another_client_holding_every_slot(server: LlamaServer) -> Iterator[None]:
    """Long generations sent straight to ``server``, one per slot, until the block ends
    (each running to its end then: llama.cpp finishes what it started)."""
    stop = threading.Event()
    body = {"model": ALIAS, "max_tokens": 96, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": "Tell a long story."}]}  # fmt: skip

    def hold() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                with http.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
                    for _ in r.iter_bytes():
                        pass

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(PARALLEL)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def engine_of(http: httpx.Client, url: str, name: str) -> dict[str, Any] | None:
    backends = http.get(url + "/admin/backends").json()["backends"]
    engine: dict[str, Any] | None = next(b for b in backends if b["name"] == name)["engine"]
    return engine


def until(what: str, holds: Callable[[], bool], within: float = 60) -> None:
    """Poll another process's state until ``holds`` (there is no event to wait on)."""
    deadline = time.monotonic() + within
    while not holds():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def test_a_server_whose_slots_another_client_holds_gets_nothing(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any
) -> None:
    nexus: NexusProcess = start_nexus(config_for(*llamas) + ROUTING)
    body = {"model": ALIAS, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hi."}]}  # fmt: skip
    with httpx.Client(timeout=60) as http:
        until("both servers' slots read", lambda: all(
            (engine_of(http, nexus.url, f"llama-{i}") or {}).get("slots") == PARALLEL
            for i in (0, 1)
        ))  # fmt: skip
        with another_client_holding_every_slot(llamas[0]):
            until("llama-0's slots all busy, as Nexus reads them", lambda: (
                engine_of(http, nexus.url, "llama-0") or {}).get("running") == PARALLEL
            )  # fmt: skip
            for _ in range(4):
                answer = http.post(nexus.url + "/v1/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
                assert answer.headers["x-nexus-backend"] == "llama-1"
        until("llama-0 idle again", lambda: (
            engine_of(http, nexus.url, "llama-0") or {}).get("running") == 0
        )  # fmt: skip
        served = set()
        for _ in range(4):
            answer = http.post(nexus.url + "/v1/chat/completions", json=body)
            assert answer.status_code == 200, answer.text
            served.add(answer.headers["x-nexus-backend"])
        assert "llama-0" in served  # free again, and faster to first token so far
