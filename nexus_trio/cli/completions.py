"""``nexus completions``: shell completion scripts, and the answers to a shell's requests.

A shell asks through `COMPLETE_VAR` (click's protocol); `nexus_trio.cli.main` hands such a
request to `answer_completion` before typer sees the command line.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

import click.shell_completion
import typer

from nexus_trio.cli._app import app

__all__ = ["COMPLETE_VAR", "Shell", "answer_completion", "completions"]


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


def answer_completion(instruction: str) -> int:
    """Answer a shell's completion request (``<shell>_complete``, or ``<shell>_source``)."""
    shell, _, action = instruction.partition("_")
    completer = _completer(shell)
    if completer is None or action not in ("complete", "source"):
        typer.echo(f"nexus: error: unknown completion request {instruction!r}", err=True)
        return 1
    typer.echo(completer.complete() if action == "complete" else completer.source())
    return 0
