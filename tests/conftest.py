"""Shared fixtures: Nexus served in-process on loopback, in front of simulated backends."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypothesis import is_hypothesis_test
from hypothesis import strategies as st

from nexus_trio.config import settings_from_mapping
from nexus_trio.supervisor import serve_nexus
from nexus_trio.testing import SimulatedBackend

from helpers import Running, loopback_clock, nexus_config


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build Hypothesis's Unicode tables before any test's input generation is timed.

    The first strategy that draws text has Hypothesis work out which characters exist and
    which encode to UTF-8, and keep the tables in ``.hypothesis/``. On a fresh checkout, as
    in CI, that takes about two seconds, timed as that test's input generation: past the
    one-second health check, which then fails a test that did nothing wrong
    (HypothesisWorks/hypothesis#1153). Checking a text strategy builds them, once.
    """
    if any(is_hypothesis_test(getattr(item, "obj", None)) for item in session.items):
        st.text().validate()


@pytest.fixture(name="loopback_clock")
def _loopback_clock() -> trio.testing.MockClock:
    """Virtual time over real loopback sockets: see `helpers.loopback_clock`."""
    return loopback_clock()


@pytest.fixture(autouse=True)
def _clean_nexus_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NEXUS_* setting from the developer's shell leaks into a test, and no `nexus`
    a test starts keeps its state (backends, keys, usage) in the user's own directory."""
    for name in list(os.environ):
        if name.startswith("NEXUS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
async def start_nexus(nursery: trio.Nursery) -> AsyncIterator[Any]:
    """``await start_nexus(backends, routing={...})`` → a serving `Running`.

    Starts the simulated backends (port 0), then Nexus in front of them with
    the config `helpers.nexus_config` builds from the keyword arguments.
    Everything stops when the test ends.
    """
    running: list[Running] = []

    async def start(
        backends: Sequence[SimulatedBackend],
        *,
        environ: dict[str, str] | None = None,
        backend_options: dict[str, dict[str, Any]] | None = None,
        **sections: dict[str, Any],
    ) -> Running:
        for backend in backends:
            if not backend.accepting:  # a test may have started it already
                await nursery.start(backend.serve)
        environ = environ or {}
        settings = settings_from_mapping(
            nexus_config(backends, backend_options, **sections), environ=environ
        )
        stop = trio.Event()
        gateway = await nursery.start(
            partial(serve_nexus, settings, environ=environ, handle_signals=False, stop=stop)
        )
        nexus = Running(gateway, httpx.AsyncClient(base_url=gateway.url, timeout=30), stop)
        running.append(nexus)
        return nexus

    yield start
    for nexus in running:
        await nexus.aclose()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that call `configure_logging`: the root logger's handlers and level, and
    every other logger's level, are put back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {name: logger.level for name, logger in _loggers().items()}
    yield
    root.handlers[:], root.level = saved
    for name, logger in _loggers().items():
        logger.setLevel(levels.get(name, logging.NOTSET))


def _loggers() -> dict[str, logging.Logger]:
    return {
        name: logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
