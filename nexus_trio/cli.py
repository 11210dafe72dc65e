"""The ``nexus`` command.

Every flag maps to one settings key; a flag left out does not override the
environment or the file (precedence: flags > ``NEXUS_*`` > TOML > defaults).
A configuration error prints one line and exits with code 2.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from nexus_trio import __version__
from nexus_trio.config import LogFormat, load_settings
from nexus_trio.errors import ConfigError
from nexus_trio.gateway import Gateway

__all__ = ["app", "main"]

app = typer.Typer(
    name="nexus",
    help="One OpenAI-compatible endpoint in front of every LLM server on your network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    typer.echo(f"nexus: error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML file to load [env: NEXUS_CONFIG; default: ./nexus.toml when it exists].",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [env: NEXUS_HOST].")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="Port to listen on [env: NEXUS_PORT].")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug|info|warning|error [env: NEXUS_LOG_LEVEL].")
    ] = None,
    log_format: Annotated[
        LogFormat | None, typer.Option(help="Log lines as text or JSON [env: NEXUS_LOG_FORMAT].")
    ] = None,
    discovery: Annotated[
        bool | None,
        typer.Option(
            "--discovery/--no-discovery", help="Find backends by itself [env: NEXUS_DISCOVERY]."
        ),
    ] = None,
    health_check: Annotated[
        bool | None,
        typer.Option(
            "--health-check/--no-health-check",
            help="Probe backends periodically [env: NEXUS_HEALTH_CHECK].",
        ),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Also run a simulated fleet on loopback to try it out.")
    ] = False,
) -> None:
    """Serve the OpenAI-compatible API in front of every backend found or configured."""
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "server.host": host,
            "server.port": port,
            "logging.level": log_level,
            "logging.format": log_format.value if log_format else None,
            "discovery.enabled": discovery,
            "health_check.enabled": health_check,
        }.items()
        if value is not None
    }
    if demo:
        overrides["demo"] = True
    try:
        settings = load_settings(config_path=config, overrides=overrides)
    except ConfigError as exc:
        _fail(exc.message)
        return

    from nexus_trio.logs import configure_logging
    from nexus_trio.supervisor import serve_nexus

    configure_logging(settings.logging)
    try:
        trio.run(partial(serve_nexus, settings, on_ready=_print_demo_help if demo else None))
    except* OSError as group:  # the port is taken, the address is not ours, ...
        first = _leaves(group)[0]
        where = f"{settings.server.host}:{settings.server.port}"
        _fail(f"cannot serve on {where}: {getattr(first, 'strerror', None) or first}")
    except* KeyboardInterrupt:  # a signal before our handler was installed
        raise typer.Exit(code=130) from None


def _print_demo_help(gateway: Gateway) -> None:
    port = gateway.url.rsplit(":", 1)[1]
    base = f"http://localhost:{port}"
    names = ", ".join(b.name for b in gateway.registry)
    typer.echo(
        f"""
Nexus is serving a simulated fleet ({names}) at {base}

  curl {base}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model":"llama3:8b","messages":[{{"role":"user","content":"Hello!"}}],"stream":true}}'
  curl {base}/v1/models
  curl {base}/health

OpenAI SDK: OpenAI(base_url="{base}/v1", api_key="not-needed"). Ctrl+C stops.
"""
    )


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"nexus-trio {__version__}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="nexus")
