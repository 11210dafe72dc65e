"""`nexus` as users run it: a real process, real signals, real exit codes."""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import typer
from typer.testing import CliRunner

from nexus_trio.cli import app
from nexus_trio.config import TRACE, SchemaKey, Settings, schema_keys

NEXUS = [sys.executable, "-m", "nexus_trio"]
LISTENING = re.compile(rb"listening on (http://\S+)")


def run_nexus(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [*NEXUS, *args], cwd=cwd, capture_output=True, timeout=60, env=env, check=False
    )


def one_error_line(result: Any) -> str:
    """The one line a configuration error prints, after checking it is exit code 2."""
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("nexus: error: ")
    assert b"Traceback" not in result.stderr
    return str(lines[0].removeprefix("nexus: error: "))


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
    assert expected in one_error_line(result)


@pytest.mark.parametrize(
    ("toml", "env", "args", "expected"),
    [
        (
            "[server]\nport = 'eighty'\n",
            {},
            ["--port", "9000"],
            "nexus.toml: server.port must be an integer from 0 to 65535, got 'eighty'",
        ),
        (
            "[server]\nport = 'eighty'\n",
            {"NEXUS_PORT": "9000"},
            [],
            "nexus.toml: server.port must be an integer from 0 to 65535, got 'eighty'",
        ),
        (
            "[logging]\nlevel = 'loud'\n",
            {"NEXUS_LOG_LEVEL": "warn"},
            ["--log-level", "trace"],
            "nexus.toml: logging.level must be one of trace, debug",
        ),
        (
            None,
            {"NEXUS_PORT": "eighty"},
            ["--port", "9000"],
            "environment: NEXUS_PORT must be an integer from 0 to 65535, got 'eighty'",
        ),
        (
            None,
            {"NEXUS_LOG_LEVEL": "loud"},
            ["--log-level", "warn"],
            "environment: NEXUS_LOG_LEVEL must be one of trace, debug",
        ),
        # A flag's own mistake is one line too, not a usage message.
        (
            None,
            {},
            ["--port", "eighty"],
            "command line: server.port must be an integer from 0 to 65535, got 'eighty'",
        ),
    ],
    ids=[
        "file-under-flag",
        "file-under-env",
        "file-under-env-and-flag",
        "env-under-flag",
        "env-level-under-flag",
        "bad-flag",
    ],
)
def test_a_bad_layer_stops_serve_even_when_a_later_one_overrides_it(
    tmp_path: Path, toml: str | None, env: dict[str, str], args: list[str], expected: str
) -> None:
    if toml is not None:
        (tmp_path / "nexus.toml").write_text(toml)
    result = run_nexus("serve", *args, cwd=tmp_path, env={**os.environ, **env})
    assert one_error_line(result).startswith(expected)


# -- `nexus serve` in this process, up to the point where it would serve -----------------------


@pytest.fixture
def served(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, restore_logging: None
) -> list[Settings]:
    """The settings each `nexus serve` run with `CliRunner` would have served with; the
    server itself is not started. The working directory is an empty one."""
    seen: list[Settings] = []

    async def serve_nexus(settings: Settings, **_: object) -> None:
        seen.append(settings)

    monkeypatch.setattr("nexus_trio.supervisor.serve_nexus", serve_nexus)
    monkeypatch.chdir(tmp_path)
    return seen


def serve(*args: str, env: dict[str, str] | None = None) -> None:
    result = CliRunner().invoke(app, ["serve", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr


def flag_and_value(key: SchemaKey) -> tuple[list[str], object]:
    """Command-line words that set `key` to something other than its default, and that value."""
    first = key.flags[0]
    if "/" in first:  # --discovery/--no-discovery
        return [first.partition("/")[2]], not key.default
    if words := key.check.choices():
        return [first, words[-1].upper()], words[-1]
    if isinstance(key.default, int):
        return [first, str(key.default + 1)], key.default + 1
    return [first, "example"], "example"


FLAGGED = [key for key in schema_keys() if key.flags]


def test_serve_has_a_flag_for_each_key_the_schema_gives_one() -> None:
    assert {key.path for key in FLAGGED} >= {"server.port", "logging.level"}
    command: Any = typer.main.get_command(app)
    options = {
        tuple(param.opts + param.secondary_opts): param.help
        for param in command.commands["serve"].params
    }
    for key in FLAGGED:
        names = tuple(part for flag in key.flags for part in flag.split("/"))
        assert names in options, f"`nexus serve` has no option {names} for {key.path}"
        shown = options.pop(names)
        assert key.doc in shown
        assert key.env is None or f"(env: {key.env})" in shown
    assert set(options) == {("--config", "-c"), ("--demo",)}  # the others are not settings


@pytest.mark.parametrize("key", FLAGGED, ids=lambda key: key.path)
def test_each_serve_flag_sets_its_key(served: list[Settings], key: SchemaKey) -> None:
    words, value = flag_and_value(key)
    serve(*words)
    (settings,) = served
    assert functools.reduce(getattr, key.path.split("."), settings) == value


@pytest.mark.parametrize(
    ("env", "args", "toml", "level"),
    [
        ({"NEXUS_LOG_LEVEL": "warn"}, [], None, logging.WARNING),
        ({"NEXUS_LOG_LEVEL": "Trace"}, [], None, TRACE),
        ({}, ["--log-level", "WARN"], None, logging.WARNING),
        ({"NEXUS_LOG_LEVEL": "warn"}, ["--log-level", "trace"], None, TRACE),
        ({}, [], '[logging]\nlevel = "Warn"\n', logging.WARNING),
        ({}, [], '[logging]\nlevel = "TRACE"\n', TRACE),
    ],
    ids=["env-warn", "env-trace", "flag-warn", "flag-over-env", "file-warn", "file-trace"],
)
def test_serve_takes_the_log_levels_of_the_original_nexus(
    served: list[Settings],
    env: dict[str, str],
    args: list[str],
    toml: str | None,
    level: int,
) -> None:
    if toml is not None:
        Path("nexus.toml").write_text(toml)
    serve(*args, env=env)
    assert logging.getLogger().level == level


def test_serve_applies_component_levels_by_their_nexus_names(served: list[Settings]) -> None:
    Path("nexus.toml").write_text(
        '[logging]\nlevel = "warn"\ncomponent_levels = {registry = "trace", health = "WARN"}\n'
    )
    serve()
    assert served[0].logging.component_levels == {"registry": "trace", "health": "warning"}
    assert logging.getLogger("nexus.registry").level == TRACE
    assert logging.getLogger("nexus.health").level == logging.WARNING


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


async def test_serve_starts_with_the_log_levels_of_the_original_nexus(tmp_path: Path) -> None:
    """`NEXUS_LOG_LEVEL=warn` once stopped `nexus serve`; it and `--log-level trace` start it."""
    args = ["--host", "127.0.0.1", "--port", "0", "--no-discovery", "--no-health-check"]
    process = await trio.lowlevel.open_process(
        [*NEXUS, "serve", *args, "--log-level", "TRACE"],
        cwd=tmp_path,
        env={**os.environ, "NEXUS_LOG_LEVEL": "warn"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = bytearray()
    try:
        with trio.fail_after(15):
            await _wait_listening(process.stderr, seen)  # an INFO line: trace lets it through
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
