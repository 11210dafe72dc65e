"""Soak test: many clients for a long time through Nexus while the fleet misbehaves.

Starts, on loopback only, a simulated fleet (one model on several backends of
mixed flavours, in its own process: ``_soak_fleet.py``) and ``nexus serve`` in
front of it (another process), then runs ``--clients`` concurrent clients for
``--minutes``, each sending chat requests back to back (half of them streamed)
while a chaos task in the fleet process injects random faults into one backend at
a time for a few seconds: HTTP 500/503/429, headers later than a client waits (a
wedged server), an answer cut or stalled after K chunks, a malformed event, a reset
before the headers, an in-band error event, refused connections. At least one
backend is healthy at every moment, so every request should be served.

Every answer is checked word for word against the simulator's deterministic
text (:func:`nexus_trio.testing.expected_answer`). A request is SERVED when it
is complete and exactly right, LOST otherwise (an error status, an error event,
a cut or wrong text, a transport error, no answer within
``--request-timeout``); lost ones are counted by cause and the first few are
printed. The RSS of the Nexus process is read from ``/proc`` after the warm-up
and every ``--rss-every`` seconds.

    python benchmarks/soak.py [--minutes 10] [--clients 100] [--seed 1]
    python benchmarks/soak.py --quick          # 30 s, 20 clients: try it out

To soak one commit while the working tree changes, export it and put it first
on the path (the child processes inherit it)::

    git archive HEAD | tar -x -C /tmp/nexus-head
    PYTHONPATH=/tmp/nexus-head python benchmarks/soak.py

Writes benchmarks/results/<date>-soak.json (``-soak-quick.json`` with
``--quick``). Exits with 1 when any request was lost or RSS grew by 10% or
more, so it can gate a release; 2 when the run itself could not be set up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import httpx
import trio
from _contenders import free_port
from _environment import cpu_model

import nexus_trio
from nexus_trio import __version__
from nexus_trio.config import MidStream
from nexus_trio.testing import expected_answer

RESULTS: Final = Path(__file__).parent / "results"
FLEET_SCRIPT: Final = Path(__file__).with_name("_soak_fleet.py")
MODEL: Final = "soak:1b"
EXAMPLES: Final = 5
RSS_GROWTH_LIMIT_PERCENT: Final = 10.0
STARTUP_SECONDS: Final = 30.0
STOP_SECONDS: Final = 10.0
PROGRESS_SECONDS: Final = 60.0


# ---------------------------------------------------------------------------------------------
# What one request came to, and the tally of all of them.


@dataclass(frozen=True, slots=True)
class Result:
    """One request: served (complete and exactly right) or lost, and why."""

    stream: bool
    latency: float
    cause: str | None = None  # None: served
    ttft: float | None = None
    backend: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tally:
    """Every request's result, folded as it arrives."""

    served: int = 0
    lost: int = 0
    requests: Counter[str] = field(default_factory=Counter)  # "stream" / "non-stream"
    lost_by_cause: Counter[str] = field(default_factory=Counter)
    served_by_backend: Counter[str] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(
        default_factory=lambda: {"stream": [], "non-stream": []}
    )
    ttft: list[float] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, result: Result) -> None:
        kind = "stream" if result.stream else "non-stream"
        self.requests[kind] += 1
        if result.cause is None:
            self.served += 1
            self.served_by_backend[result.backend or "?"] += 1
            self.latency[kind].append(result.latency)
            if result.ttft is not None:
                self.ttft.append(result.ttft)
            return
        self.lost += 1
        self.lost_by_cause[result.cause] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(
                {
                    "cause": result.cause,
                    "kind": kind,
                    "seconds": round(result.latency, 3),
                    "backend": result.backend,
                    **result.detail,
                }
            )


