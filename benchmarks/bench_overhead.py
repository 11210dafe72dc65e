"""What Nexus adds to a request: latency (non-stream) and time to first byte (stream).

Starts, on loopback, a fast simulated OpenAI-compatible backend and `nexus serve`
in front of it, each in its own process (pinned to its own core where the
machine allows), then sends the same requests directly and through Nexus,
interleaved over several rounds, and reports the medians with their range.

    python benchmarks/bench_overhead.py [--requests 500] [--rounds 5]

Writes benchmarks/results/<date>-overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

RESULTS = Path(__file__).parent / "results"
BODY = {"model": "bench:1b", "messages": [{"role": "user", "content": "Say something."}]}
UPSTREAM = """
import sys, trio
from nexus_trio.testing import Flavor, SimModel, SimulatedBackend
async def main():
    sim = SimulatedBackend(Flavor.VLLM, [SimModel("bench:1b")], name="bench")
    async with trio.open_nursery() as n:
        url = await n.start(sim.serve)
        print(url, flush=True)
trio.run(main)
"""


def _pin(core: int) -> list[str]:
    """Prefix that pins a process to one core, when there are two or more."""
    if (os.cpu_count() or 1) >= 2 and Path("/usr/bin/taskset").exists():
        return ["taskset", "-c", str(core)]
    return []


def _start(args: list[str], pattern: bytes, stream: str) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pipe = process.stdout if stream == "stdout" else process.stderr
    assert pipe is not None
    seen = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = pipe.readline()
        if not line:
            break
        seen += line
        if match := re.search(pattern, line):
            return process, match.group(1).decode()
    process.kill()
    raise RuntimeError(f"{args[0]} did not start:\n{seen.decode()}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nexus at {url} did not become healthy")


async def _sequential(http: httpx.AsyncClient, url: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        response = await http.post(url + "/v1/chat/completions", json=BODY)
        response.raise_for_status()
        samples.append(time.perf_counter() - start)
    return samples


async def _first_bytes(http: httpx.AsyncClient, url: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        async with http.stream(
            "POST", url + "/v1/chat/completions", json={**BODY, "stream": True}
        ) as response:
            chunks = response.aiter_raw()
            await anext(chunks)
            samples.append(time.perf_counter() - start)
            async for _ in chunks:
                pass
    return samples


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(direct: str, nexus: str, requests: int, rounds: int) -> dict[str, Any]:
    rows: dict[str, list[float]] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        await _sequential(http, direct, 50)  # warm both paths up
        await _sequential(http, nexus, 50)
        for _ in range(rounds):
            for name, url in (("direct", direct), ("nexus", nexus)):
                latency = await _sequential(http, url, requests)
                first = await _first_bytes(http, url, requests // 5)
                rows.setdefault(f"{name}.p50_ms", []).append(_quantile(latency, 0.5) * 1000)
                rows.setdefault(f"{name}.p99_ms", []).append(_quantile(latency, 0.99) * 1000)
                rows.setdefault(f"{name}.ttfb_p50_ms", []).append(_quantile(first, 0.5) * 1000)
    for metric in ("p50_ms", "p99_ms", "ttfb_p50_ms"):
        rows[f"added.{metric}"] = [
            n - d for n, d in zip(rows[f"nexus.{metric}"], rows[f"direct.{metric}"], strict=True)
        ]
    return {
        key: {"median": statistics.median(v), "min": min(v), "max": max(v)}
        for key, v in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    upstream, direct = _start(
        [*_pin(0), sys.executable, "-c", UPSTREAM], rb"(http://\S+)", "stdout"
    )
    config = Path(tempfile.mkdtemp()) / "nexus.toml"
    config.write_text(
        f'[health_check]\nenabled = false\n[[backends]]\nname = "bench"\nurl = "{direct}"\n'
        'type = "vllm"\n'
    )
    port = _free_port()
    nexus_url = f"http://127.0.0.1:{port}"
    # Warnings only: the request log is not what is being measured.
    nexus = subprocess.Popen(
        [
            *_pin(1),
            sys.executable,
            "-m",
            "nexus_trio",
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-discovery",
            "--log-level",
            "warning",
        ],
    )
    try:
        _wait_healthy(nexus_url)  # inside the try: a Nexus that never starts stops both
        results = trio.run(_measure, direct, nexus_url, args.requests, args.rounds)
    finally:
        for process in (nexus, upstream):
            process.terminate()
            process.wait(10)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"{'measure':24} {'median':>9} {'min':>9} {'max':>9}   ({machine})")
    for key, value in results.items():
        print(f"{key:24} {value['median']:9.3f} {value['min']:9.3f} {value['max']:9.3f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-overhead.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "requests": args.requests,
                "rounds": args.rounds,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
