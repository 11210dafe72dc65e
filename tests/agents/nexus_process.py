"""A real ``nexus serve`` process in front of simulated backends, for the agent tests."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from nexus_trio.testing import SimulatedBackend

from helpers import LISTENING, NEXUS, ProcessOutput


@dataclass
class Nexus:
    """A ``nexus serve`` process and what it has logged."""

    process: trio.Process
    log: ProcessOutput
    url: str


def nexus_toml(backends: Sequence[SimulatedBackend], aliases: Mapping[str, str]) -> str:
    """A config for these backends (already serving) on loopback, no discovery."""
    lines = [
        "[server]", 'host = "127.0.0.1"', "port = 0", "",
        "[discovery]", "enabled = false", 'interfaces = ["127.0.0.1"]', "probe_local = false",
        "", "[routing.aliases]",
        *(f'"{name}" = "{target}"' for name, target in aliases.items()),
    ]  # fmt: skip
    for backend in backends:
        lines += [
            "", "[[backends]]", f'name = "{backend.name}"', f'url = "{backend.url}"',
            f'type = "{backend.flavor.value}"',
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


async def start_nexus_process(
    nursery: trio.Nursery,
    directory: Path,
    backends: Sequence[SimulatedBackend],
    aliases: Mapping[str, str],
) -> Nexus:
    """Start ``backends`` (if not serving yet), then ``nexus serve`` in front of them with
    its config in ``directory``; returns once it listens. Both stop with ``nursery``."""
    for backend in backends:
        if not backend.accepting:
            await nursery.start(backend.serve)
    config = directory / "nexus.toml"
    config.write_text(nexus_toml(backends, aliases))
    process = await nursery.start(
        partial(
            trio.run_process,
            [*NEXUS, "serve", "--config", str(config)],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
    )
    log = ProcessOutput()
    assert process.stderr is not None
    nursery.start_soon(log.run, process.stderr)
    with trio.fail_after(30):
        url = (await log.wait_for(LISTENING)).group(1).decode()
    return Nexus(process, log, url)
