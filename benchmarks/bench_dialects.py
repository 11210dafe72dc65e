"""What translation costs: the stream relay through ``/v1/messages`` (Anthropic) and
``/v1/responses`` (OpenAI Responses) beside ``/v1/chat/completions``, on one Nexus in front
of the suite's upstream.

Every API is asked the same streamed question, and Nexus asks the upstream the same chat
stream for each; chat passes the upstream's bytes through, the other two re-encode every
chunk as their own events. Three measures:

- **cost per chunk**: Nexus's CPU time per relayed chunk at a fixed load it can carry
  (``STEADY_STREAMS`` streams at 100 chunks/s each), read from /proc. At this load each
  upstream event arrives on its own, so the number is the whole per-chunk path (read,
  parse, admit, translate, write) and steady from round to round. Translation costs at most
  15% of the relay's chunks per second when ``1 - chat / api`` of these is at most 0.15.
- **capacity**: chunks per second with Nexus saturated (256 streams offering 25,600
  chunks/s, Nexus pinned to one core). Noisier: a saturated Nexus reads several events at
  once and its cost per chunk then depends on how far behind it is.
- **translation alone**: the writers fed a 200-chunk stream in process (tracker and
  writer, no sockets): the microseconds each API's translation adds per chunk.

The APIs are measured in interleaved rounds, in a rotating order; the summary is the
median over rounds.

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

from nexus_trio.config import BackendType, RoutingSettings
from nexus_trio.dialects import ANTHROPIC, CHAT, Dialect
from nexus_trio.dialects.response_store import ResponseStore
from nexus_trio.dialects.responses_writer import responses_dialect
from nexus_trio.proxy.sse import SSEParser
from nexus_trio.proxy.tracker import StreamTracker
from nexus_trio.registry import Backend, ModelInfo
from nexus_trio.routing.requirements import Requirements
from nexus_trio.routing.router import plan_route

RESULTS: Final = Path(__file__).parent / "results"
SATURATING_STREAMS: Final = 256
STEADY_STREAMS: Final = 16  # 1,600 chunks/s offered: well under what Nexus can relay
CHUNKS: Final = 200  # per stream: 2 s at 100 chunks/s
PERIOD: Final = 0.01
BUDGET: Final = 0.15  # the bar: translation costs at most 15% of the relay's rate
APIS: Final = tuple(_streams.APIS)


async def _relay(nexus: procs.Contender, api: str, streams: int, seconds: float) -> dict[str, Any]:
    with _proc.cpu_share(nexus.pid) as cpu:
        result = await _streams.relay_capacity(nexus, streams, seconds, CHUNKS * PERIOD, api=api)
    if result["errors"]:
        raise SystemExit(f"{api}: {result['errors']} errors: {result['error_examples']}")
    rate = result["chunks_per_s"]
    return {
        "chunks_per_s": rate,
        "cpu_percent": cpu["cpu_percent"],
        "cpu_us_per_chunk": cpu["cpu_percent"] / 100 * 1e6 / rate if rate else None,
    }


async def measure(nexus: procs.Contender, rounds: int, seconds: float) -> list[dict[str, Any]]:
    """Per round and API (in a rotating order): the cost per chunk at a steady load, and
    the capacity saturated."""
    table = []
    for index in range(rounds):
        order = APIS[index % len(APIS) :] + APIS[: index % len(APIS)]
        row: dict[str, Any] = {}
        for api in order:
            steady = await _relay(nexus, api, STEADY_STREAMS, seconds)
            saturated = await _relay(nexus, api, SATURATING_STREAMS, seconds)
            row[api] = {
                "steady": steady,
                "saturated": saturated,
            }
        table.append(row)
        print(
            f"round {index + 1}: "
            + ", ".join(
                f"{api} {row[api]['steady']['cpu_us_per_chunk']:.0f} us/chunk, "
                f"{row[api]['saturated']['chunks_per_s']:,.0f}/s"
                for api in APIS
            ),
            flush=True,
        )
    return table


def _sse(chunks: int) -> bytes:
    """The upstream's stream of one answer: role, ``chunks`` tokens, finish, usage."""
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "bench"}

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n"

    usage = {**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": chunks,
                                              "total_tokens": chunks + 5}}  # fmt: skip
    return (
        event({"role": "assistant", "content": ""})
        + b"".join(event({"content": " tok"}) for _ in range(chunks))
        + event({}, "stop")
        + b"data: " + json.dumps(usage).encode() + b"\n\n"
        + b"data: [DONE]\n\n"
    )  # fmt: skip


