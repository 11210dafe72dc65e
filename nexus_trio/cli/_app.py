"""The ``nexus`` typer app every command module registers on, and what they share: the
``--url``/``--token``/``--json`` options of the client commands, and how a command fails.

A configuration error (`fail`) is one line and exit code 2; a client command's failure
(`ask`) is one line and exit code 1 (2 for a bad ``--url``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from nexus_trio.cli import client

__all__ = ["JsonOption", "TokenOption", "UrlOption", "app", "ask", "fail", "leaves"]

app = typer.Typer(
    name="nexus",
    help="One OpenAI-compatible endpoint in front of every LLM server on your network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> NoReturn:
    """Print ``nexus: error: message`` on stderr and exit with code 2 (a configuration error)."""
    typer.echo(f"nexus: error: {message}", err=True)
    raise typer.Exit(code=2)


def leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions in `group` and its nested groups, in order."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar=client.URL_ENV_VAR,
        help="Where Nexus listens. Default: the address `nexus serve` would use here "
        "(./nexus.toml, NEXUS_HOST, NEXUS_PORT), else http://127.0.0.1:8000.",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=client.TOKEN_ENV_VAR,
        help="Admin token, sent as 'Authorization: Bearer'. Not needed from this machine "
        "when the server has none.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON, for scripts.")]


def ask(url: str | None, token: str | None, action: Callable[[client.Target], str]) -> None:
    """Run one client action and print its text; its failure is one line on stderr and the
    error's exit code (1, or 2 for a bad ``--url``)."""
    try:
        text = action(client.resolve_target(url, token))
    except client.ClientError as exc:
        typer.echo(f"nexus: error: {exc.message}", err=True)
        raise typer.Exit(code=exc.exit_code) from None
    typer.echo(text)
