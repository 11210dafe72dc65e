"""Measures of Nexus alone: the routing decision as a pure function, and start-up time."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx
from _contenders import SERVER_CORE, ProcessGroup, free_port, nexus_command, pin

if TYPE_CHECKING:
    from nexus_trio.config import RoutingSettings
    from nexus_trio.registry import Registry
    from nexus_trio.routing.requirements import Requirements
    from nexus_trio.routing.router import Candidate

ROUTING_MODEL: Final = "llama3:8b"
STARTUP_DEADLINE_SECONDS: Final = 60.0


def routing_times(sizes: tuple[int, ...], repeats: int) -> dict[str, dict[int, list[float]]]:
    """Microseconds per routing decision over ``size`` backends, ``repeats`` times each.

    "decision": `plan_route` as a chat request calls it (the registry's roster of the
    model, the first candidate read). "roster": building that roster again, which
    happens once after each change to the fleet (health, models, sources), not per
    request. Every backend serves the requested model and is healthy, so every one is
    ranked: the worst case of a fleet that size. They differ in priority, load and TTFT,
    so `smart` has something to sort.
    """
    from nexus_trio.config import BackendType, RoutingSettings
    from nexus_trio.registry import Backend, Health, ModelInfo, Registry, Roster
    from nexus_trio.routing.requirements import Requirements

    routing = RoutingSettings()
    needs = Requirements(model=ROUTING_MODEL, stream=True, context_tokens=200)
    out: dict[str, dict[int, list[float]]] = {"decision": {}, "roster": {}}
    for size in sizes:
        registry = Registry(
            Backend(
                name=f"backend-{i}",
                url=f"http://127.0.0.1:{10_000 + i}",
                type=BackendType.VLLM,
                priority=1 + i % 3,
                max_concurrency=8,
                models={
                    ROUTING_MODEL: ModelInfo(ROUTING_MODEL, context_length=8192),
                    f"other-{i}": ModelInfo(f"other-{i}"),
                },
                health=Health.HEALTHY,
                in_flight=i % 5,
                ttft_ewma_seconds=0.02 + (i % 7) / 100,
            )
            for i in range(size)
        )
        turn = iter(range(10**9))
        decide = partial(_decide, registry, needs, routing, turn)
        rebuild = partial(Roster.of, registry.backends, ROUTING_MODEL)
        out["decision"][size] = _microseconds_per_call(decide, repeats)
        out["roster"][size] = _microseconds_per_call(rebuild, repeats)
    return out


def _decide(
    registry: Registry, needs: Requirements, routing: RoutingSettings, turn: Iterator[int]
) -> Candidate:
    from nexus_trio.routing.router import plan_route

    decision = plan_route(
        needs, registry.backends, routing, turn=next(turn), rosters=registry.roster
    )
    return decision.candidates[0]


def _microseconds_per_call(call: Callable[[], object], repeats: int) -> list[float]:
    timer = timeit.Timer(call)
    calls, _ = timer.autorange()
    return [t / calls * 1e6 for t in timer.repeat(repeats, calls)]


STARTUP_CONF: Final = """\
[discovery]
# The demo fleet announces itself over mDNS; keep both ends of it on loopback.
interfaces = ["127.0.0.1"]
probe_local = false

[logging]
level = "warning"
"""


def startup_seconds(group: ProcessGroup) -> dict[str, Any]:
    """Seconds from spawning ``nexus serve --demo`` to its first 200 on a chat request."""
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="nexus-startup-"))
    conf = tmp / "nexus.toml"
    conf.write_text(STARTUP_CONF)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hello!"}]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    start = time.perf_counter()
    process = group.spawn(
        [*pin(SERVER_CORE), *nexus_command(), "serve", "--demo", "--config", str(conf),
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp, log=tmp / "nexus.log",
    )  # fmt: skip
    try:
        with httpx.Client(timeout=5) as http:
            while time.perf_counter() - start < STARTUP_DEADLINE_SECONDS:
                if process.poll() is not None:
                    raise RuntimeError(f"nexus serve --demo exited with {process.returncode}")
                try:
                    if http.post(url, json=body).status_code == 200:
                        return {"seconds": time.perf_counter() - start}
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        raise RuntimeError(f"no answer from nexus serve --demo in {STARTUP_DEADLINE_SECONDS} s")
    finally:
        group.stop(process)
        group.processes.remove(process)
        shutil.rmtree(tmp, ignore_errors=True)
