"""The ``nexus`` command.

``serve`` runs the gateway. Its flags but ``--config`` and ``--demo`` each set one
settings key, and take their names and help from the schema (`_flag`); a flag
left out does not override the environment or the file (precedence: flags >
``NEXUS_*`` > TOML > defaults). A configuration error, a bad flag value included,
prints one line and exits with code 2.

``backends``, ``models`` and ``health`` are clients of a running server (see
`nexus_trio.cli_client`): a failure prints one line and exits with code 1.
``config init`` writes a commented ``nexus.toml`` (`nexus_trio.cli_config`);
``completions`` prints a shell completion script.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import click.shell_completion
import typer

from nexus_trio import __version__, cli_client, cli_config
from nexus_trio.config import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_FILE,
    BackendType,
    load_settings,
    schema_key,
)
from nexus_trio.errors import ConfigError

if TYPE_CHECKING:
    from nexus_trio.gateway import Gateway

__all__ = ["COMPLETE_VAR", "app", "main"]

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


@app.command()
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
        _fail(exc.message)
        return

    # Imported here so that the client commands start without loading the server.
    import trio

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


@app.command("advertise")
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
        _fail(exc.message)
        return
    import trio

    from nexus_trio.cli_advertise import NothingThere, run_advertise
    from nexus_trio.logs import configure_logging

    configure_logging(settings.logging)
    interfaces = tuple(interface or settings.discovery.interfaces)
    try:
        trio.run(run_advertise, url, type_, name, interfaces)
    except* NothingThere as group:
        typer.echo(f"nexus: error: {_leaves(group)[0]}", err=True)
        raise typer.Exit(code=1) from None
    except* ConfigError as group:
        _fail(str(_leaves(group)[0]))


# ---------------------------------------------------------------------------------------------
# Clients of a running server.

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar=cli_client.URL_ENV_VAR,
        help="Where Nexus listens. Default: the address `nexus serve` would use here "
        "(./nexus.toml, NEXUS_HOST, NEXUS_PORT), else http://127.0.0.1:8000.",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=cli_client.TOKEN_ENV_VAR,
        help="Admin token, sent as 'Authorization: Bearer'. Not needed from this machine "
        "when the server has none.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON, for scripts.")]


def _ask(url: str | None, token: str | None, action: Callable[[cli_client.Target], str]) -> None:
    """Run one client action; its failure is one line on stderr and exit code 1."""
    try:
        text = action(cli_client.resolve_target(url, token))
    except cli_client.ClientError as exc:
        typer.echo(f"nexus: error: {exc.message}", err=True)
        raise typer.Exit(code=exc.exit_code) from None
    typer.echo(text)


backends_app = typer.Typer(
    name="backends",
    help="List, add and remove the backends of a running Nexus.",
    no_args_is_help=True,
)
app.add_typer(backends_app)


@backends_app.command("list")
def backends_list(
    json_: JsonOption = False,
    status: Annotated[
        cli_client.BackendStatus | None, typer.Option(help="Only the backends in this state.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """List the backends: type, health, models, load, latency, where they came from."""
    wanted = status.value if status else None
    _ask(url, token, partial(cli_client.list_backends, status=wanted, as_json=json_))


@backends_app.command("add")
def backends_add(
    backend_url: Annotated[
        str, typer.Argument(metavar="URL", help="Where the server answers, e.g. http://gpu:11434.")
    ],
    name: Annotated[str | None, typer.Option(help="Stable name (default: type@host:port).")] = None,
    type_: Annotated[
        BackendType | None,
        typer.Option("--type", case_sensitive=False, help="Kind of server (default: detected)."),
    ] = None,
    priority: Annotated[
        int | None, typer.Option(min=0, help="Lower is preferred (default: 1).")
    ] = None,
    json_: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Add the LLM server at URL; Nexus checks that it answers and lists its models."""
    _ask(
        url,
        token,
        partial(
            cli_client.add_backend,
            url=backend_url,
            name=name,
            type_=type_.value if type_ else None,
            priority=priority,
            as_json=json_,
        ),
    )


