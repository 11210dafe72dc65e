"""Routing for the KV cache, measured on real llama.cpp: conversation affinity beside
round robin, in front of two llama-servers running SmolLM2-135M (prompt cache on, two
slots each).

The workload: eight conversations of six turns each, all under one shared system prompt
of about 1,500 tokens (counted by the server's ``/tokenize``), each turn a short question
with the assistant's own previous answers in the history (greedy, 24 tokens at most),
four conversations at a time. Per request: the time to the first content chunk and to the
end of the stream, the backend that served it (``X-Nexus-Backend``) and llama.cpp's own
``timings`` (``prompt_n`` tokens evaluated, ``cache_n`` taken from the cache).

Modes run one after another, round robin first and last (``round_robin``, ``affinity``,
``round_robin``) so that a drift of the machine shows as a difference between the two
baselines; the llama-servers are restarted before every mode, so each starts cold.
Until ``[routing.affinity]`` exists, the second mode is ``smart`` routing as it is.

    python benchmarks/bench_affinity.py [--conversations 8] [--turns 6] [--at-once 4]

Writes benchmarks/results/<date>-affinity.json (and -affinity.png with matplotlib).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import _contenders as procs
import _environment
import httpx
import trio

RESULTS: Final = Path(__file__).parent / "results"
FINDER: Final = Path(__file__).parent.parent / "tests" / "integration" / "llama_server.py"
ALIAS: Final = "smollm2"
CONTEXT: Final = 8192  # two slots of 4,096: the system prompt plus six turns fit in one
SYSTEM_TOKENS: Final = 1500
MAX_TOKENS: Final = 24
START_SECONDS: Final = 60.0

SUBJECTS: Final = ("The harbour", "A lighthouse keeper", "The northern ferry", "Every tide table",
                   "The old customs house", "A fishing cooperative", "The coast guard",
                   "The weather station", "A salt marsh", "The breakwater")  # fmt: skip
ACTIONS: Final = ("records", "explains", "depends on", "changes with", "is measured against",
                  "was rebuilt after", "keeps a log of", "warns sailors about")  # fmt: skip
OBJECTS: Final = ("the spring tides", "the winter storms", "the shipping lanes",
                  "the depth of the channel", "the fog signals", "the moorings",
                  "the pilot boats", "the harbour dues", "the cargo manifests")  # fmt: skip
TOPICS: Final = ("tides", "fog", "storms", "ferries", "fish", "lighthouses", "salt", "maps")
QUESTIONS: Final = ("What do you know about {}?", "Why do {} matter here?",
                    "Who deals with {} each day?", "How have {} changed?",
                    "Name one risk linked to {}.", "Sum up {} in a few words.")  # fmt: skip


def system_prompt(count_tokens: Any) -> tuple[str, int]:
    """A deterministic system prompt of about ``SYSTEM_TOKENS`` tokens (and its count):
    varied sentences, so no run of text repeats for the tokenizer to compress."""
    sentences = [
        "You are the archivist of a small port town. Answer in one short sentence.",
    ]
    index = 0
    while True:
        text = " ".join(sentences)
        tokens = count_tokens(text)
        if tokens >= SYSTEM_TOKENS:
            return text, tokens
        for _ in range(20):
            s = SUBJECTS[index % len(SUBJECTS)]
            a = ACTIONS[(index // len(SUBJECTS)) % len(ACTIONS)]
            o = OBJECTS[(index * 7) % len(OBJECTS)]
            sentences.append(f"Entry {index}: {s} {a} {o}.")
            index += 1


def question(conversation: int, turn: int) -> str:
    topic = TOPICS[conversation % len(TOPICS)]
    return f"({conversation}.{turn}) " + QUESTIONS[turn % len(QUESTIONS)].format(topic)


# -- processes -------------------------------------------------------------------------------


def locate_llama() -> tuple[str, str]:
    """llama-server and the model, built/fetched once per machine by the integration
    tests' own script."""
    done = subprocess.run([sys.executable, str(FINDER)], capture_output=True, text=True)
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if "LLAMA_SERVER_BIN" not in found:
        raise SystemExit(f"no llama-server: {done.stdout.strip()} {done.stderr.strip()[-500:]}")
    return found["LLAMA_SERVER_BIN"], found["LLAMA_MODEL"]


def wait_until(url: str, ok: Any, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200 and ok(response.json()):
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} was not ready within {START_SECONDS:g} s")


