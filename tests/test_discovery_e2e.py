"""Zero configuration across processes: `nexus advertise` in one, `nexus serve` in another.

Real zeroconf in both, bound to 127.0.0.1: nothing is sent off this machine.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from nexus_trio.config import BackendType
from nexus_trio.discovery.advertise import advertise, service_info_for
from nexus_trio.testing import Flavor

from helpers import sim

NEXUS = [sys.executable, "-m", "nexus_trio"]
HELLO: dict[str, Any] = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "Hi"}]}


class Log:
    """A child's stderr, read as it comes, so a test can wait for a line."""

    def __init__(self) -> None:
        self.text = ""
        self._changed = trio.Event()

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        async for data in stream:
            self.text += data.decode(errors="replace")
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, pattern: str, *, after: int = 0, within: float = 15) -> re.Match[str]:
        with trio.fail_after(within):
            while (match := re.compile(pattern).search(self.text, after)) is None:
                await self._changed.wait()
        return match


@asynccontextmanager
async def child(nursery: trio.Nursery, *args: str) -> AsyncIterator[tuple[trio.Process, Log]]:
    process = await trio.lowlevel.open_process(
        [*NEXUS, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    log = Log()
    assert process.stderr is not None
    nursery.start_soon(log.pump, process.stderr)
    try:
        yield process, log
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_advertised_server_is_found_served_and_let_go(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = sim("office", Flavor.OLLAMA, "qwen2.5:7b")
    await nursery.start(server.serve)
    config = tmp_path / "nexus.toml"
    config.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\n'
        f'state_file = "{tmp_path / "state.json"}"\n'
        '[discovery]\ninterfaces = ["127.0.0.1"]\nprobe_local = false\n'
        "grace_period_seconds = 60\n"
    )
    async with child(nursery, "serve", "--config", str(config)) as (nexus, nexus_log):
        url = (await nexus_log.wait_for(r"listening on (http://\S+)")).group(1)
        announce = ["advertise", server.url, "--name", "office", "--interface", "127.0.0.1"]
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            async with child(nursery, *announce) as (advertiser, _):
                found = await nexus_log.wait_for(r"backend office \(ollama, \S+\) found by mdns")
                answer = await http.post("/v1/chat/completions", json=HELLO)
                assert answer.status_code == 200
                assert answer.headers["x-nexus-backend"] == "office"
                advertiser.send_signal(signal.SIGTERM)  # says goodbye on the way out
                with trio.fail_after(10):
                    assert await advertiser.wait() == 0
                await nexus_log.wait_for(r"backend office said goodbye", after=found.end())
            gone = await http.post("/v1/chat/completions", json=HELLO)
            assert gone.status_code == 503  # out of rotation at once, not after a timeout
            health = (await http.get("/health")).json()
            assert health["backends"]["office"]["status"] == "unhealthy"

            async with child(nursery, *announce):  # back within the grace period
                await nexus_log.wait_for(r"backend office is back")
                again = await http.post("/v1/chat/completions", json=HELLO)
                assert again.status_code == 200
                assert again.headers["x-nexus-backend"] == "office"
        nexus.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await nexus.wait() == 0


async def test_config_probe_and_mdns_find_one_backend(
    start_nexus: Any, nursery: trio.Nursery
) -> None:
    server = sim("office", Flavor.OLLAMA, "qwen2.5:7b")
    await nursery.start(server.serve)
    nexus = await start_nexus(
        [server],
        discovery={
            "enabled": True,
            "interfaces": ["127.0.0.1"],
            "probe_ports": [server.port],
            "probe_interval_seconds": 3600,
        },
    )
    registry = nexus.gateway.registry
    events = registry.subscribe()
    assert registry.get("office").sources == {"config", "probe"}  # the first probe round
    info = service_info_for(server.url, BackendType.OLLAMA, "office-announced")
    await nursery.start(advertise, [info], ["127.0.0.1"])
    with trio.fail_after(10):
        async for event in events:
            if event.kind == "sources" and "mdns" in event.detail:
                break
    assert [b.name for b in registry] == ["office"]  # config's name wins
    assert registry.get("office").sources == {"config", "probe", "mdns"}