def _quantile(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _ms(samples: list[float]) -> dict[str, float | None]:
    def r(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "p50": r(_quantile(samples, 0.5)),
        "p99": r(_quantile(samples, 0.99)),
        "max": r(max(samples) if samples else None),
    }


# ---------------------------------------------------------------------------------------------
# One client request, checked.


def _sse_data(buffer: bytearray) -> Iterator[str]:
    """Take each complete event out of ``buffer``; yield its data (lines joined).

    Written here rather than borrowed from Nexus, so that the check does not share
    a bug with what it checks (WHATWG HTML 9.2.6, the subset servers send).
    """
    while True:
        normal = buffer.replace(b"\r\n", b"\n")
        end = normal.find(b"\n\n")
        if end < 0:
            if len(normal) != len(buffer):
                buffer[:] = normal
            return
        event, rest = normal[:end], normal[end + 2 :]
        buffer[:] = rest
        lines = [
            line[5:].removeprefix(b" ")
            for line in bytes(event).split(b"\n")
            if line.startswith(b"data:")
        ]
        if lines:
            yield b"\n".join(lines).decode("utf-8", "replace")


def _error_code(payload: object) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return str(error.get("code") or error.get("type") or "no code")
    return "no error body"


def _error_message(payload: object) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message", ""))[:1000]
    return ""


async def _stream_request(
    http: httpx.AsyncClient, body: dict[str, Any], expected: str, started: float
) -> Result:
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        backend = response.headers.get("x-nexus-backend")
        detail: dict[str, Any] = {"request_id": response.headers.get("x-request-id")}
        if response.status_code != 200:
            raw = await response.aread()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            return Result(
                True,
                trio.current_time() - started,
                f"HTTP {response.status_code} {_error_code(payload)}",
                backend=backend,
                detail={**detail, "message": _error_message(payload) or raw[:200].decode()},
            )
        buffer = bytearray()
        text: list[str] = []
        ttft: float | None = None
        finish: str | None = None
        done = False
        error: object = None
        async for chunk in response.aiter_bytes():
            buffer += chunk
            for data in _sse_data(buffer):
                if data == "[DONE]":
                    done = True
                    continue
                try:
                    event = json.loads(data)
                except ValueError:
                    error = error or {"error": {"code": "unparsable event", "message": data}}
                    continue
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    error = error or event
                    continue
                for choice in event.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        ttft = ttft if ttft is not None else trio.current_time() - started
                        text.append(content)
                    finish = choice.get("finish_reason") or finish
    latency = trio.current_time() - started
    got = "".join(text)
    cause: str | None = None
    if error is not None:
        cause = f"error event {_error_code(error)}"
        detail["message"] = _error_message(error)
    elif not done or finish is None:
        cause = "stream ended early (no finish_reason or [DONE])"
    elif got != expected:
        cause = "text mismatch"
    if cause is not None:
        detail["chars_received"] = len(got)
        detail["chars_expected"] = len(expected)
        # Whether what did arrive was right: a cut stream, or a wrong one.
        detail["received_is_prefix"] = expected.startswith(got)
        if got != expected and not expected.startswith(got):
            detail["received"] = got[:160]
            detail["expected"] = expected[:160]
    return Result(True, latency, cause, ttft=ttft, backend=backend, detail=detail)


async def _json_request(
    http: httpx.AsyncClient, body: dict[str, Any], expected: str, started: float
) -> Result:
    response = await http.post("/v1/chat/completions", json=body)
    latency = trio.current_time() - started
    backend = response.headers.get("x-nexus-backend")
    detail: dict[str, Any] = {"request_id": response.headers.get("x-request-id")}
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code != 200:
        cause = f"HTTP {response.status_code} {_error_code(payload)}"
        detail["message"] = _error_message(payload) or response.text[:200]
        return Result(False, latency, cause, backend=backend, detail=detail)
    try:
        choice = payload["choices"][0]
        got, finish = choice["message"]["content"], choice["finish_reason"]
    except (TypeError, KeyError, IndexError):
        detail["body"] = response.text[:200]
        return Result(False, latency, "not a completion", backend=backend, detail=detail)
    if got != expected or finish != "stop":
        detail.update(received=str(got)[:160], expected=expected[:160], finish_reason=finish)
        return Result(False, latency, "text mismatch", backend=backend, detail=detail)
    return Result(False, latency, backend=backend)


async def _request(ctx: Run, messages: list[dict[str, str]], stream: bool) -> Result:
    wall = time.time()  # the fleet logs its faults on this clock
    result = await _checked_request(ctx, messages, stream)
    if result.cause is not None:
        result.detail["started_wall"] = round(wall, 3)
    return result


async def _checked_request(ctx: Run, messages: list[dict[str, str]], stream: bool) -> Result:
    body = {"model": MODEL, "messages": messages, "stream": stream, "temperature": 0}
    expected = expected_answer(MODEL, messages)
    started = trio.current_time()
    one = _stream_request if stream else _json_request
    with trio.move_on_after(ctx.args.request_timeout):
        try:
            return await one(ctx.http, body, expected, started)
        except httpx.HTTPError as exc:
            detail = {"message": str(exc)[:200]}
            cause = f"transport {type(exc).__name__}"
            return Result(stream, trio.current_time() - started, cause, detail=detail)
    return Result(stream, trio.current_time() - started, "client timeout")


# ---------------------------------------------------------------------------------------------
# The run: clients, RSS sampling, progress.


@dataclass
class Run:
    """What the clients and samplers of one run share."""

    args: argparse.Namespace
    http: httpx.AsyncClient
    nexus_pid: int
    stop_at: float
    tally: Tally = field(default_factory=Tally)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds in, KiB)
    rss_start: int | None = None
    rss_end: int | None = None
    rss_hwm: int | None = None
    nexus_died: bool = False
    interrupted: str | None = None  # the signal that stopped the run early
    elapsed: float = 0.0