def start_llamas(
    group: procs.ProcessGroup, binary: str, model: str, tmp: Path, tag: str
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """Two llama-servers, one pinned to each core; prompt caching is llama.cpp's default
    (``--cache-prompt``), and requests leave ``cache_prompt`` at its default, true."""
    servers = []
    for core in (0, 1):
        port = procs.free_port()
        process = group.spawn(
            [*procs.pin(core), binary, "-m", model, "--alias", ALIAS, "--host", "127.0.0.1",
             "--port", str(port), "-c", str(CONTEXT), "--parallel", "2", "-t", "1",
             "--cache-prompt"],
            log=tmp / f"llama-{tag}-{core}.log",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_until(url + "/health", lambda j: j.get("status") == "ok", process, "llama-server")
        servers.append((url, process))
    return servers


def affinity_exists() -> bool:
    from nexus_trio.config.schema import RoutingSettings

    return any(f.name == "affinity" for f in dataclasses.fields(RoutingSettings))


def mode_config(mode: str, has_affinity: bool) -> str:
    """The ``[routing]`` part of Nexus's config for ``mode``."""
    if mode == "round_robin":
        text = '[routing]\nstrategy = "round_robin"\n'
        return text + ("[routing.affinity]\nenabled = false\n" if has_affinity else "")
    text = '[routing]\nstrategy = "smart"\n'
    return text + ("[routing.affinity]\nenabled = true\n" if has_affinity else "")


def start_nexus(
    group: procs.ProcessGroup, urls: list[str], routing: str, tmp: Path, tag: str
) -> str:
    port = procs.free_port()
    text = (
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nstate_file = "{tmp}/state-{tag}.json"\n'
        '[discovery]\nenabled = false\nprobe_local = false\ninterfaces = ["127.0.0.1"]\n'
        '[logging]\nlevel = "warning"\n'
        "[health_check]\ninterval_seconds = 1.0\nrecovery_threshold = 1\n"
        "[routing.timeouts]\nfirst_token_seconds = 120.0\nstream_idle_seconds = 60.0\n" + routing
    )
    for i, url in enumerate(urls):
        text += f'[[backends]]\nname = "llama-{i}"\nurl = "{url}"\ntype = "llamacpp"\n'
    conf = tmp / f"nexus-{tag}.toml"
    conf.write_text(text)
    process = group.spawn(
        [*procs.nexus_command(), "serve", "--config", str(conf)], log=tmp / f"nexus-{tag}.log"
    )
    url = f"http://127.0.0.1:{port}"

    def both_healthy(j: dict[str, Any]) -> bool:
        return sum(b.get("status") == "healthy" for b in j.get("backends", [])) == len(urls)

    wait_until(url + "/admin/backends", both_healthy, process, "nexus")
    return url


# -- the workload ----------------------------------------------------------------------------


async def ask(http: httpx.AsyncClient, url: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    """One streamed turn: its answer, time to first content and to the end, the backend,
    and llama.cpp's ``timings`` from the final chunk."""
    body = {"model": ALIAS, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    text, first, timings = "", None, {}
    start = time.perf_counter()
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        backend = response.headers.get("x-nexus-backend", "")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            timings = chunk.get("timings") or timings
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece and first is None:
                    first = time.perf_counter() - start
                text += piece
    total = time.perf_counter() - start
    return {"answer": text, "ttft_s": first if first is not None else total, "total_s": total,
            "backend": backend, "prompt_n": timings.get("prompt_n"),
            "cache_n": timings.get("cache_n")}  # fmt: skip


async def run_mode(url: str, system: str, conversations: int, turns: int, at_once: int) -> Any:
    """Every conversation's turns in order, ``at_once`` conversations at a time."""
    records: list[dict[str, Any]] = []
    limit = trio.Semaphore(at_once)

    async def converse(c: int, http: httpx.AsyncClient) -> None:
        async with limit:
            messages = [{"role": "system", "content": system}]
            for t in range(turns):
                messages.append({"role": "user", "content": question(c, t)})
                record = await ask(http, url, messages)
                messages.append({"role": "assistant", "content": record.pop("answer")})
                records.append({"conversation": c, "turn": t, **record})

    limits = httpx.Limits(max_connections=at_once, max_keepalive_connections=at_once)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, limits=limits) as http, trio.open_nursery() as n:
        for c in range(conversations):
            n.start_soon(converse, c, http)
    return records, time.perf_counter() - start


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ttft = [r["ttft_s"] for r in records]
    later = [r for r in records if r["turn"] > 0]
    sticky = sum(
        len({r["backend"] for r in records if r["conversation"] == c}) == 1
        for c in {r["conversation"] for r in records}
    )
    return {
        "requests": len(records),
        "ttft_p50_ms": 1000 * statistics.median(ttft),
        "ttft_p99_ms": 1000 * quantile(ttft, 0.99),
        "total_p50_ms": 1000 * statistics.median(r["total_s"] for r in records),
        "wall_s": wall,
        "later_turns_ttft_p50_ms": 1000 * statistics.median(r["ttft_s"] for r in later),
        "prompt_tokens_evaluated": sum(r["prompt_n"] or 0 for r in records),
        "prompt_tokens_cached": sum(r["cache_n"] or 0 for r in records),
        "conversations_on_one_backend": sticky,
    }


COLUMNS: Final = (("mode", "{:<14}"), ("ttft_p50_ms", "{:>9.0f}"), ("ttft_p99_ms", "{:>9.0f}"),
                  ("total_p50_ms", "{:>9.0f}"), ("wall_s", "{:>7.1f}"),
                  ("prompt_tokens_evaluated", "{:>9d}"), ("prompt_tokens_cached", "{:>9d}"),
                  ("conversations_on_one_backend", "{:>6d}"))  # fmt: skip
HEADERS: Final = ("mode", "TTFT p50 ms", "TTFT p99 ms", "total p50 ms", "wall s",
                  "prompt tokens evaluated", "prompt tokens cached",
                  "conversations on one backend")  # fmt: skip


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        cells = [fmt.format(row[key]).strip() for key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_chart(rows: list[dict[str, Any]], out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [r["mode"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["ttft_p50_ms"] for r in rows], 0.4, label="TTFT p50")
    ax.bar([i + 0.2 for i in x], [r["ttft_p99_ms"] for r in rows], 0.4, label="TTFT p99")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("ms")
    ax.set_title("Time to first token, 2 llama-servers (SmolLM2), 8 conversations x 6 turns")
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--at-once", type=int, default=4)
    args = parser.parse_args()
    binary, model = locate_llama()
    has_affinity = affinity_exists()
    second = "affinity" if has_affinity else "smart"
    modes = ["round_robin", second, "round_robin"]
    tmp = Path(tempfile.mkdtemp(prefix="nexus-affinity-"))
    rows, runs, system_tokens = [], [], 0
    for index, mode in enumerate(modes):
        group = procs.ProcessGroup()
        try:
            tag = f"{index}-{mode}"
            llamas = start_llamas(group, binary, model, tmp, tag)
            urls = [u for u, _ in llamas]

            def count(text: str, url: str = urls[0]) -> int:
                r = httpx.post(url + "/tokenize", json={"content": text}, timeout=30)
                return len(r.json()["tokens"])

            system, system_tokens = system_prompt(count)
            nexus = start_nexus(group, urls, mode_config(mode, has_affinity), tmp, tag)
            records, wall = trio.run(
                run_mode, nexus, system, args.conversations, args.turns, args.at_once
            )
        finally:
            group.close()
        row = {"mode": mode if index < 2 else f"{mode} (again)", **summarize(records, wall)}
        rows.append(row)
        runs.append({"mode": mode, "routing_config": mode_config(mode, has_affinity),
                     "summary": row, "requests": records})  # fmt: skip
        print(" ".join(fmt.format(row[key]) for key, fmt in COLUMNS), flush=True)
    print(markdown(rows))
    baseline = statistics.mean(r["ttft_p50_ms"] for r in rows if r["mode"].startswith("round"))
    ratio = rows[1]["ttft_p50_ms"] / baseline
    print(f"{second}: p50 TTFT {ratio:.2f}x round robin's (target: 0.5x or less)")
    RESULTS.mkdir(exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d')}-affinity"
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/bench_affinity.py", *sys.argv[1:]]),
        "machine": {**_environment.machine(),
                    "pinning": "llama-servers on cores 0 and 1 (one each); nexus and the "
                               "client unpinned" if procs.pin(0) else "none"},
        "nexus": _environment.nexus_source(),
        "llama_server": procs.version_of([binary, "--version"]),
        "model": Path(model).name,
        "workload": {"conversations": args.conversations, "turns": args.turns,
                     "at_once": args.at_once, "system_prompt_tokens": system_tokens,
                     "max_tokens": MAX_TOKENS, "temperature": 0, "context": CONTEXT,
                     "parallel": 2, "threads": 1},
        "affinity_setting_exists": has_affinity,
        "summary": rows,
        "ttft_p50_ratio_vs_round_robin": ratio,
        "markdown": markdown(rows),
        "runs": runs,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")
    if write_chart(rows, RESULTS / f"{stem}.png"):
        print(f"wrote {RESULTS / f'{stem}.png'}")


if __name__ == "__main__":
    main()
