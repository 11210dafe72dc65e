"""A real ``nexus serve`` process in front of simulated backends, for the agent tests."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from nexus_trio.testing import SimulatedBackend

NEXUS = [sys.executable, "-m", "nexus_trio"]
LISTENING = re.compile(rb"listening on (http://\S+)")


class Output:
    """A process's output, read to its end in the background so the pipe never fills."""

    def __init__(self) -> None:
        self.seen = bytearray()
        self.ended = False
        self._changed = trio.Event()

    async def run(self, stream: trio.abc.ReceiveStream) -> None:
        async with stream:
            async for data in stream:
                self.seen += data
                self._changed.set()
                self._changed = trio.Event()
        self.ended = True
        self._changed.set()

    async def wait_for(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        while (match := pattern.search(self.seen)) is None:
            if self.ended:
                raise AssertionError(f"never printed {pattern.pattern!r}:\n{self.text}")
            await self._changed.wait()
        return match

    @property
    def text(self) -> str:
        return self.seen.decode(errors="replace")


@dataclass
class Nexus:
    """A ``nexus serve`` process and what it has logged."""

    process: trio.Process
    log: Output
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
    log = Output()
    assert process.stderr is not None
    nursery.start_soon(log.run, process.stderr)
    with trio.fail_after(30):
        url = (await log.wait_for(LISTENING)).group(1).decode()
    return Nexus(process, log, url)
