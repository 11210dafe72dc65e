"""The ``nexus`` command: one module per command group, put together on one typer `app`.

- ``serve`` runs the gateway, ``version`` says which (`nexus_trio.cli.serve`); a
  configuration error, a bad flag value included, prints one line and exits with code 2.
- ``advertise`` announces a server over mDNS (`nexus_trio.cli.advertise`).
- ``backends``, ``models`` and ``health`` are clients of a running server: they share one
  admin-API client (`nexus_trio.cli.client`) and one way to print tables and ``--json``
  (`nexus_trio.cli.output`); a failure prints one line and exits with code 1.
- ``keys`` makes, lists, changes and revokes API keys (`nexus_trio.cli.keys`); ``usage``
  shows what they used (`nexus_trio.cli.usage`). Both are clients of a running server too.
- ``config init`` writes a commented ``nexus.toml`` (`nexus_trio.cli.config`);
  ``completions`` prints a shell completion script (`nexus_trio.cli.completions`).

The modules define their commands; this one registers them, in the order ``nexus --help``
lists them.
"""

from __future__ import annotations

import os

from nexus_trio.cli import (
    advertise,
    backends,
    completions,
    config,
    health,
    keys,
    models,
    serve,
    usage,
)
from nexus_trio.cli._app import app
from nexus_trio.cli.completions import COMPLETE_VAR, answer_completion

__all__ = ["COMPLETE_VAR", "app", "main"]

app.command()(serve.serve)
app.command()(serve.version)
app.command("advertise")(advertise.advertise_command)
app.add_typer(backends.group)
app.command()(models.models)
app.command()(health.health)
app.command()(usage.usage)
app.add_typer(keys.group)
app.add_typer(config.group)
app.command()(completions.completions)


def main() -> None:
    """Console-script entry point."""
    instruction = os.environ.get(COMPLETE_VAR)
    if instruction:
        # Handled here, not by typer: typer reads the variable in click 7's order
        # ("complete_bash"), while the scripts click writes send "bash_complete".
        raise SystemExit(answer_completion(instruction))
    app(prog_name="nexus")