def _status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


async def _client(ctx: Run, index: int) -> None:
    rng = random.Random(f"{ctx.args.seed}:{index}")
    await trio.sleep(rng.uniform(0, 1))  # no thundering herd at the start
    sent = 0
    while trio.current_time() < ctx.stop_at:
        sent += 1
        content = f"Soak client {index}, request {sent}, seed {ctx.args.seed}: say something."
        stream = rng.random() < ctx.args.stream_share
        ctx.tally.add(await _request(ctx, [{"role": "user", "content": content}], stream))


async def _sample_rss(ctx: Run, began: float) -> None:
    """RSS after the warm-up, then every ``--rss-every`` seconds; the end at ``stop_at``."""
    await trio.sleep_until(began + ctx.args.warmup)
    while True:
        try:
            kib = _status_kib(ctx.nexus_pid, "VmRSS")
        except (OSError, RuntimeError):  # the process is gone: stop the run early
            ctx.nexus_died = True
            ctx.stop_at = trio.current_time()
            return
        ctx.rss.append((round(trio.current_time() - began, 1), kib))
        if ctx.rss_start is None:
            ctx.rss_start = kib
        if trio.current_time() >= ctx.stop_at:
            ctx.rss_end = kib
            ctx.rss_hwm = _status_kib(ctx.nexus_pid, "VmHWM")
            return
        await trio.sleep_until(min(ctx.stop_at, trio.current_time() + ctx.args.rss_every))


async def _progress(ctx: Run, began: float) -> None:
    while True:
        await trio.sleep(PROGRESS_SECONDS)
        rss = f"{ctx.rss[-1][1] / 1024:.1f} MiB" if ctx.rss else "-"
        print(
            f"  t={trio.current_time() - began:5.0f}s  served {ctx.tally.served}  "
            f"lost {ctx.tally.lost}  rss {rss}",
            flush=True,
        )