@backends_app.command("remove")
def backends_remove(
    name: Annotated[str, typer.Argument(help="The backend's name, as `backends list` shows.")],
    json_: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Remove a backend; requests in flight on it finish."""
    _ask(url, token, partial(cli_client.remove_backend, name=name, as_json=json_))


@app.command()
def models(
    json_: JsonOption = False,
    backend: Annotated[str | None, typer.Option(help="Only the models of this backend.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """List the models, whether they can be served now, and by which backends."""
    _ask(url, token, partial(cli_client.list_models, backend=backend, as_json=json_))


@app.command()
def health(json_: JsonOption = False, url: UrlOption = None, token: TokenOption = None) -> None:
    """Show the server's health and each backend's. Exits 0 whenever the server answers."""
    _ask(url, token, partial(cli_client.get_health, as_json=json_))


# ---------------------------------------------------------------------------------------------
# Local setup: a config file, shell completion.

config_app = typer.Typer(name="config", help="Write a configuration file.", no_args_is_help=True)
app.add_typer(config_app)


@config_app.command("init")
def config_init(
    output: Annotated[
        str, typer.Option("--output", "-o", help="File to write; '-' for standard output.")
    ] = DEFAULT_CONFIG_FILE,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the file if it exists.")
    ] = False,
    minimal: Annotated[
        bool,
        typer.Option("--minimal", help="Only the server's host and port, and a backend example."),
    ] = False,
) -> None:
    """Write a commented nexus.toml holding the defaults, ready to edit."""
    text = cli_config.render_config(minimal=minimal)
    try:
        path = cli_config.write_config(text, output, force=force)
    except cli_config.ConfigInitError as exc:
        typer.echo(f"nexus: error: {exc.message}", err=True)
        raise typer.Exit(code=1) from None
    if path is None:
        return  # written to stdout: nothing else may go there
    if path.resolve() == Path(DEFAULT_CONFIG_FILE).resolve():
        hint = "`nexus serve` in this directory reads it"
    else:
        hint = f"use it with `nexus serve --config {output}`"
    typer.echo(f"Wrote {path.resolve()}; {hint}.")


COMPLETE_VAR: Final = "_NEXUS_COMPLETE"
"""The environment variable through which a shell asks for completions (click's protocol:
``bash_source`` / ``bash_complete``, and the same for zsh and fish)."""

try:  # typer >= 0.20 builds commands on its own copy of click
    from typer._click import shell_completion as _typer_completion
except ImportError:  # older typer builds them on click itself
    _typer_completion = click.shell_completion  # type: ignore[misc,unused-ignore]


class _OnTyperCommands:
    """Resolve completions with the click that built the command tree: click's own resolver
    takes only its own `Group` class for a group, and would never see our subcommands."""

    def get_completions(
        self, args: list[str], incomplete: str
    ) -> list[click.shell_completion.CompletionItem[str]]:
        resolve: Any = _typer_completion.ShellComplete.get_completions
        items: list[click.shell_completion.CompletionItem[str]] = resolve(self, args, incomplete)
        return items


class _Bash(_OnTyperCommands, click.shell_completion.BashComplete):
    pass


class _Zsh(_OnTyperCommands, click.shell_completion.ZshComplete):
    pass


class _Fish(_OnTyperCommands, click.shell_completion.FishComplete):
    pass


class Shell(enum.StrEnum):
    """Shells `nexus completions` writes scripts for."""

    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


_COMPLETERS: Final[dict[str, type[click.shell_completion.ShellComplete]]] = {
    Shell.BASH: _Bash,
    Shell.ZSH: _Zsh,
    Shell.FISH: _Fish,
}


def _completer(shell: str) -> click.shell_completion.ShellComplete | None:
    kind = _COMPLETERS.get(shell)
    command: Any = typer.main.get_command(app)
    return None if kind is None else kind(command, {}, "nexus", COMPLETE_VAR)


@app.command()
def completions(
    shell: Annotated[Shell, typer.Argument(help="The shell to complete in.")],
) -> None:
    """Print a shell completion script for bash, zsh or fish.

    bash: add `source <(nexus completions bash)` to ~/.bashrc

    zsh: add `source <(nexus completions zsh)` to ~/.zshrc, after compinit

    fish: nexus completions fish > ~/.config/fish/completions/nexus.fish
    """
    completer = _completer(shell.value)
    assert completer is not None
    typer.echo(completer.source())


def _complete(instruction: str) -> int:
    """Answer a shell's completion request (``<shell>_complete``, or ``<shell>_source``)."""
    shell, _, action = instruction.partition("_")
    completer = _completer(shell)
    if completer is None or action not in ("complete", "source"):
        typer.echo(f"nexus: error: unknown completion request {instruction!r}", err=True)
        return 1
    typer.echo(completer.complete() if action == "complete" else completer.source())
    return 0


def main() -> None:
    """Console-script entry point."""
    instruction = os.environ.get(COMPLETE_VAR)
    if instruction:
        # Handled here, not by typer: typer reads the variable in click 7's order
        # ("complete_bash"), while the scripts click writes send "bash_complete".
        raise SystemExit(_complete(instruction))
    app(prog_name="nexus")
