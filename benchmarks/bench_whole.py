"""What streaming a non-streaming request from its backend costs: Nexus with
``routing.stream_upstream`` on (the default: the backend streams, Nexus assembles the
``chat.completion``) beside the same Nexus with it off (the backend's JSON passed
through), in front of the suite's upstream answering ``bench-whole`` (an answer that takes
no time to generate, in either shape).

Both run at once, on the server core, and are measured in interleaved rounds of sequential
requests with the upstream alone (``direct``) as the floor; what each adds is its median
latency minus the floor's in the same round, and the cost of the one upstream path is the
median over rounds of the difference between the two.

    python benchmarks/bench_whole.py [--rounds 7] [--requests 1500]

Writes benchmarks/results/<date>-whole.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _contenders as procs
import _environment
import trio
from _load import sequential_latency

RESULTS = Path(__file__).parent / "results"
WARMUP = 100


async def measure(
    contenders: list[procs.Contender], rounds: int, requests: int
) -> list[dict[str, float]]:
    """Per round, each contender's median latency minus the floor's (the first), in ms."""
    table = []
    for index in range(rounds):
        medians = {}
        for contender in contenders:
            result = await sequential_latency(contender, requests, WARMUP)
            if result["errors"]:
                raise SystemExit(f"{contender.name}: {result['errors']} requests failed")
            medians[contender.name] = result["p50_ms"]
        floor = medians.pop(contenders[0].name)
        row = {"direct_ms": floor, **{f"added_ms_{k}": v - floor for k, v in medians.items()}}
        table.append(row)
        print(f"round {index + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=1500, help="per contender per round")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nexus-whole-"))
    group = procs.ProcessGroup()
    try:
        upstream, _ = procs.start_upstream(group, chunks=200, short_chunks=10, period=0.01)
        contenders = [procs.Contender("direct", url=upstream)]
        for on in ("true", "false"):
            nexus = procs.start_nexus(
                group, upstream, tmp, name=f"stream_upstream_{on}",
                extra=f"\n[routing]\nstream_upstream = {on}\n",
            )  # fmt: skip
            if nexus.missing:
                raise SystemExit(nexus.missing)
            contenders.append(nexus)
        rounds = trio.run(measure, contenders, args.rounds, args.requests)
    finally:
        group.close()
    on = [r["added_ms_stream_upstream_true"] for r in rounds]
    off = [r["added_ms_stream_upstream_false"] for r in rounds]
    summary = {
        "added_ms_stream_upstream_true": statistics.median(on),
        "added_ms_stream_upstream_false": statistics.median(off),
        "cost_of_streaming_upstream_ms": statistics.median(
            a - b for a, b in zip(on, off, strict=True)
        ),
    }
    print(", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-whole.json"
    out.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/bench_whole.py", *sys.argv[1:]]),
        "machine": _environment.machine(),
        "rounds": rounds,
        "summary": summary,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
