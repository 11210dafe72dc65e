"""How exact and how quick mid-stream continuation is, at every possible cut.

For each simulated backend kind (Ollama, vLLM, llama.cpp), two replicas of one
model sit behind Nexus; the first is made to die after K chunks, for every K
from 1 to the length of the answer, and the client's text is compared with
the uninterrupted answer (greedy decoding: it must be identical). The gap the
client sees at the seam (the longest pause between two chunks) is measured
against the same stream uninterrupted.

    python benchmarks/bench_continuation.py

Writes benchmarks/results/<date>-continuation.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from _pair import serve_pair, wait_in_rotation

from nexus_trio.testing import Flavor, SimModel, SimulatedBackend
from nexus_trio.testing._text import expected_answer

RESULTS = Path(__file__).parent / "results"
MESSAGES: list[Any] = [{"role": "user", "content": "A story about continuations."}]
BODY = {"model": "llama3:8b", "messages": MESSAGES, "stream": True, "temperature": 0}


async def _stream(http: httpx.AsyncClient) -> tuple[str, float]:
    """(text, longest gap between chunks in seconds) of one streamed answer."""
    text, gap, last = "", 0.0, None
    async with http.stream("POST", "/v1/chat/completions", json=BODY) as response:
        async for line in response.aiter_lines():
            now = time.perf_counter()
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices", []):
                    text += (choice.get("delta") or {}).get("content") or ""
                if last is not None:  # between chunks, not the wait for the first
                    gap = max(gap, now - last)
                last = now
    return text, gap


async def _measure(flavor: Flavor) -> dict[str, Any]:
    a, b = (SimulatedBackend(flavor, [SimModel("llama3:8b")], name=n) for n in ("a", "b"))
    full = expected_answer("llama3:8b", MESSAGES)
    tokens = len(full.split())
    async with trio.open_nursery() as nursery:
        gateway = await serve_pair(nursery, a, b)
        exact, seams, plain = 0, [], []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for cut in range(1, tokens):
                _, gap = await _stream(http)
                plain.append(gap)
                a.faults.die_after_chunks = cut
                text, gap = await _stream(http)
                a.faults.clear()
                exact += text == full
                seams.append(gap)
                # "a" was ejected by its failure; the next cut starts once it is back.
                await wait_in_rotation(gateway.registry, "a")
        nursery.cancel_scope.cancel()
    return {
        "cuts": tokens - 1,
        "exact": exact,
        "seam_gap_ms_median": statistics.median(seams) * 1000,
        "seam_gap_ms_max": max(seams) * 1000,
        "uninterrupted_gap_ms_median": statistics.median(plain) * 1000,
    }


async def _main() -> dict[str, Any]:
    return {flavor.value: await _measure(flavor) for flavor in (Flavor.OLLAMA, Flavor.VLLM,
                                                                   Flavor.LLAMACPP)}  # fmt: skip


def main() -> None:
    results = trio.run(_main)
    machine = f"{platform.machine()}, Python {platform.python_version()}"
    print(f"{'backend':10} {'cuts':>5} {'exact':>6} {'seam gap p50':>13} {'max':>8}"
          f" {'no-cut gap p50':>15}   ({machine})")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:10} {r['cuts']:5} {r['exact']:6} {r['seam_gap_ms_median']:10.2f} ms"
            f" {r['seam_gap_ms_max']:5.2f} ms {r['uninterrupted_gap_ms_median']:12.2f} ms"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-continuation.json"
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