async def _stop_on_signal(ctx: Run, clients: trio.CancelScope) -> None:
    """Ctrl-C or SIGTERM: stop the clients at once; a partial report still follows."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        signum = await anext(signals)
    ctx.interrupted = signal.Signals(signum).name
    clients.cancel()


async def _soak(args: argparse.Namespace, nexus_url: str, nexus_pid: int, fleet_pid: int) -> Run:
    limits = httpx.Limits(max_connections=args.clients + 8, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(
        base_url=nexus_url,
        limits=limits,
        timeout=httpx.Timeout(args.request_timeout),
        trust_env=False,  # loopback only: no proxy from the environment in between
    ) as http:
        began = trio.current_time()
        ctx = Run(args, http, nexus_pid, stop_at=began + args.minutes * 60)
        os.kill(fleet_pid, signal.SIGUSR1)  # chaos starts with the clients
        async with trio.open_nursery() as outer:
            outer.start_soon(_progress, ctx, began)
            outer.start_soon(_sample_rss, ctx, began)
            with trio.CancelScope() as clients_scope:
                outer.start_soon(_stop_on_signal, ctx, clients_scope)
                async with trio.open_nursery() as clients:
                    for index in range(args.clients):
                        clients.start_soon(_client, ctx, index)
            ctx.elapsed = trio.current_time() - began
            outer.cancel_scope.cancel()
    return ctx


# ---------------------------------------------------------------------------------------------
# Processes.


def _config(fleet: dict[str, Any], port: int, args: argparse.Namespace) -> str:
    t = args.timeouts
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "shutdown_grace_seconds = 2",
        "[discovery]",
        "enabled = false",
        'interfaces = ["127.0.0.1"]',
        "probe_local = false",
        "[health_check]",
        "enabled = true",
        f"interval_seconds = {args.health_interval}",
        "timeout_seconds = 2.0",
        f"ejection_base_seconds = {args.ejection_base_seconds}",
        f"ejection_max_seconds = {args.ejection_max_seconds}",
        "[logging]",
        'level = "warning"',
        "[routing]",
        f"max_attempts = {args.max_attempts or 2 * len(fleet['urls'])}",
        f"max_mid_stream_failovers = {args.max_mid_stream_failovers or len(fleet['urls'])}",
        *([f'mid_stream = "{args.mid_stream}"'] if args.mid_stream else []),
        "[routing.timeouts]",
        f"connect_seconds = {t['connect']}",
        f"first_token_seconds = {t['first_token']}",
        f"stream_idle_seconds = {t['stream_idle']}",
        f"request_seconds = {t['request']}",
    ]
    for name, url, flavor in zip(fleet["names"], fleet["urls"], fleet["flavors"], strict=True):
        assert url.startswith("http://127.0.0.1:"), url  # loopback only
        lines += ["[[backends]]", f'name = "{name}"', f'url = "{url}"', f'type = "{flavor}"']
    return "\n".join(lines) + "\n"


def _read_fleet_line(fleet: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert fleet.stdout is not None
    line = fleet.stdout.readline()  # the fleet prints this one line, then nothing
    try:
        info: dict[str, Any] = json.loads(line)
    except ValueError:
        raise RuntimeError(f"the fleet did not start (it said {line!r}); see its log") from None
    return info


def _wait_ready(url: str, backends: int) -> None:
    """Until /health shows every backend healthy and the model is listed."""
    deadline = time.monotonic() + STARTUP_SECONDS
    last = "no answer"
    with httpx.Client(base_url=url, timeout=2, trust_env=False) as http:
        while time.monotonic() < deadline:
            try:
                health = http.get("/health").json()
                models = http.get("/v1/models").json()
                up = [b for b in health.get("backends", {}).values() if b["status"] == "healthy"]
                listed = any(m.get("id") == MODEL for m in models.get("data", []))
                if len(up) == backends and listed:
                    return
                last = f"{len(up)}/{backends} backends healthy, model listed: {listed}"
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
    raise RuntimeError(f"nexus at {url} was not ready within {STARTUP_SECONDS:g} s ({last})")


def _stop(process: subprocess.Popen[bytes], sig: int) -> int | None:
    """Signal, wait, then kill; the exit code (None if it had to be killed)."""
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        return process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


@dataclass(frozen=True, slots=True)
class Window:
    """One fault, from when it was applied to when it was cleared (wall clock)."""

    backend: str
    kind: str
    start: float
    end: float  # inf: never cleared
    k: int | None


def _fleet_summary(events_path: Path) -> tuple[dict[str, Any], list[Window]]:
    faults: Counter[str] = Counter()
    notes: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    windows: list[Window] = []
    open_faults: dict[str, dict[str, Any]] = {}
    if events_path.exists():
        for line in events_path.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event["event"] == "fault":
                faults[event["kind"]] += 1
                open_faults[event["backend"]] = event
            elif event["event"] == "clear" and event["backend"] in open_faults:
                f = open_faults.pop(event["backend"])
                end = event["wall"]
                windows.append(Window(f["backend"], f["kind"], f["wall"], end, f.get("k")))
            elif event["event"] == "stats":
                stats = event["backends"]
            elif event["event"] in ("reaccept_failed", "lost_backend", "chaos_crashed"):
                notes.append(event)
    for f in open_faults.values():
        windows.append(Window(f["backend"], f["kind"], f["wall"], math.inf, f.get("k")))
    summary = {
        "faults": sum(faults.values()),
        "faults_by_kind": dict(faults.most_common()),
        "backends": stats,
        "notes": notes,
    }
    return summary, windows


def _faults_during(example: dict[str, Any], windows: list[Window]) -> list[str]:
    """The faults that could have touched a request: applied before it ended and
    cleared after it began (a request reads the knobs when it arrives, so a fault
    cleared later still shapes it), as seconds relative to its start."""
    start = example.get("started_wall")
    if start is None:
        return []
    end = start + example["seconds"]
    return [
        f"{w.backend} {w.kind}{'' if w.k is None else f' k={w.k}'}: "
        f"{w.start - start:+.2f} s .. {w.end - start:+.2f} s"
        for w in windows
        if w.start < end and w.end > start
    ]


# ---------------------------------------------------------------------------------------------
# Report.


def _machine() -> dict[str, Any]:
    cpu = cpu_model()
    # The code under test is the nexus_trio imported here (and by the children: same
    # environment, and a working directory outside the repository).
    source = Path(nexus_trio.__file__).resolve().parent.parent
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):

        def git_out(*command: str) -> str:  # read-only commands
            done = subprocess.run(
                ["git", *command], cwd=source, capture_output=True, text=True, timeout=5
            )
            return done.stdout if done.returncode == 0 else ""

        if commit := git_out("rev-parse", "HEAD").strip():
            git["commit"] = commit
            git["uncommitted"] = git_out("status", "--porcelain").splitlines()[:30]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nexus_trio": __version__,
        "nexus_trio_source": str(source),
        "git": git,
    }


def _report(
    ctx: Run, args: argparse.Namespace, fleet: dict[str, Any], summary: dict[str, Any]
) -> dict[str, Any]:
    tally = ctx.tally
    served_all = tally.latency["stream"] + tally.latency["non-stream"]
    growth = None
    if ctx.rss_start and ctx.rss_end is not None:
        growth = round((ctx.rss_end - ctx.rss_start) / ctx.rss_start * 100, 2)
    reasons = []
    if tally.lost:
        reasons.append(f"{tally.lost} requests lost")
    if growth is None:
        reasons.append("no RSS reading at start and end")
    elif growth >= RSS_GROWTH_LIMIT_PERCENT:
        reasons.append(f"RSS grew {growth:+.1f}% (limit {RSS_GROWTH_LIMIT_PERCENT:g}%)")
    if ctx.interrupted:
        reasons.append(f"interrupted by {ctx.interrupted} after {ctx.elapsed:.0f} s")
    if ctx.nexus_died:
        reasons.append("the nexus process died during the run")
    if not tally.served:
        reasons.append("nothing was served")
    total = tally.served + tally.lost
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(),
        "parameters": {
            **{k: v for k, v in vars(args).items() if k not in ("timeouts", "log_dir", "out")},
            "model": MODEL,
            "backends": [
                {"name": n, "flavor": f}
                for n, f in zip(fleet["names"], fleet["flavors"], strict=True)
            ],
            "nexus_timeouts_seconds": args.timeouts,
        },
        "duration_seconds": round(ctx.elapsed, 1),
        "requests": total,
        "requests_by_kind": dict(tally.requests),
        "throughput_per_second": round(total / ctx.elapsed, 1) if ctx.elapsed else None,
        "served": tally.served,
        "lost": tally.lost,
        "lost_by_cause": dict(tally.lost_by_cause.most_common()),
        "lost_examples": tally.examples,
        "served_by_backend": dict(tally.served_by_backend.most_common()),
        "latency_ms": _ms(served_all),
        "latency_ms_stream": _ms(tally.latency["stream"]),
        "latency_ms_non_stream": _ms(tally.latency["non-stream"]),
        "ttft_ms": _ms(tally.ttft),
        "rss_kib": {
            "start": ctx.rss_start,
            "end": ctx.rss_end,
            "peak_sampled": max((kib for _, kib in ctx.rss), default=None),
            "vm_hwm": ctx.rss_hwm,
            "samples": ctx.rss,
        },
        "rss_growth_percent": growth,
        "fleet": summary,
        "gate": {"passed": not reasons, "reasons": reasons},
    }


def _print_table(report: dict[str, Any]) -> None:
    p = report["parameters"]
    m = report["machine"]
    flavors = ", ".join(b["flavor"] for b in p["backends"])

    def mib(kib: int | None) -> str:
        return "-" if kib is None else f"{kib / 1024:.1f}"

    def pair(row: dict[str, float | None]) -> str:
        return f"{row['p50']} / {row['p99']} ms (max {row['max']})"

    rss = report["rss_kib"]
    growth = report["rss_growth_percent"]
    kinds = ", ".join(f"{k} {v}" for k, v in report["requests_by_kind"].items())
    rows = [
        ("duration", f"{report['duration_seconds']} s, {p['clients']} clients, seed {p['seed']}"),
        ("fleet", f"{len(p['backends'])} backends ({flavors}), {p['tokens_per_second']:g} tok/s"),
        ("requests", f"{report['requests']} ({kinds}), {report['throughput_per_second']}/s"),
        ("served", str(report["served"])),
        ("lost", f"{report['lost']}  {'ok' if not report['lost'] else 'FAIL'}"),
        *((f"  {cause}", str(n)) for cause, n in report["lost_by_cause"].items()),
        ("latency p50/p99", pair(report["latency_ms"])),
        ("  stream", pair(report["latency_ms_stream"])),
        ("  non-stream", pair(report["latency_ms_non_stream"])),
        ("TTFT p50/p99", pair(report["ttft_ms"])),
        (
            "RSS start/end/peak",
            f"{mib(rss['start'])} / {mib(rss['end'])} / {mib(rss['peak_sampled'])} MiB",
        ),
        (
            "RSS growth",
            "-"
            if growth is None
            else f"{growth:+.2f}%  " + ("ok" if growth < RSS_GROWTH_LIMIT_PERCENT else "FAIL"),
        ),
        (
            "faults injected",
            f"{report['fleet']['faults']} ("
            + ", ".join(f"{k} {v}" for k, v in report["fleet"]["faults_by_kind"].items())
            + ")",
        ),
    ]
    print(f"soak results  ({m['cpu']}, {m['cores']} cores, Python {m['python']})")
    for name, value in rows:
        print(f"  {name:22} {value}")
    for note in report["fleet"]["notes"]:
        print(f"  fleet note: {note}")
    if report["lost_examples"]:
        print("first lost requests:")
        for example in report["lost_examples"]:
            print(f"  {json.dumps(example)}")
    gate = report["gate"]
    print("gate: " + ("PASSED" if gate["passed"] else "FAILED: " + "; ".join(gate["reasons"])))


# ---------------------------------------------------------------------------------------------
# Entry point.


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--minutes", type=float, default=None, help="duration (default 10; --quick: 0.5)")
    add("--clients", type=int, default=None, help="concurrent clients (default 100; --quick: 20)")
    add("--quick", action="store_true", help="30 s with 20 clients, to try it out")
    add("--seed", type=int, default=1, help="seeds the clients and the chaos")
    add("--warmup", type=float, default=None, help="seconds before the start RSS (30; quick 5)")
    add("--stream-share", type=float, default=0.5, help="fraction of requests streamed")
    add("--flavors", default="ollama,vllm,llamacpp,vllm", help="one backend per flavour")
    add("--tokens-per-second", type=float, default=25.0, help="a local LLM's pace")
    add("--fault-every", type=float, default=3.0, help="mean seconds between faults")
    add("--fault-min", type=float, default=1.0, help="shortest fault, seconds")
    add("--fault-max", type=float, default=6.0, help="longest fault, seconds")
    add("--max-faulty", type=int, default=2, help="backends faulty at once (< fleet size)")
    add("--fault-kinds", default=None, help="comma-separated subset of the fleet's fault kinds")
    add("--first-token-seconds", type=float, default=5.0, help="Nexus first-token timeout")
    add("--stream-idle-seconds", type=float, default=5.0, help="Nexus stall timeout")
    add("--request-seconds", type=float, default=600.0, help="Nexus whole-request bound")
    add("--delay", type=float, default=None,
        help="slow-headers fault (default: longer than a client waits)")  # fmt: skip
    add(
        "--max-attempts",
        type=int,
        default=None,
        help="routing.max_attempts (default: twice the fleet)",
    )
    add(
        "--max-mid-stream-failovers",
        type=int,
        default=None,
        help="routing.max_mid_stream_failovers (default: the fleet's size)",
    )
    add("--mid-stream", choices=[m.value for m in MidStream], help="routing.mid_stream")
    add("--health-interval", type=float, default=1.0, help="seconds between health checks")
    add("--ejection-base-seconds", type=float, default=5.0, help="health_check key")
    add("--ejection-max-seconds", type=float, default=300.0, help="health_check key")
    add("--request-timeout", type=float, default=60.0, help="client gives up after, seconds")
    add("--rss-every", type=float, default=10.0, help="seconds between RSS samples")
    add("--log-dir", type=Path, default=None, help="keep the nexus and fleet logs here")
    add("--note", default="", help="free text kept in the results (e.g. the commit soaked)")
    add("--out", type=Path, default=None, help="results file (default: results/<date>-soak.json)")
    args = parser.parse_args(argv)
    args.minutes = args.minutes if args.minutes is not None else (0.5 if args.quick else 10.0)
    args.clients = args.clients if args.clients is not None else (20 if args.quick else 100)
    args.warmup = args.warmup if args.warmup is not None else (5.0 if args.quick else 30.0)
    args.timeouts = {
        "connect": 1.0,
        "first_token": args.first_token_seconds,
        "stream_idle": args.stream_idle_seconds,
        "request": args.request_seconds,
    }
    if args.delay is None:
        # A wedged server: a request that waited for it would be lost to the client's own
        # timeout; only the first-token deadline (streamed or not) saves it.
        args.delay = args.request_timeout + 1.0
    if args.clients < 1 or args.minutes <= 0:
        parser.error("need at least one client and a positive duration")
    if args.warmup >= args.minutes * 60:
        parser.error("--warmup must be shorter than the run")
    return args


def _fleet_args(args: argparse.Namespace, events: Path) -> list[str]:
    out = [
        sys.executable,
        str(FLEET_SCRIPT),
        "--events",
        str(events),
        "--seed",
        str(args.seed),
        "--model",
        MODEL,
        "--flavors",
        args.flavors,
        "--tokens-per-second",
        str(args.tokens_per_second),
        "--fault-every",
        str(args.fault_every),
        "--fault-min",
        str(args.fault_min),
        "--fault-max",
        str(args.fault_max),
        "--max-faulty",
        str(args.max_faulty),
        "--delay",
        str(args.delay),
    ]
    return [*out, "--kinds", args.fault_kinds] if args.fault_kinds else out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; the exit code says whether it passed (0), failed (1) or broke (2)."""
    args = _parse(argv)
    # Until trio runs (it then takes SIGTERM itself), SIGTERM unwinds like Ctrl-C, so
    # that the `finally` below stops the child processes.
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.ExitStack() as stack:
        if args.log_dir is not None:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            logs = args.log_dir
        else:
            logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        fleet_log: IO[bytes] = stack.enter_context((logs / "fleet.log").open("wb"))
        nexus_log: IO[bytes] = stack.enter_context((logs / "nexus.log").open("wb"))
        events = logs / "fleet-events.jsonl"
        events.unlink(missing_ok=True)
        processes: list[tuple[subprocess.Popen[bytes], int]] = []
        try:
            fleet = subprocess.Popen(
                _fleet_args(args, events),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
                stdout=subprocess.PIPE,
                stderr=fleet_log,
                cwd=logs,
            )
            processes.append((fleet, signal.SIGTERM))
            info = _read_fleet_line(fleet)
            config = logs / "nexus.toml"
            port = free_port()
            config.write_text(_config(info, port, args), encoding="utf-8")
            nexus = subprocess.Popen(
                [sys.executable, "-m", "nexus_trio", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
                stdout=nexus_log,
                stderr=nexus_log,
                cwd=logs,  # not the repository: `-m` would import its nexus_trio first
            )
            processes.insert(0, (nexus, signal.SIGINT))  # stopped first: drains, then exits
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, len(info["urls"]))
            print(
                f"soak: {args.minutes:g} min, {args.clients} clients, seed {args.seed}, "
                f"nexus pid {nexus.pid} at {url}, logs in {logs}",
                flush=True,
            )
            ctx = trio.run(_soak, args, url, nexus.pid, fleet.pid)
            ctx.nexus_died = ctx.nexus_died or nexus.poll() is not None
        except (RuntimeError, OSError) as exc:
            print(f"soak: cannot run: {exc}", file=sys.stderr)
            return 2
        finally:
            for process, sig in processes:
                _stop(process, sig)
        summary, windows = _fleet_summary(events)
        for example in ctx.tally.examples:
            example["faults_during"] = _faults_during(example, windows)
        report = _report(ctx, args, info, summary)
    _print_table(report)
    RESULTS.mkdir(exist_ok=True)
    suffix = "-interrupted" if ctx.interrupted else "-quick" if args.quick else ""
    name = f"{time.strftime('%Y-%m-%d')}-soak{suffix}.json"
    out: Path = args.out or RESULTS / name
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0 if report["gate"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
