"""What translation costs: the stream relay through ``/v1/messages`` (Anthropic) and
``/v1/responses`` (OpenAI Responses) beside ``/v1/chat/completions``, on one Nexus in front
of the suite's upstream.

Every API is asked the same streamed question and Nexus asks the upstream the same chat
stream for each; chat passes the upstream's bytes through, the other two re-encode every
chunk as their own events. Nexus is pinned to the server core and saturated (256 streams
offering 100 chunks/s each), so chunks per second is the inverse of its cost per chunk.
The APIs are measured in interleaved rounds; each round's cost of an API is its shortfall
against chat in that round, and the summary is the median over rounds.

    python benchmarks/bench_dialects.py [--rounds 5] [--seconds 8] [--quick]

Writes benchmarks/results/<date>-dialects.json.
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
import _proc
import _streams
import trio

RESULTS: Final = Path(__file__).parent / "results"
STREAMS: Final = 256
CHUNKS: Final = 200  # per stream: 2 s at 100 chunks/s
PERIOD: Final = 0.01
BUDGET: Final = 0.15  # the bar: translation costs at most 15% of the relay's rate


async def measure(nexus: procs.Contender, rounds: int, seconds: float) -> list[dict[str, Any]]:
    """Per round, each API's relay rate (chunks/s) and Nexus's CPU share."""
    table = []
    for index in range(rounds):
        row: dict[str, Any] = {}
        for api in _streams.APIS:
            with _proc.cpu_share(nexus.pid) as cpu:
                result = await _streams.relay_capacity(
                    nexus, STREAMS, seconds, CHUNKS * PERIOD, api=api
                )
            if result["errors"]:
                raise SystemExit(f"{api}: {result['errors']} errors: {result['error_examples']}")
            row[api] = {"chunks_per_s": result["chunks_per_s"], **cpu}
        for api in _streams.APIS:
            row[api]["cost_vs_chat"] = 1 - row[api]["chunks_per_s"] / row["chat"]["chunks_per_s"]
        table.append(row)
        print(
            f"round {index + 1}: "
            + ", ".join(
                f"{api} {row[api]['chunks_per_s']:,.0f}/s ({row[api]['cost_vs_chat']:+.1%})"
                for api in _streams.APIS
            ),
            flush=True,
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured, per API and round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 s")
    args = parser.parse_args()
    rounds, seconds = (2, 4.0) if args.quick else (args.rounds, args.seconds)
    tmp = Path(tempfile.mkdtemp(prefix="nexus-dialects-"))
    group = procs.ProcessGroup()
    try:
        upstream, _ = procs.start_upstream(group, chunks=CHUNKS, short_chunks=10, period=PERIOD)
        nexus = procs.start_nexus(group, upstream, tmp)
        if nexus.missing:
            raise SystemExit(nexus.missing)
        table = trio.run(measure, nexus, rounds, seconds)
    finally:
        group.close()
    summary: dict[str, Any] = {}
    for api in _streams.APIS:
        summary[f"{api}_chunks_per_s"] = statistics.median(r[api]["chunks_per_s"] for r in table)
        if api != "chat":
            cost = statistics.median(r[api]["cost_vs_chat"] for r in table)
            summary[f"{api}_cost_vs_chat"] = cost
            summary[f"{api}_within_budget"] = cost <= BUDGET
    print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in summary.items()))  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-dialects.json"
    out.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/bench_dialects.py", *sys.argv[1:]]),
        "machine": _environment.machine(),
        "streams": STREAMS, "chunks_per_stream": CHUNKS, "period_s": PERIOD,
        "seconds_per_api": seconds,
        "rounds": table,
        "summary": summary,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
