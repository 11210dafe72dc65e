"""The load: what each measurement sends, and what it reads back.

- Sequential latency and time to first token: httpx on trio, one keep-alive
  connection, one request at a time, timed with ``perf_counter`` around each request. At
  one request in flight the client's own cost is in every sample alike, so the difference
  to ``direct`` is what the contender adds.
- Throughput: ``wrk`` (the field's standard HTTP load generator, C, event-driven), one
  thread and 64 connections, POSTing the same JSON; it reports requests/s and latency
  percentiles (``--latency``).
- Relay capacity and open streams: a small client on raw trio sockets (``_streams.py``).

Every load is bounded in count or time.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import httpx
from _contenders import CLIENT_CORE, Contender, pin

MESSAGES: Final = [{"role": "user", "content": "Say something short."}]
# An answer that takes no time to generate in either shape: Nexus asks for a stream.
BODY: Final = {"model": "bench-whole", "messages": MESSAGES}
REQUEST_SECONDS: Final = 30.0


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _client(contender: Contender, connections: int = 1) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=REQUEST_SECONDS,
        headers=contender.headers,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


# -- sequential, non-streamed ------------------------------------------------------------------


async def sequential_latency(contender: Contender, requests: int, warmup: int) -> dict[str, Any]:
    """p50/p99 of ``requests`` non-streamed requests sent one after another (milliseconds)."""
    samples: list[float] = []
    errors = 0
    async with _client(contender) as http:
        for index in range(warmup + requests):
            start = time.perf_counter()
            response = await http.post(contender.chat_url, json=BODY)
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                errors += 1
            elif index >= warmup:
                samples.append(elapsed * 1000)
    if not samples:
        return {"errors": errors}
    return {
        "p50_ms": quantile(samples, 0.5),
        "p99_ms": quantile(samples, 0.99),
        "mean_ms": sum(samples) / len(samples),
        "requests": len(samples),
        "errors": errors,
    }


# -- streamed, one at a time: time to first token and the gaps between tokens ------------------


def _content_of(event: str) -> str:
    try:
        chunk = json.loads(event)
        return str(chunk["choices"][0]["delta"].get("content") or "")
    except (ValueError, LookupError, TypeError, AttributeError):
        return ""


async def first_tokens(contender: Contender, streams: int, warmup: int) -> dict[str, Any]:
    """Time to the first content event, and the gaps between content events (milliseconds).

    Nexus sends its headers only with the first token, so the clock runs to the first
    event that carries text, for every contender alike.
    """
    ttft: list[float] = []
    gaps: list[float] = []
    chunk_counts: list[int] = []
    errors = 0
    body = {"model": "bench-short", "messages": MESSAGES, "stream": True}
    async with _client(contender) as http:
        for index in range(warmup + streams):
            start = time.perf_counter()
            stamps: list[float] = []
            async with http.stream("POST", contender.chat_url, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    errors += 1
                    continue
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and _content_of(line[6:]):
                        stamps.append(time.perf_counter())
            if index < warmup or not stamps:
                continue
            ttft.append((stamps[0] - start) * 1000)
            gaps.extend((b - a) * 1000 for a, b in itertools.pairwise(stamps))
            chunk_counts.append(len(stamps))
    if not ttft:
        return {"errors": errors}
    return {
        "ttft_p50_ms": quantile(ttft, 0.5),
        "ttft_p99_ms": quantile(ttft, 0.99),
        "gap_p50_ms": quantile(gaps, 0.5) if gaps else None,
        "gap_p99_ms": quantile(gaps, 0.99) if gaps else None,
        "chunks_per_stream": sorted(set(chunk_counts)),
        "streams": len(ttft),
        "errors": errors,
    }


# -- wrk: throughput at a fixed number of connections ------------------------------------------

_WRK_SCRIPT: Final = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
{headers}
"""
_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms), non-2xx responses and socket errors."""
    result: dict[str, Any] = {}
    if match := re.search(r"Requests/sec:\s+([\d.]+)", output):
        result["rps"] = float(match.group(1))
    for q, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.MULTILINE):
        result[f"p{q}_ms"] = _ms(value)
    if match := re.search(r"(\d+) requests in", output):
        result["requests"] = int(match.group(1))
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    result["socket_errors"] = sum(map(int, match.groups())) if match else 0
    return result


def run_wrk(contender: Contender, connections: int, seconds: float) -> dict[str, Any]:
    """``wrk`` against the contender's chat endpoint for ``seconds``, pinned to the client core."""
    binary = wrk_binary()
    assert binary is not None
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in contender.headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT.format(body=json.dumps(BODY), headers=headers))
    try:
        done = subprocess.run(
            [*pin(CLIENT_CORE), binary, "-t1", f"-c{connections}", f"-d{seconds:g}s",
             "--timeout", "10s", "--latency", "-s", script.name, contender.chat_url],
            capture_output=True, text=True, timeout=seconds + 60, check=False,
        )  # fmt: skip
    finally:
        Path(script.name).unlink()
    result = parse_wrk(done.stdout)
    if "rps" not in result:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    return result
