"""How quickly a client that leaves cancels everything Nexus started for it.

For each case, a client sends a streamed request through Nexus to simulated
backends on loopback, leaves at a set point, and the time is taken from the
client closing its connection to the last backend seeing its upstream
connection closed (each simulated backend records that as it happens):

- mid_stream: leaving after the first token of an answer being relayed;
- before_first_token: leaving while the only backend has not answered yet;
- hedge: leaving while a first attempt and its hedge both wait for headers;
- continuation: leaving while the stream's continuation on a second backend
  is being opened (the first died after a few chunks).

    python benchmarks/bench_cancel.py [--runs 50]

Writes benchmarks/results/<date>-cancel.json. The goal: everything cancelled
within 100 ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio
from _pair import serve_pair, wait_in_rotation

from nexus_trio.testing import Flavor, SimModel, SimulatedBackend

RESULTS = Path(__file__).parent / "results"
BODY = {
    "model": "llama3:8b",
    "messages": [{"role": "user", "content": "A long story, please."}],
    "stream": True,
}
GOAL_MS = 100.0
HANG = 30.0  # a backend "slow to answer" answers after this long: never, within a run


async def _leave(http: httpx.AsyncClient, after: Callable[[str], bool] | None) -> float:
    """Send the request; close the connection at the first line ``after`` accepts (the
    caller may cancel it sooner); return the time it closed."""
    async with http.stream("POST", "/v1/chat/completions", json=BODY) as response:
        if after is not None:
            async for line in response.aiter_lines():
                if after(line):
                    break
        left = trio.current_time()
    return left


def _token(line: str) -> bool:
    return '"content":"' in line.replace(" ", "") and '"content":""' not in line


async def _gone(backends: list[SimulatedBackend]) -> None:
    for backend in backends:
        await backend.stats.disconnected.wait()


Case = Callable[[httpx.AsyncClient, SimulatedBackend, SimulatedBackend], Awaitable[float]]


async def mid_stream(http: httpx.AsyncClient, a: SimulatedBackend, b: SimulatedBackend) -> float:
    left = await _leave(http, _token)
    await _gone([a])
    return trio.current_time() - left


async def before_first_token(
    http: httpx.AsyncClient, a: SimulatedBackend, b: SimulatedBackend
) -> float:
    a.faults.delay_before_headers_seconds = HANG
    with trio.move_on_after(0.05):  # the request is at a, waiting
        await _leave(http, None)
    left = trio.current_time()
    await _gone([a])
    return trio.current_time() - left


async def hedge(http: httpx.AsyncClient, a: SimulatedBackend, b: SimulatedBackend) -> float:
    a.faults.delay_before_headers_seconds = b.faults.delay_before_headers_seconds = HANG
    with trio.move_on_after(0.1):  # the hedge starts after 20 ms: both are waiting
        await _leave(http, None)
    left = trio.current_time()
    await _gone([a, b])
    return trio.current_time() - left


async def continuation(http: httpx.AsyncClient, a: SimulatedBackend, b: SimulatedBackend) -> float:
    a.faults.die_after_chunks = 2
    b.faults.delay_before_headers_seconds = HANG  # the continuation waits at b

    def never(line: str) -> bool:
        return False

    with trio.move_on_after(0.3):  # a dies after 2 chunks; b is then being opened
        await _leave(http, never)
    left = trio.current_time()
    await _gone([b])
    return trio.current_time() - left


CASES: dict[str, tuple[Case, dict[str, Any]]] = {
    "mid_stream": (mid_stream, {}),
    "before_first_token": (before_first_token, {}),
    "hedge": (hedge, {"hedge_after_ms": 20}),
    "continuation": (continuation, {}),
}


async def _run_case(case: Case, routing: dict[str, Any], runs: int) -> list[float]:
    a, b = (
        SimulatedBackend(Flavor.VLLM, [SimModel("llama3:8b")], name=n, tokens_per_second=50)
        for n in ("a", "b")
    )
    async with trio.open_nursery() as nursery:
        gateway = await serve_pair(
            nursery, a, b, routing={"wait_for_backend_seconds": 0, **routing}, log_level="error"
        )
        seconds = []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for _ in range(runs):
                for sim in (a, b):
                    sim.faults.clear()
                    sim.stats.reset()
                await wait_in_rotation(gateway.registry, a.name, b.name)
                with trio.fail_after(10):
                    seconds.append(await case(http, a, b))
        nursery.cancel_scope.cancel()
    return seconds


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "max_ms": round(ms[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    logging.getLogger("nexus").setLevel(logging.ERROR)  # the failures here are on purpose
    results: dict[str, Any] = {}
    for name, (case, routing) in CASES.items():
        results[name] = _summary(trio.run(_run_case, case, routing, args.runs))
        r = results[name]
        verdict = "ok" if r["max_ms"] <= GOAL_MS else "OVER"
        print(f"  {name:20} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
              f"max {r['max_ms']:7.2f} ms  {verdict}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-cancel.json"
    out.write_text(json.dumps({
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "runs": args.runs, "goal_ms": GOAL_MS, "cases": results,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
