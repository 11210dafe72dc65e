"""What streaming a non-streaming request from its backend costs: Nexus with
``routing.stream_upstream`` on (the default: the backend streams, Nexus assembles the
``chat.completion``) beside the same Nexus with it off (the backend's JSON passed
through), in front of the suite's upstream answering ``bench-whole`` (an answer that takes
no time to generate, in either shape).

Both run at once, on the same core, and are measured in interleaved rounds of sequential
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _environment
import httpx
from _contenders import CLIENT_CORE, SERVER_CORE, free_port, pin

RESULTS = Path(__file__).parent / "results"
BODY = {"model": "bench-whole", "messages": [{"role": "user", "content": "Say something short."}]}
CONFIG = """[server]
host = "127.0.0.1"
port = {port}
[discovery]
enabled = false
probe_local = false
interfaces = ["127.0.0.1"]
[logging]
level = "warning"
[routing]
stream_upstream = {stream_upstream}
[[backends]]
name = "bench"
url = "{upstream}"
type = "generic"
"""


def start_nexus(
    upstream: str, stream_upstream: bool, tmp: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = tmp / f"nexus-{stream_upstream}.toml"
    config.write_text(CONFIG.format(port=port, upstream=upstream,
                                    stream_upstream=str(stream_upstream).lower()))  # fmt: skip
    command = [
        *pin(SERVER_CORE),
        sys.executable,
        "-m",
        "nexus_trio",
        "serve",
        "--config",
        str(config),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.post(url + "/v1/chat/completions", json=BODY, timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.05)  # polling a process that is starting
    process.kill()
    raise SystemExit(f"nexus (stream_upstream={stream_upstream}) did not start")


def median_ms(url: str, requests: int) -> float:
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(100):  # warm the connections
            client.post("/v1/chat/completions", json=BODY)
        for _ in range(requests):
            began = time.perf_counter()
            response = client.post("/v1/chat/completions", json=BODY)
            samples.append(time.perf_counter() - began)
            if response.status_code != 200 or "choices" not in response.json():
                raise SystemExit(f"{url} answered {response.status_code}: {response.text[:200]}")
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=1500, help="per contender per round")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nexus-whole-"))
    upstream_process = subprocess.Popen(
        [*pin(CLIENT_CORE), sys.executable, str(Path(__file__).parent / "_upstream.py")],
        stdout=subprocess.PIPE,
    )
    assert upstream_process.stdout is not None
    upstream = upstream_process.stdout.readline().decode().strip()
    nexus = {on: start_nexus(upstream, on, tmp) for on in (True, False)}
    rounds: list[dict[str, float]] = []
    try:
        for index in range(args.rounds):
            floor = median_ms(upstream, args.requests)
            row = {"direct_ms": floor}
            for on, (_, url) in nexus.items():
                row[f"added_ms_stream_upstream_{str(on).lower()}"] = (
                    median_ms(url, args.requests) - floor
                )
            rounds.append(row)
            print(f"round {index + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    finally:
        for process, _ in nexus.values():
            process.terminate()
        upstream_process.terminate()
    on = [r["added_ms_stream_upstream_true"] for r in rounds]
    off = [r["added_ms_stream_upstream_false"] for r in rounds]
    cost = statistics.median(a - b for a, b in zip(on, off, strict=True))
    summary = {
        "added_ms_stream_upstream_true": statistics.median(on),
        "added_ms_stream_upstream_false": statistics.median(off),
        "cost_of_streaming_upstream_ms": cost,
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
