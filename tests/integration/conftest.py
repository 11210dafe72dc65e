"""Two real llama.cpp servers on loopback, and `nexus serve` in front of them.

Run through `nox -s integration`, which builds/fetches the server and model
first (see `llama_server.py`) and passes their paths in ``LLAMA_SERVER_BIN``
and ``LLAMA_MODEL``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import LlamaServer, NexusProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def llama_pair() -> Iterator[tuple[LlamaServer, LlamaServer]]:
    binary, model = os.environ.get("LLAMA_SERVER_BIN"), os.environ.get("LLAMA_MODEL")
    if not binary or not model:
        pytest.fail(
            "LLAMA_SERVER_BIN and LLAMA_MODEL are not set: run these tests with "
            "`nox -s integration`, which builds llama-server and fetches the model"
        )
    servers = (LlamaServer(Path(binary), Path(model)), LlamaServer(Path(binary), Path(model)))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def llamas(llama_pair: tuple[LlamaServer, LlamaServer]) -> tuple[LlamaServer, LlamaServer]:
    """Both servers, running (a test before may have killed one)."""
    for server in llama_pair:
        server.ensure_running()
    return llama_pair


@pytest.fixture
def start_nexus(tmp_path: Path) -> Iterator[object]:
    """``start_nexus(config_text)`` → a running `NexusProcess` (stopped after the test)."""
    started: list[NexusProcess] = []

    def start(config_text: str) -> NexusProcess:
        config = tmp_path / "nexus.toml"
        config.write_text(
            '[server]\nhost = "127.0.0.1"\nport = 0\n'
            f'state_file = "{tmp_path / "state.json"}"\n' + config_text
        )
        nexus = NexusProcess(config)
        started.append(nexus)
        return nexus

    yield start
    for nexus in started:
        assert nexus.stop() == 0
