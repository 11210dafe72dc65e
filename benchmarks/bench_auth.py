"""What keys cost a request: Nexus with ``[auth]`` on beside off, in one run.

Two `nexus serve` processes in front of one simulated backend (as fast as it can go),
the same but for ``[auth] enabled``; with auth on, the client sends a key that has
requests and tokens per minute (so the limiter and its headers run) and a budget (so
the spending check runs), and every request's usage goes to the SQLite store. Requests
are sent one at a time (non-streaming chat, then streaming), to one server then the
other in turn, so a drift of the machine touches both alike; the added latency is the
difference of the medians.

    python benchmarks/bench_auth.py [--requests 400] [--rounds 3]

Writes benchmarks/results/<date>-auth.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Final

import _contenders as procs
import _environment
import httpx
import trio

from nexus_trio.testing import Flavor, SimModel, SimulatedBackend

RESULTS: Final = Path(__file__).parent / "results"
MODEL: Final = "llama3:8b"
BODY: Final = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


def serve_in_thread(sim: SimulatedBackend) -> str:
    """Serve ``sim`` in a trio run on a thread of its own; its URL."""
    ready, where = threading.Event(), {}

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            where["url"] = await nursery.start(sim.serve)
            ready.set()

    threading.Thread(target=trio.run, args=(run,), daemon=True).start()
    if not ready.wait(20):
        raise SystemExit("the simulated backend did not start")
    return where["url"]


def start_nexus(group: procs.ProcessGroup, backend: str, tmp: Path, auth: bool) -> str:
    port = procs.free_port()
    tag = "on" if auth else "off"
    conf = tmp / f"nexus-{tag}.toml"
    conf.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nstate_file = "{tmp}/state-{tag}.json"\n'
        f'[store]\nurl = "sqlite:///{tmp}/nexus-{tag}.db"\n'
        '[discovery]\nenabled = false\nprobe_local = false\ninterfaces = ["127.0.0.1"]\n'
        '[logging]\nlevel = "warning"\n'
        f"[auth]\nenabled = {str(auth).lower()}\n"
        f'[[backends]]\nname = "sim"\nurl = "{backend}"\ntype = "vllm"\n'
        "price_input_per_mtok = 0.1\nprice_output_per_mtok = 0.2\n"
    )
    group.spawn([*procs.nexus_command(), "serve", "--config", str(conf)], log=tmp / f"{tag}.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"nexus ({tag}) did not start; see {tmp / f'{tag}.log'}")


def make_key(url: str) -> str:
    limits = {"name": "bench", "rpm": 10**6, "tpm": 10**9, "budget_usd": 10**6}
    response = httpx.post(url + "/admin/keys", json=limits, timeout=10)
    response.raise_for_status()
    key: str = response.json()["key"]
    return key


def timed(http: httpx.Client, url: str, headers: dict[str, str], stream: bool) -> float:
    start = time.perf_counter()
    if stream:
        with http.stream("POST", url + "/v1/chat/completions", headers=headers,
                         json={**BODY, "stream": True}) as response:  # fmt: skip
            response.raise_for_status()
            for _ in response.iter_bytes():
                pass
    else:
        response = http.post(url + "/v1/chat/completions", headers=headers, json=BODY)
        response.raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nexus-auth-"))
    group = procs.ProcessGroup()
    samples: dict[str, dict[str, list[float]]] = {
        mode: {"json": [], "stream": []} for mode in ("off", "on")
    }
    try:
        sim = SimulatedBackend(Flavor.VLLM, [SimModel(MODEL)], name="sim")
        backend = serve_in_thread(sim)
        urls = {"off": start_nexus(group, backend, tmp, False),
                "on": start_nexus(group, backend, tmp, True)}  # fmt: skip
        headers = {"off": {}, "on": {"authorization": f"Bearer {make_key(urls['on'])}"}}
        with httpx.Client(timeout=30) as http:
            for mode in ("off", "on"):  # warm up both
                for _ in range(50):
                    timed(http, urls[mode], headers[mode], stream=False)
            for _ in range(args.rounds):
                for kind in ("json", "stream"):
                    for _ in range(args.requests):
                        for mode in ("off", "on"):  # one each in turn: drift touches both
                            samples[mode][kind].append(
                                timed(http, urls[mode], headers[mode], kind == "stream")
                            )
    finally:
        group.close()
    rows = []
    for kind in ("json", "stream"):
        off = statistics.median(samples["off"][kind]) * 1000
        on = statistics.median(samples["on"][kind]) * 1000
        rows.append({"request": kind, "auth_off_p50_ms": round(off, 3),
                     "auth_on_p50_ms": round(on, 3), "added_ms": round(on - off, 3)})  # fmt: skip
    table = "\n".join(
        ["| request | auth off p50 | auth on p50 | added |", "| --- | --- | --- | --- |"]
        + [
            f"| {r['request']} | {r['auth_off_p50_ms']:.2f} ms | {r['auth_on_p50_ms']:.2f} ms "
            f"| {r['added_ms']:+.2f} ms |"
            for r in rows
        ]
    )
    print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y-%m-%d')}-auth.json"
    out.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/bench_auth.py", *sys.argv[1:]]),
        "machine": _environment.machine(),
        "nexus": _environment.nexus_source(),
        "workload": {"requests_per_round": args.requests, "rounds": args.rounds,
                     "max_tokens": 8, "sequential": True},
        "summary": rows,
        "markdown": table,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
