"""What the HTTP stack under Nexus costs: Nexus beside h11 on raw trio streams.

Runs the suite's measures (same upstream, load, pinning and interleaving; see
``suite.py``) on three contenders: ``direct``, ``nexus``, and ``h11-relay``, the prototype
of ``_h11_relay.py``: h11 on raw trio streams at both ends, doing Nexus's per-event parsing
and accounting (`SSEParser`, `StreamTracker`) and nothing else. The difference is what
hypercorn, the ASGI layer and httpx/httpcore cost over h11 alone, plus what Nexus does
that the prototype does not (routing, limits, failover, metrics and logs): the numbers
behind the README's proposal on the stack.

    python benchmarks/bench_stack.py [--rounds N] [--quick]

Prints a table and writes ``benchmarks/results/<date>-stack.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any, Final

import _contenders as procs
import _environment
import _load as load
import trio
from suite import (
    CHUNKS,
    PERIOD,
    RESULTS,
    SHORT_CHUNKS,
    Plan,
    Run,
    _memory,
    _raise_open_files,
    _relay,
    _throughput,
    _warm_up,
)

CONTENDERS: Final = ("direct", "nexus", "h11-relay")
# (label, measure, key, unit, digits, added: subtract direct's value)
ROWS: Final = (
    ("added latency p50, sequential", "latency", "p50_ms", "ms", 3, True),
    ("added latency p99, sequential", "latency", "p99_ms", "ms", 3, True),
    ("throughput, 64 clients (wrk)", "throughput", "rps", "req/s", 0, False),
    ("  server CPU", "throughput", "cpu_percent", "%", 0, False),
    ("added TTFT p50", "ttft", "ttft_p50_ms", "ms", 3, True),
    ("streaming relay, 256 streams", "relay", "chunks_per_s", "chunks/s", 0, False),
    ("  server CPU", "relay", "cpu_percent", "%", 0, False),
    ("RSS idle, fresh process", "memory", "rss_idle_mb", "MB", 1, False),
    ("memory per open stream", "memory", "per_stream_kb", "kB", 1, False),
)


def _values(run: Run, measure: str, contender: str, key: str, added: bool) -> list[float]:
    """One value per round; with ``added``, less direct's value in the same round."""
    mine = [r.get(key) for r in run.runs.get(measure, {}).get(contender, [])]
    if not added:
        return [v for v in mine if isinstance(v, int | float)]
    floor = [r.get(key) for r in run.runs.get(measure, {}).get("direct", [])]
    return [
        a - b
        for a, b in zip(mine, floor, strict=False)
        if isinstance(a, int | float) and isinstance(b, int | float)
    ]


async def _rounds(run: Run) -> None:
    plan = run.plan
    for contender in run.live:
        await _warm_up(contender)
    for round_ in range(plan.rounds):
        print(f"round {round_ + 1} of {plan.rounds}", flush=True)
        await run.each("latency", round_, lambda c: load.sequential_latency(c, plan.requests, 20))
        if load.wrk_binary() is not None:
            await run.each("throughput", round_, lambda c: _throughput(c, plan))
        await run.each("ttft", round_, lambda c: load.first_tokens(c, plan.ttft_streams, 3))
        await run.each("relay", round_, lambda c: _relay(c, plan))
        if round_ < plan.memory_rounds:
            await run.each("memory", round_, lambda c: _memory(run, c), proxies_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--rounds", type=int, help="rounds per measure (default 3; quick 1)")
    args = parser.parse_args()
    plan = (Plan.quick if args.quick else Plan.default)(args.rounds or (1 if args.quick else 3))
    _raise_open_files()
    if procs.pin(0):
        os.sched_setaffinity(0, {procs.CLIENT_CORE})
    started = time.time()
    group = procs.ProcessGroup()
    run = Run(plan, {"latency", "throughput", "streaming", "memory"}, group)
    try:
        run.upstream, upstream = procs.start_upstream(group, CHUNKS, SHORT_CHUNKS, PERIOD)
        run.upstream_pid = upstream.pid
        run.contenders.append(procs.Contender("direct", url=run.upstream, version="—"))
        for name in CONTENDERS[1:]:
            run.contenders.append(procs.STARTERS[name](group, run.upstream, run.tmp))
        trio.run(_rounds, run)
    finally:
        group.close()
        shutil.rmtree(run.tmp, ignore_errors=True)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    lines = [f"{'measure':32} {'unit':9} {'nexus':>22} {'h11-relay':>22}"]
    for label, measure, key, unit, digits, added in ROWS:
        cells = []
        for contender in CONTENDERS[1:]:
            values = _values(run, measure, contender, key, added)
            if not values:
                cells.append("")
                continue
            found = {"median": statistics.median(values), "min": min(values), "max": max(values)}
            summary.setdefault(f"{measure}.{'added_' if added else ''}{key}", {})[contender] = found
            cells.append(f"{found['median']:,.{digits}f} ({found['min']:,.{digits}f}–"
                         f"{found['max']:,.{digits}f})")  # fmt: skip
        lines.append(f"{label:32} {unit:9} {cells[0]:>22} {cells[1]:>22}")
    print("\n".join(lines))
    for error in run.errors:
        print(f"error: {error}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d', time.gmtime(started))}-stack.json"
    document: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/bench_stack.py", *sys.argv[1:]]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_seconds": round(time.time() - started, 1),
        "machine": _environment.machine(),
        "plan": {"rounds": plan.rounds, "requests": plan.requests},
        "contenders": {
            c.name: {"version": c.version, "missing": c.missing} for c in run.contenders
        },
        "nexus": _environment.nexus_source(),
        "runs": run.runs,
        "summary": summary,
        "errors": run.errors,
    }
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
