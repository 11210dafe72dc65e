"""Engine-reported load, measured on real llama.cpp: `smart` routing that reads each
server's own ``/slots`` beside `smart` routing that knows only Nexus's own requests.

Two llama-servers run SmolLM2-135M (two slots each, one core each). Another client —
not Nexus: a second gateway, a script on the same machine — keeps both slots of one
server busy with long generations sent to it directly. Through Nexus, short requests
(greedy, 24 tokens at most) arrive back to back from two clients for the whole run. A
Nexus that counts only its own requests learns that a server is busy when one of its
requests waits there (its time to first token) and forgets it as the average moves; one
that reads ``/slots`` every second sees the slots taken.

By default the other client stays on the first server for the whole run; with
``--phases N`` it moves to the other server every ``--phase-seconds`` (a reading is up to
a second old when it moves, so requests sent in that second may land where the slots
were just taken).

Modes, one after another on the same servers: engine load off, on, off again (so that a
drift of the machine shows between the two baselines).

    python benchmarks/bench_engine_load.py [--phases 1] [--phase-seconds 40]

Writes benchmarks/results/<date>-engine-load.json (-engine-load-moving.json with phases).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import _contenders as procs
import _environment
import httpx
import trio
from bench_affinity import ALIAS, ask, locate_llama, quantile, start_llamas, start_nexus

RESULTS: Final = Path(__file__).parent / "results"
BACKGROUND_TOKENS: Final = 256
QUESTION: Final = "Name one colour of the sea."
MODES: Final = ("own count only", "engine load", "own count only (again)")


def routing(mode: str) -> str:
    enabled = "true" if mode == "engine load" else "false"
    return f'[routing]\nstrategy = "smart"\n[routing.engine_load]\nenabled = {enabled}\n'


async def keep_busy(url: str, slots: int) -> None:
    """Another client's long generations on ``url``, ``slots`` at a time, until cancelled
    (streamed, so that llama.cpp stops a generation as soon as its client leaves)."""
    story = [{"role": "user", "content": "Tell a long story."}]
    body = {"model": ALIAS, "max_tokens": BACKGROUND_TOKENS, "temperature": 0.8,
            "ignore_eos": True, "stream": True, "messages": story}  # fmt: skip

    async def one_slot(http: httpx.AsyncClient) -> None:
        while True:
            try:
                async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
            except httpx.TransportError:
                continue  # the server closed a kept-alive connection as it was reused

    async with httpx.AsyncClient(timeout=600) as http, trio.open_nursery() as nursery:
        for _ in range(slots):
            nursery.start_soon(one_slot, http)


async def run_mode(nexus: str, urls: list[str], phases: int, phase_seconds: float) -> Any:
    """Two clients asking short questions through Nexus back to back, while another client
    keeps the slots of one server busy, moving to the other each phase."""
    records: list[dict[str, Any]] = []
    busy_now = ["llama-0"]

    async def background() -> None:
        for phase in range(phases):
            busy_now[0] = f"llama-{phase % 2}"
            with trio.move_on_after(phase_seconds):
                await keep_busy(urls[phase % 2], 2)

    async def asker(http: httpx.AsyncClient) -> None:
        while True:
            busy = busy_now[0]
            record = await ask(http, nexus, [{"role": "user", "content": QUESTION}])
            record.pop("answer")
            records.append({**record, "busy_at_send": busy})

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as http, trio.open_nursery() as nursery:
        nursery.start_soon(asker, http)
        nursery.start_soon(asker, http)
        await background()
        nursery.cancel_scope.cancel()
    return records, time.perf_counter() - start


def summarize(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ttft = [r["ttft_s"] for r in records]
    return {
        "requests": len(records),
        "ttft_p50_ms": round(statistics.median(ttft) * 1000, 1),
        "ttft_p90_ms": round(quantile(ttft, 0.90) * 1000, 1),
        "ttft_p99_ms": round(quantile(ttft, 0.99) * 1000, 1),
        "total_p50_ms": round(statistics.median(r["total_s"] for r in records) * 1000, 1),
        "wall_s": round(wall, 2),
        "to_the_busy_server": sum(r["backend"] == r["busy_at_send"] for r in records),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| routing | requests | time to first token p50 | p90 | p99 | total p50 | "
        "sent to the busy server |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        share = 100 * row["to_the_busy_server"] / row["requests"]
        lines.append(
            f"| {row['mode']} | {row['requests']} | {row['ttft_p50_ms'] / 1000:.2f} s | "
            f"{row['ttft_p90_ms'] / 1000:.2f} s | {row['ttft_p99_ms'] / 1000:.2f} s | "
            f"{row['total_p50_ms'] / 1000:.2f} s | "
            f"{row['to_the_busy_server']} ({share:.0f}%) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=1)
    parser.add_argument("--phase-seconds", type=float, default=40.0)
    args = parser.parse_args()
    binary, model = locate_llama()
    tmp = Path(tempfile.mkdtemp(prefix="nexus-engine-load-"))
    group = procs.ProcessGroup()
    rows = []
    try:
        llamas = start_llamas(group, binary, model, tmp, "engine")
        urls = [u for u, _ in llamas]
        for index, mode in enumerate(MODES):
            nexus_group = procs.ProcessGroup()
            try:
                nexus = start_nexus(nexus_group, urls, routing(mode), tmp, f"engine-{index}")
                records, wall = trio.run(run_mode, nexus, urls, args.phases, args.phase_seconds)
            finally:
                nexus_group.close()
            row = {"mode": mode, **summarize(records, wall)}
            rows.append(row)
            print(row, flush=True)
    finally:
        group.close()
    table = markdown(rows)
    print(table)
    baseline = statistics.mean(r["ttft_p50_ms"] for r in rows if r["mode"] != "engine load")
    ratio = rows[1]["ttft_p50_ms"] / baseline
    print(f"engine load: p50 TTFT {ratio:.2f}x the own-count baseline")
    RESULTS.mkdir(exist_ok=True)
    moving = "-moving" if args.phases > 1 else ""
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-engine-load{moving}.json"
    out.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/bench_engine_load.py", *sys.argv[1:]]),
        "machine": _environment.machine(),
        "nexus": _environment.nexus_source(),
        "llama_server": procs.version_of([binary, "--version"]),
        "model": Path(model).name,
        "workload": {"phases": args.phases, "phase_seconds": args.phase_seconds,
                     "askers": 2, "max_tokens": 24,
                     "background": f"2 streamed generations of {BACKGROUND_TOKENS} tokens at "
                                   "a time on one server, sent to it directly, moving to the "
                                   "other each phase", "parallel": 2, "threads": 1},
        "summary": rows,
        "ttft_p50_ratio_vs_own_count": ratio,
        "markdown": table,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
