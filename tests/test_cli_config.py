"""`nexus config init` and `nexus completions`: files and scripts a user keeps."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_trio.cli import COMPLETE_VAR, app
from nexus_trio.cli.config import render_config
from nexus_trio.config import Settings, load_settings, schema_keys, settings_from_mapping

NEXUS = [sys.executable, "-m", "nexus_trio"]
BIN = Path(sys.executable).parent


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("minimal", [False, True], ids=["full", "minimal"])
def test_the_file_loads_back_to_the_defaults(minimal: bool) -> None:
    text = render_config(minimal=minimal)
    assert settings_from_mapping(tomllib.loads(text)) == Settings()
    # Whatever the shell reads it with, it stays plain text of sane width.
    assert text.isascii()
    assert max(len(line) for line in text.splitlines()) <= 100


def shown_keys(text: str) -> set[str]:
    """Dotted paths of the tables and keys in `text`, live or commented out."""
    seen: set[str] = set()
    table = ""
    for line in text.splitlines():
        line = line.removeprefix("# ")
        if header := re.fullmatch(r"\[\[?([^\]\s]+)\]\]?", line):
            # `backends.models."llama3:8b"` is an entry of the map `backends.models`
            table = re.sub(r'\."[^"]*"$', "", header.group(1))
            seen.add(table)
        elif key := re.fullmatch(r"([A-Za-z0-9_-]+) = .+", line):
            seen.add(f"{table}.{key.group(1)}")  # ("gpt-4o" = ... is an alias, not a key)
    return seen


def test_the_full_file_shows_every_key() -> None:
    text = render_config()
    assert shown_keys(text) == {key.path for key in schema_keys()}
    # The environment variable of a key is named next to it, and so are the choices.
    assert "[env: NEXUS_PORT]" in text
    assert "One of smart, round_robin" in text
    # Every comment is a description from the schema.
    assert "# The least severe level written" in text


def test_the_minimal_file_has_host_port_and_a_backend_example() -> None:
    text = render_config(minimal=True)
    live = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert live == ["[server]", 'host = "0.0.0.0"', "port = 8000"]
    assert "# [[backends]]" in text


@pytest.mark.parametrize("minimal", [False, True], ids=["full", "minimal"])
def test_the_backend_example_is_valid_once_uncommented(minimal: bool) -> None:
    text = render_config(minimal=minimal)
    block = text[text.index("# [[backends]]") :].splitlines()
    uncommented = "\n".join(line.removeprefix("#").removeprefix(" ") for line in block)
    settings = settings_from_mapping(tomllib.loads(uncommented))
    (backend,) = settings.backends
    assert backend.name == "gpu-box"
    assert backend.models["llama3:8b"].capabilities == frozenset({"tools"})


# -- the command ------------------------------------------------------------------------------


def test_init_writes_nexus_toml_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke("config", "init")
    assert (code, err) == (0, "")
    path = tmp_path / "nexus.toml"
    assert str(path) in one_line(out)
    assert "`nexus serve` in this directory reads it" in out
    # `nexus serve` here would run on exactly the defaults.
    loaded = load_settings(environ={})
    assert loaded == dataclasses.replace(Settings(), config_path=path)


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("# my precious settings\n")
    code, out, err = invoke("config", "init", "--output", str(path))
    assert code == 1
    assert out == ""
    assert "already exists" in one_line(err)
    assert "--force" in err
    assert path.read_text() == "# my precious settings\n"

    code, out, err = invoke("config", "init", "--output", str(path), "--force", "--minimal")
    assert (code, err) == (0, "")
    assert f"nexus serve --config {path}" in one_line(out)
    assert path.read_text() == render_config(minimal=True)


def test_init_to_stdout_prints_only_the_file() -> None:
    code, out, err = invoke("config", "init", "--output", "-")
    assert (code, err) == (0, "")
    assert out == render_config()


def test_init_into_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    code, _, err = invoke("config", "init", "-o", str(tmp_path / "no" / "such" / "dir.toml"))
    assert code == 1
    assert "cannot write" in one_line(err)


def test_init_as_a_process(tmp_path: Path) -> None:
    """The real entry point, as a user runs it: the file, the message, the exit codes."""
    first = subprocess.run(
        [*NEXUS, "config", "init", "--minimal"], cwd=tmp_path, capture_output=True, check=False
    )
    assert first.returncode == 0, first.stderr
    assert one_line(first.stdout.decode()).startswith("Wrote ")
    again = subprocess.run(
        [*NEXUS, "config", "init"], cwd=tmp_path, capture_output=True, check=False
    )
    assert again.returncode == 1
    assert one_line(again.stderr.decode()).startswith("nexus: error: nexus.toml already exists")


# -- shell completion -------------------------------------------------------------------------


def shell_env() -> dict[str, str]:
    if not (BIN / "nexus").exists():
        pytest.skip("the `nexus` console script is not installed next to this Python")
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture
def bash() -> str:
    found = shutil.which("bash")
    if found is None:
        pytest.skip("bash is not installed")
    return found


def test_bash_script_registers_the_completion(bash: str) -> None:
    result = subprocess.run(
        [bash, "-c", "source <(nexus completions bash) && complete -p nexus"],
        env=shell_env(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"_nexus_completion nexus" in result.stdout


@pytest.mark.parametrize(
    ("words", "cword", "expected"),
    [
        ("nexus back", 1, {"backends"}),
        ("nexus backends ", 2, {"list", "add", "remove"}),
        ("nexus backends list --st", 3, {"--status"}),
        ("nexus backends list --status ", 4, {"healthy", "unhealthy", "unknown", "ejected"}),
        ("nexus config init --m", 3, {"--minimal"}),
        ("nexus completions ", 2, {"bash", "zsh", "fish"}),
        ("nexus serve --log-level ", 3, {"trace", "debug", "info", "warning", "error"}),
        ("nexus serve --log-format j", 3, {"json"}),
    ],
)
def test_the_completion_request_answers(words: str, cword: int, expected: set[str]) -> None:
    env = {
        **shell_env(),
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
        COMPLETE_VAR: "bash_complete",
    }
    result = subprocess.run(["nexus"], env=env, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    offered = {line.partition(",")[2] for line in result.stdout.decode().splitlines()}
    assert expected <= offered


def test_bash_completes_through_the_script(bash: str) -> None:
    """The whole loop: bash runs the function the script defines, which runs nexus."""
    script = (
        "source <(nexus completions bash)\n"
        'COMP_WORDS=(nexus backends ""); COMP_CWORD=2\n'
        "_nexus_completion nexus\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run([bash, "-c", script], env=shell_env(), capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["list", "add", "remove"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_every_script_names_the_completion_variable(shell: str) -> None:
    code, out, err = invoke("completions", shell)
    assert (code, err) == (0, "")
    assert out.strip()
    assert f"{COMPLETE_VAR}={shell}_complete" in out


def test_an_unknown_completion_request_is_one_line() -> None:
    env = {**os.environ, COMPLETE_VAR: "tcsh_complete"}
    result = subprocess.run(NEXUS, env=env, capture_output=True, check=False)
    assert result.returncode == 1
    assert "unknown completion request" in one_line(result.stderr.decode())
