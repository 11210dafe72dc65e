"""Sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`."""

from __future__ import annotations

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
    memory, routing, start-up; a table, results JSON and chart (not part of CI;
    `nox -s bench -- --quick` to try it)."""
    session.install(".", "matplotlib")
    session.run("python", "benchmarks/suite.py", *session.posargs)


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
