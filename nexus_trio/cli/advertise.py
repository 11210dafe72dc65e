"""``nexus advertise``: announce a server that does not announce itself.

No major inference server speaks mDNS today, so a server on another machine
is invisible to Nexus's discovery until something announces it. This runs
beside the server (or anywhere on its network), announces it on
``_llm._tcp`` (``_ollama._tcp`` for Ollama) until stopped, and says goodbye on
the way out, so every Nexus on the network finds it and then lets it go.

The command starts without loading trio or zeroconf, like the client commands: they are
imported where the announcing begins.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import httpx
import typer

from nexus_trio.cli._app import fail, leaves
from nexus_trio.config import BackendType, load_settings
from nexus_trio.errors import ConfigError

__all__ = ["NothingThere", "advertise_command", "run_advertise"]

log = logging.getLogger("nexus.advertise")


class NothingThere(Exception):
    """No LLM server answers at the URL, and its type was not given."""


async def _detect(url: str) -> tuple[BackendType, str | None]:
    from nexus_trio.backends.detect import fingerprint

    async with httpx.AsyncClient(trust_env=False) as client:
        found = await fingerprint(client, url)
    if found is None:
        raise NothingThere(
            f"no LLM server answers at {url}; start it first, or pass --type to announce it anyway"
        )
    return found.type, found.version


async def run_advertise(
    url: str,
    kind: BackendType | None,
    name: str | None,
    interfaces: Sequence[str],
) -> None:
    """Announce ``url`` until SIGINT/SIGTERM, then say goodbye.

    Raises:
        NothingThere: ``kind`` was not given and nothing answers at ``url``.
        ConfigError: the URL or name cannot be announced.
    """
    import trio

    from nexus_trio.discovery.advertise import advertise, service_info_for

    version = None
    if kind is None:
        kind, version = await _detect(url)
    host = httpx.URL(url).host or "server"
    # service_info_for may resolve a host name: blocking, so off the trio thread.
    info = await trio.to_thread.run_sync(
        lambda: service_info_for(url, kind, name or f"{kind.value}-{host}", version=version)
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            names = await nursery.start(advertise, [info], interfaces)
            where = ", ".join(interfaces) or "every interface"
            print(
                f"Announcing {', '.join(names)} ({kind.value}) at {url} on {where}. Ctrl+C stops.",
                flush=True,
            )
            await anext(signals)
            nursery.cancel_scope.cancel()  # advertise says goodbye as it stops
    print("Stopped announcing.", flush=True)


def advertise_command(
    url: Annotated[str, typer.Argument(help="The server, e.g. http://192.168.1.20:8080")],
    type_: Annotated[
        BackendType | None,
        typer.Option("--type", help="What it is; detected when left out.", case_sensitive=False),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Instance name (default: TYPE-HOST).")
    ] = None,
    interface: Annotated[
        list[str] | None,
        typer.Option(
            "--interface",
            help="Announce on this address only (repeatable). Default: discovery.interfaces "
            "from the config, else every interface.",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML file to read defaults from.")
    ] = None,
) -> None:
    """Announce a server over mDNS until stopped, so every Nexus on the network finds it."""
    try:
        settings = load_settings(config_path=config)
    except ConfigError as exc:
        fail(exc.message)
    import trio

    from nexus_trio.logs import configure_logging

    configure_logging(settings.logging)
    interfaces = tuple(interface or settings.discovery.interfaces)
    try:
        trio.run(run_advertise, url, type_, name, interfaces)
    except* NothingThere as group:
        typer.echo(f"nexus: error: {leaves(group)[0]}", err=True)
        raise typer.Exit(code=1) from None
    except* ConfigError as group:
        fail(str(leaves(group)[0]))
