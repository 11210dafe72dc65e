"""Sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, warnings as errors."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install(".[test]", "mypy")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Nexus beside direct, nginx and LiteLLM on loopback: latency, throughput, streaming,
    memory, routing, start-up; a table, results JSON and chart; then the stream relay
    through each API Nexus speaks (not part of CI; `nox -s bench -- --quick` to try it)."""
    session.install(".", "matplotlib")
    session.run("python", "benchmarks/suite.py", *session.posargs)
    # What translation costs: the relay through /v1/messages and /v1/responses beside chat.
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run("python", "benchmarks/bench_dialects.py", *quick)
    # What keys cost a request: auth on beside off.
    session.run("python", "benchmarks/bench_auth.py", *(["--requests", "100"] if quick else []))


@nox.session
def soak(session: nox.Session) -> None:
    """10 minutes, 100 clients, random faults in a simulated fleet; gates on loss and RSS
    (not part of CI; `nox -s soak -- --quick` to try it)."""
    session.install(".")
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session
def integration(session: nox.Session) -> None:
    """Against two real llama.cpp servers running SmolLM2 (builds llama-server once, ~7 min)."""
    session.install(".[test]")
    output = session.run(
        "python", "tests/integration/llama_server.py", silent=True, success_codes=[0, 3]
    )
    found = dict(
        line.split("=", 1) for line in str(output).splitlines() if line.startswith("LLAMA_")
    )
    if "LLAMA_SERVER_BIN" not in found:
        session.skip(str(output).strip().splitlines()[-1])
    session.run("pytest", "tests/integration", "-m", "integration", *session.posargs, env=found)


@nox.session
def browser(session: nox.Session) -> None:
    """The dashboard in headless Chromium, driven by Playwright. Needs Debian's Chromium
    (`apt-get install chromium chromium-driver`, as .ci/run does): `playwright install`
    would download a browser build, which cannot be fetched here."""
    from pathlib import Path

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        session.error(f"{chromium} is missing: apt-get install chromium chromium-driver")
    session.install(".[test]", "playwright==1.65.*")
    session.run("pytest", "tests/browser", "-m", "browser", *session.posargs)


CLAUDE_CODE = "2.1.328"  # @anthropic-ai/claude-code, pinned: its request shape changes often


def _claude_code(session: nox.Session) -> Path:
    """The pinned Claude Code's native binary, npm-installed once into the user cache.

    ``--ignore-scripts``: the package's postinstall only links the platform package's
    binary into place, so the test runs that binary itself.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    prefix = base / "nexus-trio" / f"claude-code-{CLAUDE_CODE}"
    scope = prefix / "node_modules" / "@anthropic-ai"
    manifest = scope / "claude-code" / "package.json"
    installed = json.loads(manifest.read_text())["version"] if manifest.exists() else None
    if installed != CLAUDE_CODE or not list(scope.glob("claude-code-*/claude")):
        session.run(
            "npm", "install", "--prefix", str(prefix), "--ignore-scripts", "--no-audit",
            "--no-fund", "--loglevel", "error", f"@anthropic-ai/claude-code@{CLAUDE_CODE}",
            external=True,
        )  # fmt: skip
    # npm installs the platform's package; an older npm, blind to `libc`, adds the musl one
    binaries = sorted(scope.glob("claude-code-*/claude"), key=lambda p: "-musl" in p.parent.name)
    if not binaries:
        session.error(f"no native claude binary under {scope}: is this platform supported?")
    return binaries[0]


@nox.session
def agents(session: nox.Session) -> None:
    """Claude Code itself (`claude -p`, pinned) through `nexus serve` in front of simulated
    backends, inside a network namespace that has only loopback (`unshare -n`: needs root,
    `ip` from iproute2 and npm; not in the default sessions)."""
    if os.geteuid() != 0:
        session.error("agents runs Claude Code in its own network namespace: run it as root")
    for tool in ("unshare", "ip", "npm"):
        if shutil.which(tool) is None:
            session.error(f"{tool} is missing (apt-get install util-linux iproute2 npm)")
    session.install(".[test]")
    claude = _claude_code(session)
    # Everything the tests start (backends, nexus serve, claude) lives in this namespace,
    # whose only interface is loopback: Claude Code can reach nothing else.
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        session.error(f"cannot create a network namespace: {probe.stderr.strip()}")
    session.run(
        "unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
        "pytest", "tests/agents", "-m", "agents", *session.posargs,
        env={"CLAUDE_BIN": str(claude)}, external=True,
    )  # fmt: skip