class _NullDownstream:
    started = False

    async def start(self, status: int, headers: Any) -> None:
        self.started = True

    async def send(self, data: bytes) -> None:
        pass

    async def end(self) -> None:
        pass

    async def respond(self, status: int, headers: Any, body: bytes) -> None:
        self.started = True


def translation_us_per_chunk(repeats: int = 300) -> dict[str, float]:
    """Per API, the in-process time (µs) per chunk of parse, tracker and writer over one
    answer of ``CHUNKS`` chunks, written to nowhere."""
    backend = Backend(name="b", url="http://b.test", type=BackendType.GENERIC,
                      models={"bench": ModelInfo("bench")})  # fmt: skip
    routing = RoutingSettings()
    candidate = plan_route(Requirements("bench"), [backend], routing).candidates[0]
    dialects: dict[str, Dialect] = {
        "chat": CHAT, "messages": ANTHROPIC, "responses": responses_dialect(ResponseStore(0)),
    }  # fmt: skip
    events = SSEParser().feed(_sse(CHUNKS))

    async def run(dialect: Dialect, body: bytes) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            chat = dialect.parse(body, routing)
            writer = dialect.writer(chat, _NullDownstream(), "r")
            tracker = StreamTracker(forward_usage=chat.client_wants_usage)
            await writer.begin(candidate)
            for event in events:
                await writer.send([tracker.admit(event, "b")])
            await writer.end(tracker.usage)
        return time.perf_counter() - start

    out = {}
    for api, dialect in dialects.items():
        body = json.dumps({"model": "bench", **_streams.APIS[api][1]}).encode()
        out[api] = trio.run(run, dialect, body) / repeats / len(events) * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured, per API and round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 s")
    args = parser.parse_args()
    rounds, seconds = (2, 4.0) if args.quick else (args.rounds, args.seconds)
    translation = translation_us_per_chunk()
    print("translation alone: " + ", ".join(f"{k} {v:.1f} us/chunk" for k, v in
                                             translation.items()))  # fmt: skip
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
    for api in APIS:
        cost = statistics.median(r[api]["steady"]["cpu_us_per_chunk"] for r in table)
        summary[f"{api}_cpu_us_per_chunk"] = cost
        summary[f"{api}_saturated_chunks_per_s"] = statistics.median(
            r[api]["saturated"]["chunks_per_s"] for r in table
        )
        summary[f"{api}_translation_us_per_chunk"] = translation[api]
    for api in APIS[1:]:
        # The share of the relay's chunks per second that translation costs.
        lost = 1 - summary["chat_cpu_us_per_chunk"] / summary[f"{api}_cpu_us_per_chunk"]
        summary[f"{api}_rate_lost_to_translation"] = lost
        summary[f"{api}_within_budget"] = lost <= BUDGET
    print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in summary.items()))  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-dialects.json"
    out.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/bench_dialects.py", *sys.argv[1:]]),
        "machine": _environment.machine(),
        "steady_streams": STEADY_STREAMS, "saturating_streams": SATURATING_STREAMS,
        "chunks_per_stream": CHUNKS, "period_s": PERIOD, "seconds_per_measure": seconds,
        "rounds": table,
        "summary": summary,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
