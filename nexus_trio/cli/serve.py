"""``nexus serve`` runs the gateway; ``nexus version`` says which one.

``serve``'s flags but ``--config`` and ``--demo`` each set one settings key, and take their
names and help from the schema (`_flag`); a flag left out does not override the environment
or the file (precedence: flags > ``NEXUS_*`` > TOML > defaults). A configuration error, a bad
flag value included, prints one line and exits with code 2.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nexus_trio import __version__
from nexus_trio.cli._app import fail, leaves
from nexus_trio.config import CONFIG_ENV_VAR, DEFAULT_CONFIG_FILE, load_settings, schema_key
from nexus_trio.errors import ConfigError

if TYPE_CHECKING:
    from nexus_trio.gateway import Gateway

__all__ = ["serve", "version"]


def _flag(path: str) -> Any:
    """The `serve` option that sets the settings key at dotted `path`. Its names, help,
    environment variable and completions come from the schema; its value is checked by the
    loader, like the file's and the environment's, so a bad one is one line and exit code 2."""
    key = schema_key(path)
    text = key.describe()
    if key.env:
        text += f" (env: {key.env})"  # in brackets, rich would take it for markup
    words = key.check.choices()

    def complete(incomplete: str) -> list[str]:
        return [word for word in words if word.startswith(incomplete.lower())]

    return typer.Option(
        *key.flags,
        help=text,
        metavar=None if "/" in key.flags[0] else key.name.upper(),
        autocompletion=complete if words else None,
        show_default=False,
    )


def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help=f"TOML file to load (env: {CONFIG_ENV_VAR}; default: ./{DEFAULT_CONFIG_FILE} "
            "when it exists).",
        ),
    ] = None,
    host: Annotated[str | None, _flag("server.host")] = None,
    port: Annotated[str | None, _flag("server.port")] = None,
    log_level: Annotated[str | None, _flag("logging.level")] = None,
    log_format: Annotated[str | None, _flag("logging.format")] = None,
    discovery: Annotated[bool | None, _flag("discovery.enabled")] = None,
    health_check: Annotated[bool | None, _flag("health_check.enabled")] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Also run a simulated fleet on loopback to try it out.")
    ] = False,
) -> None:
    """Serve the OpenAI-compatible API in front of every backend found or configured."""
    overrides: dict[str, object] = {  # None: the flag was not given
        "server.host": host,
        "server.port": port,
        "logging.level": log_level,
        "logging.format": log_format,
        "discovery.enabled": discovery,
        "health_check.enabled": health_check,
        "demo": demo or None,
    }
    try:
        settings = load_settings(config_path=config, overrides=overrides)
    except ConfigError as exc:
        fail(exc.message)

    # Imported here so that the client commands start without loading the server.
    import trio

    from nexus_trio.logs import configure_logging
    from nexus_trio.supervisor import serve_nexus

    configure_logging(settings.logging)
    try:
        trio.run(partial(serve_nexus, settings, on_ready=_print_demo_help if demo else None))
    except* OSError as group:  # the port is taken, the address is not ours, ...
        first = leaves(group)[0]
        where = f"{settings.server.host}:{settings.server.port}"
        fail(f"cannot serve on {where}: {getattr(first, 'strerror', None) or first}")
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


def version() -> None:
    """Print the version."""
    typer.echo(f"nexus-trio {__version__}")
