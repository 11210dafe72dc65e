"""`nexus` as users run it: a real process, real signals, real exit codes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

NEXUS = [sys.executable, "-m", "nexus_trio"]
LISTENING = re.compile(rb"listening on (http://\S+)")


def run_nexus(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [*NEXUS, *args], cwd=cwd, capture_output=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize(
    ("toml", "args", "expected"),
    [
        (None, ["--config", "missing.toml"], "config file 'missing.toml' does not exist"),
        ("[server]\nprot = 1\n", [], "did you mean 'server.port'"),
        ("[server]\nport = 'eighty'\n", [], "server.port"),
        ("[routing.aliases]\na = 'b'\nb = 'a'\n", [], "alias cycle"),
        ("[server\n", [], "nexus.toml"),
        (None, ["--port", "99999"], "port"),
    ],
    ids=["missing-file", "unknown-key", "bad-value", "alias-cycle", "bad-toml", "bad-flag"],
)
def test_config_errors_exit_2_with_one_line(
    tmp_path: Path, toml: str | None, args: list[str], expected: str
) -> None:
    if toml is not None:
        (tmp_path / "nexus.toml").write_text(toml)
    result = run_nexus("serve", *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("nexus: error: ")
    assert expected in lines[0]
    assert b"Traceback" not in result.stderr


def test_version_and_help(tmp_path: Path) -> None:
    version = run_nexus("version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.decode().startswith("nexus-trio ")
    help_ = run_nexus("serve", "--help", cwd=tmp_path)
    assert help_.returncode == 0
    for flag in (
        "--config",
        "--host",
        "--port",
        "--log-level",
        "--log-format",
        "--demo",
        "--no-discovery",
        "--no-health-check",
    ):
        assert flag in help_.stdout.decode()


async def _wait_listening(stderr: trio.abc.ReceiveStream, seen: bytearray) -> str:
    while (match := LISTENING.search(seen)) is None:
        data = await stderr.receive_some()
        if not data:
            raise AssertionError(f"nexus exited before listening:\n{seen.decode()}")
        seen += data
    return match.group(1).decode()


async def test_demo_serves_then_drains_on_sigterm(tmp_path: Path) -> None:
    process = await trio.lowlevel.open_process(
        [*NEXUS, "serve", "--demo", "--host", "127.0.0.1", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = bytearray()
    try:
        with trio.fail_after(15):
            url = await _wait_listening(process.stderr, seen)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            health = (await http.get("/health")).json()
            assert health["status"] == "healthy"
            assert set(health["backends"]) == {"demo-ollama", "demo-vllm", "demo-llamacpp"}
            models = {m["id"] for m in (await http.get("/v1/models")).json()["data"]}
            assert {"llama3:8b", "llava:7b", "qwen2.5-coder:7b", "smollm2:135m"} <= models
            hello = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hello!"}]}
            answer = await http.post("/v1/chat/completions", json=hello)
            assert answer.status_code == 200
            assert answer.json()["choices"][0]["message"]["content"]

            # SIGTERM while a stream is in flight: the stream still ends properly.
            async with http.stream(
                "POST", "/v1/chat/completions", json={**hello, "stream": True}
            ) as stream:
                lines = stream.aiter_lines()
                async for line in lines:
                    if line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                        break
                process.send_signal(signal.SIGTERM)
                rest = [line async for line in lines if line]
            assert rest[-1] == "data: [DONE]"
        with trio.fail_after(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
