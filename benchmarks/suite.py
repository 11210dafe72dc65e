"""Nexus against a plain proxy and another gateway: one command, on loopback.

Starts a fast simulated OpenAI-compatible upstream (``_upstream.py``: a fixed small reply;
streams of a fixed number of chunks at a fixed rate) and, in front of it, each contender:

- ``direct``: no proxy at all, the floor;
- ``nginx``: the Debian package as a plain reverse proxy (keep-alive upstream,
  ``proxy_buffering off`` for SSE, one worker), the cost of relaying and nothing more;
- ``nexus``: ``nexus serve`` with the upstream as its one backend;
- ``litellm``: the LiteLLM proxy, the Python gateway users compare with, a pinned release
  in its own virtual environment under ``~/.cache/nexus-trio/`` (built on first use).

Servers get one core and the upstream and the load generators the other (``taskset``),
the same for every contender. Each measure runs every contender once per round, in an
order that rotates, for ``--rounds`` rounds, each once every server and the upstream are
idle again; the report gives the median and the min–max:

1. latency of sequential non-streamed requests, p50 and p99, and what each proxy adds;
2. throughput at 64 concurrent clients (``wrk``);
3. streaming: time to first token and the gaps between tokens (one stream at a time),
   and relay capacity in chunks/s with 256 concurrent streams;
4. memory: RSS idle, and per open stream with 1,000 idle streams open (on a fresh
   process of each proxy per round: one that has served the other tests has room to
   spare in its heap);
5. Nexus's routing decision at 10, 100 and 1,000 backends (``timeit``, in process);
6. start-up of ``nexus serve --demo`` to its first answered request.

    python benchmarks/suite.py [--quick] [--rounds N] [--only latency,throughput,...]

Prints a table with the targets beside the numbers, and writes
``benchmarks/results/<date>.json`` (machine, versions, every round's raw numbers, medians)
and ``benchmarks/results/<date>.png`` (``-quick`` or ``-partial`` before the suffix when
the run was one). A contender or tool that is not installed is reported as missing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import _contenders as procs
import _environment
import _load as load
import _proc
import _report as report
import _streams
import trio
from _chart import write_chart
from _micro import routing_times, startup_seconds

RESULTS: Final = Path(__file__).parent / "results"
MEASURES: Final = ("latency", "throughput", "streaming", "memory", "routing", "startup")
STREAMS: Final = 256
IDLE_STREAMS: Final = 1000
QUIET_CPU_PERCENT: Final = 5.0
QUIET_DEADLINE_SECONDS: Final = 15.0
WRK_CONNECTIONS: Final = 64
CHUNKS: Final = 200  # per relay stream: 2 s at 100 chunks/s
SHORT_CHUNKS: Final = 10  # per stream of the time-to-first-token test
PERIOD: Final = 0.01


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    rounds: int
    requests: int  # sequential, per contender and round
    wrk_seconds: float
    ttft_streams: int
    relay_seconds: float
    idle_wait_seconds: float
    startups: int
    routing_repeats: int
    memory_rounds: int  # each starts fresh servers: LiteLLM alone takes ~15 s to start

    @classmethod
    def default(cls, rounds: int | None) -> Plan:
        return cls(rounds or 5, 500, 5.0, 40, 5.0, 60.0, 5, 5, rounds or 5)

    @classmethod
    def quick(cls, rounds: int | None) -> Plan:
        return cls(rounds or 2, 150, 2.0, 10, 2.0, 30.0, 2, 3, 1)


def _raise_open_files() -> None:
    """1,000 open streams need ~3,000 sockets between us and the children (which inherit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16_384 if hard == resource.RLIM_INFINITY else min(hard, 16_384)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Run:
    """One run: the processes, the contenders, what was measured, and what went wrong."""

    def __init__(self, plan: Plan, measures: set[str], group: procs.ProcessGroup) -> None:
        self.plan = plan
        self.measures = measures
        self.group = group
        self.tmp = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
        self.upstream = ""
        self.upstream_pid: int | None = None
        self.contenders: list[procs.Contender] = []
        self.runs: report.Runs = {}
        self.extra: dict[tuple[str, str], list[float]] = {}
        self.errors: list[str] = []

    @property
    def live(self) -> list[procs.Contender]:
        return [c for c in self.contenders if c.missing is None]

    def record(self, measure: str, contender: str, result: dict[str, Any]) -> None:
        self.runs.setdefault(measure, {}).setdefault(contender, []).append(result)

    async def wait_quiet(self) -> None:
        """Wait (15 s at most) until no server nor the upstream is busy.

        A proxy may still be working off the queue of the load just sent through it, on
        the core the next contender is measured on, and the upstream with it.
        """
        pids = [self.upstream_pid, *(c.pid for c in self.live)]
        deadline = trio.current_time() + QUIET_DEADLINE_SECONDS
        while trio.current_time() < deadline:
            with contextlib.ExitStack() as stack:
                shares = [stack.enter_context(_proc.cpu_share(p)) for p in pids if p]
                await trio.sleep(0.25)
            if all(s.get("cpu_percent", 0.0) < QUIET_CPU_PERCENT for s in shares):
                return

    async def each(
        self,
        measure: str,
        round_: int,
        action: Callable[[procs.Contender], Awaitable[dict[str, Any]]],
        *,
        proxies_only: bool = False,
    ) -> None:
        """Run ``action`` on every live contender, starting from a different one each round."""
        live = [c for c in self.live if not (proxies_only and c.name == "direct")]
        if not live:
            return
        shift = round_ % len(live)
        for contender in live[shift:] + live[:shift]:
            await self.wait_quiet()
            try:
                result = await action(contender)
            except (OSError, RuntimeError, ValueError) as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
                self.errors.append(f"round {round_ + 1}, {measure}, {contender.name}: {exc}")
            print(f"  {measure:10} {contender.name:8} {_brief(result)}", flush=True)
            self.record(measure, contender.name, result)


def _brief(result: dict[str, Any]) -> str:
    keys = ("p50_ms", "p99_ms", "rps", "ttft_p50_ms", "chunks_per_s", "rss_idle_mb",
            "per_stream_kb", "open", "cpu_percent", "errors", "error")  # fmt: skip
    return ", ".join(
        f"{k}={result[k]:.3g}" if isinstance(result[k], float) else f"{k}={result[k]}"
        for k in keys
        if k in result
    )


async def _warm_up(contender: procs.Contender, requests: int = 200) -> dict[str, Any]:
    await load.sequential_latency(contender, requests, 0)
    return await load.first_tokens(contender, 5, 0)


async def _throughput(contender: procs.Contender, plan: Plan) -> dict[str, Any]:
    await trio.to_thread.run_sync(load.run_wrk, contender, WRK_CONNECTIONS, 1.0)  # warm-up
    with _proc.cpu_share(contender.pid) as cpu, _proc.cores_busy() as cores:
        result = await trio.to_thread.run_sync(
            load.run_wrk, contender, WRK_CONNECTIONS, plan.wrk_seconds
        )
    return {**result, **cpu, **cores}


async def _relay(contender: procs.Contender, plan: Plan) -> dict[str, Any]:
    with _proc.cpu_share(contender.pid) as cpu, _proc.cores_busy() as cores:
        result = await _streams.relay_capacity(
            contender, STREAMS, plan.relay_seconds, CHUNKS * PERIOD
        )
    return {**result, **cpu, **cores}


async def _memory(run: Run, contender: procs.Contender) -> dict[str, Any]:
    """Idle RSS and RSS per open stream, on a fresh process of the contender's kind.

    Fresh, because a process that has served the other tests keeps the memory they grew
    its heap by, and would hold 1,000 new streams in it without growing: per round, a new
    one is started, warmed up (200 requests and 5 streams), measured, and stopped.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"{contender.name}-", dir=run.tmp))
    fresh = await trio.to_thread.run_sync(
        procs.STARTERS[contender.name], run.group, run.upstream, tmp
    )
    try:
        if fresh.missing or fresh.pid is None or fresh.process is None:
            raise RuntimeError(fresh.missing or "no process")
        pid = fresh.pid
        await _warm_up(fresh)
        await trio.sleep(1.0)
        idle = _proc.rss_bytes(pid)
        held = await _streams.open_idle_streams(
            fresh, IDLE_STREAMS, run.plan.idle_wait_seconds, lambda: _proc.rss_bytes(pid)
        )
    finally:
        if fresh.process is not None:
            run.group.stop(fresh.process)
            run.group.processes.remove(fresh.process)
    result: dict[str, Any] = {
        "rss_idle_mb": idle / 1e6,
        "rss_streams_mb": held["measured"] / 1e6,
        **{k: v for k, v in held.items() if k != "measured"},
    }
    if held["open"]:
        result["per_stream_kb"] = (held["measured"] - idle) / held["open"] / 1e3
    return result


async def _rounds(run: Run) -> None:
    plan = run.plan
    for contender in run.live:
        print(f"warming up {contender.name}", flush=True)
        await _warm_up(contender)
    # What the servers do on their own (health checks, housekeeping) takes from the core
    # they share while another is measured: say how much.
    with contextlib.ExitStack() as stack:
        shares = {c.name: stack.enter_context(_proc.cpu_share(c.pid)) for c in run.live}
        await trio.sleep(3.0)
    for name, share in shares.items():
        if "cpu_percent" in share:
            run.extra["idle.cpu_percent", name] = [share["cpu_percent"]]
    wrk = load.wrk_binary()
    for round_ in range(plan.rounds):
        print(f"round {round_ + 1} of {plan.rounds}", flush=True)
        if "latency" in run.measures:
            await run.each(
                "latency", round_, lambda c: load.sequential_latency(c, plan.requests, 20)
            )
        if "throughput" in run.measures and wrk is not None:
            await run.each("throughput", round_, lambda c: _throughput(c, plan))
        if "streaming" in run.measures:
            await run.each("ttft", round_, lambda c: load.first_tokens(c, plan.ttft_streams, 3))
            await run.each("relay", round_, lambda c: _relay(c, plan))
        if "memory" in run.measures and round_ < plan.memory_rounds:
            await run.each("memory", round_, lambda c: _memory(run, c), proxies_only=True)
        for contender in run.live:
            if contender.process is not None and contender.process.poll() is not None:
                contender.missing = f"exited during round {round_ + 1}"
                run.errors.append(f"{contender.name} exited during round {round_ + 1}")
    for contender in run.live:
        if contender.pid is not None:
            rss = _proc.rss_bytes(contender.pid) / 1e6
            run.extra["memory.rss_after_load_mb", contender.name] = [rss]


def _start(run: Run, wanted: list[str]) -> None:
    run.upstream, upstream = procs.start_upstream(run.group, CHUNKS, SHORT_CHUNKS, PERIOD)
    run.upstream_pid = upstream.pid
    print(f"upstream at {run.upstream}", flush=True)
    for name in wanted:
        if name == "direct":
            run.contenders.append(procs.Contender("direct", url=run.upstream, version="—"))
            continue
        print(f"starting {name}", flush=True)
        contender = procs.STARTERS[name](run.group, run.upstream, run.tmp)
        if contender.missing:
            print(f"  {name} is missing: {contender.missing}", flush=True)
        run.contenders.append(contender)


def _micro(run: Run) -> None:
    plan = run.plan
    if "routing" in run.measures:
        print("routing decision time", flush=True)
        times = routing_times((10, 100, 1000), plan.routing_repeats)
        for size, values in times["decision"].items():
            rebuild = times["roster"][size]
            run.extra[f"routing.us_{size}", "nexus"] = values
            run.extra[f"routing.roster_us_{size}", "nexus"] = rebuild
            print(f"  {size:5} backends: {min(values):.2f} µs (roster rebuilt after a fleet "
                  f"change: {min(rebuild):.2f} µs)", flush=True)  # fmt: skip
    if "startup" in run.measures:
        print("start-up of nexus serve --demo", flush=True)
        seconds = []
        for attempt in range(plan.startups):
            try:
                seconds.append(startup_seconds(run.group)["seconds"])
                print(f"  run {attempt + 1}: {seconds[-1]:.2f} s", flush=True)
            except RuntimeError as exc:
                run.errors.append(f"start-up {attempt + 1}: {exc}")
        if seconds:
            run.extra["startup.seconds", "nexus"] = seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (~3 min)")
    parser.add_argument("--rounds", type=int, help="rounds per measure (default 5; quick 2)")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(MEASURES)}")
    parser.add_argument(
        "--contenders", default=",".join(report.CONTENDERS), help="comma-separated subset"
    )
    args = parser.parse_args()
    measures = set(args.only.split(",")) if args.only else set(MEASURES)
    wanted = [c for c in report.CONTENDERS if c in args.contenders.split(",")]
    if unknown := measures - set(MEASURES):
        parser.error(f"unknown measure(s) {', '.join(sorted(unknown))}")
    plan = Plan.quick(args.rounds) if args.quick else Plan.default(args.rounds)
    _raise_open_files()
    if procs.pin(0):
        # The suite is a load generator too: on the client core, away from the servers.
        os.sched_setaffinity(0, {procs.CLIENT_CORE})
    started = time.time()
    group = procs.ProcessGroup()
    run = Run(plan, measures, group)
    try:
        if measures & {"latency", "throughput", "streaming", "memory"}:
            _start(run, wanted)
            trio.run(_rounds, run)
        group.close()  # start-up is timed on an otherwise idle machine
        _micro(run)
    finally:
        group.close()
        shutil.rmtree(run.tmp, ignore_errors=True)
    _write(run, args, started, partial=bool(args.only) or wanted != list(report.CONTENDERS))


def _write(run: Run, args: argparse.Namespace, started: float, *, partial: bool) -> None:
    data = report.series(run.runs, run.extra)
    summary = report.summaries(data)
    missing = {c.name: c.missing for c in run.contenders if c.missing}
    if load.wrk_binary() is None and "throughput" in run.measures:
        run.errors.append("throughput not measured: wrk is not installed (apt-get install wrk)")
    offered = STREAMS / PERIOD
    print()
    print(report.table(summary, missing, offered))
    for error in run.errors:
        print(f"error: {error}")
    machine = _environment.machine()
    print(
        f"\nmachine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB, "
        f"Linux {machine['kernel']}, Python {machine['python']}; {machine['pinning']}"
    )
    suffix = "-quick" if args.quick else "-partial" if partial else ""
    stem = time.strftime("%Y-%m-%d", time.gmtime(started)) + suffix
    RESULTS.mkdir(exist_ok=True)
    nexus = _environment.nexus_source()
    document = {
        "command": " ".join(["python", "benchmarks/suite.py", *sys.argv[1:]]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_seconds": round(time.time() - started, 1),
        "machine": machine,
        "plan": {**dataclasses.asdict(run.plan), "measures": sorted(run.measures)},
        "load": {
            "wrk_connections": WRK_CONNECTIONS,
            "relay_streams": STREAMS,
            "relay_chunks_per_stream": CHUNKS,
            "chunk_period_seconds": PERIOD,
            "relay_offered_chunks_per_s": offered,
            "ttft_chunks_per_stream": SHORT_CHUNKS,
            "idle_streams": IDLE_STREAMS,
        },
        "contenders": {
            c.name: {"version": c.version, "missing": c.missing} for c in run.contenders
        },
        "nexus": nexus,
        "tools": _environment.tools(),
        "runs": run.runs,
        "extra_runs": {f"{m}/{c}": v for (m, c), v in run.extra.items()},
        "summary": {
            metric: {c: s.as_dict() for c, s in by.items()} for metric, by in summary.items()
        },
        "targets": report.verdicts(summary),
        "errors": run.errors,
    }
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    chart = RESULTS / f"{stem}.png"
    title = (
        f"Nexus {nexus['version']} vs nginx and LiteLLM {procs.LITELLM_VERSION} — "
        f"{stem[:10]}, {machine['cpu']}, {machine['cores']} cores "
        f"(median of {run.plan.rounds} rounds, bars: min–max)"
    )
    why_not = write_chart(chart, summary, missing, title)
    print(f"chart not written: {why_not}" if why_not else f"wrote {chart}")


if __name__ == "__main__":
    main()
