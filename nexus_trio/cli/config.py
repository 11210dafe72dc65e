"""``nexus config init``: writes a commented ``nexus.toml`` generated from the settings schema.

The file is produced by walking `nexus_trio.config.schema_keys` (the same fields the loader
reads), and every comment in it is a key's description from the schema, so a key added to
the schema shows up here, explained, without touching this module.

Every live line holds the default, so the full file loads back to exactly ``Settings()``;
keys whose default TOML cannot spell (None), required keys and the ``[[backends]]`` example
are written commented out, with the schema's example values::

    text = render_config()
    assert settings_from_mapping(tomllib.loads(text)) == Settings()
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Annotated, Final

import typer

from nexus_trio import __version__
from nexus_trio.config import DEFAULT_CONFIG_FILE, SchemaKey, schema_keys
from nexus_trio.config.toml_text import toml_key, toml_string, toml_value

__all__ = ["ConfigInitError", "config_init", "group", "render_config", "write_config"]

WRAP_COLUMNS: Final = 92
MINIMAL_SERVER_KEYS: Final = ("host", "port")


class ConfigInitError(Exception):
    """The file cannot be written; `message` is one line saying why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------
# The schema, table by table.


def _children(path: str) -> list[SchemaKey]:
    """The keys directly inside the table (or item of an array or map) at dotted `path`."""
    return [key for key in schema_keys() if key.path.rpartition(".")[0] == path]


def _comment(text: str) -> list[str]:
    # A no-break space keeps "[env: NEXUS_HOST]" on one line (textwrap splits on ASCII
    # whitespace only); it is turned back into a plain space after wrapping.
    lines = textwrap.wrap(text, WRAP_COLUMNS, initial_indent="# ", subsequent_indent="# ")
    return [line.replace("\N{NO-BREAK SPACE}", " ") for line in lines]


def _describe(key: SchemaKey) -> list[str]:
    """The comment lines above a key: its description, its choices, its env variable."""
    text = key.describe()
    if key.env:
        text += f" [env:\N{NO-BREAK SPACE}{key.env}]"
    return _comment(text.strip()) if text.strip() else []


def _example(key: SchemaKey) -> str:
    """The TOML value shown for `key` in a commented-out example."""
    if key.example is not None:
        return key.example
    return toml_value(key.default)


# ---------------------------------------------------------------------------------------------
# Rendering.


def _value_lines(key: SchemaKey) -> list[str]:
    lines = _describe(key)
    try:
        lines.append(f"{toml_key(key.name)} = {toml_value(key.default)}")
    except TypeError:  # None (or required): TOML has no null, so show an example, off
        lines.append(f"# {toml_key(key.name)} = {_example(key)}")
    return lines


def _table_lines(key: SchemaKey, header: str) -> list[str]:
    """A live ``[header]`` table: its values first (TOML files every later key under the last
    table opened), then its sub-tables."""
    children = _children(key.path)
    lines = [*_describe(key), f"[{header}]"]
    for child in children:
        if child.kind == "value":
            lines += [*_value_lines(child), ""]
    if lines[-1] != "":
        lines.append("")
    for child in children:
        sub_header = f"{header}.{toml_key(child.name)}"
        if child.kind == "table":
            lines += _table_lines(child, sub_header)
        elif child.kind == "map":
            # The empty table loads as the empty default; the example shows the shape.
            lines += [*_describe(child), f"[{sub_header}]"]
            if child.example is not None:
                lines.append(f"# {child.example}")
            lines.append("")
        elif child.kind in ("tables", "map-tables"):
            lines += [*_describe(child), *_commented(_example_entry(child, sub_header)), ""]
    return lines


def _example_entry(key: SchemaKey, header: str) -> list[str]:
    """One entry of an array of tables or a map of tables, as live TOML (to be commented out):
    ``[[backends]]`` or ``[backends.models."llama3:8b"]`` and its keys, with descriptions."""
    if key.kind == "map-tables":
        header = f"{header}.{key.example or toml_string('<name>')}"
        lines = [f"[{header}]"]
    else:
        lines = [f"[[{header}]]"]
    later: list[str] = []
    for child in _children(key.path):
        sub_header = f"{header}.{toml_key(child.name)}"
        if child.kind == "value":
            lines += [*_describe(child), f"{toml_key(child.name)} = {_example(child)}"]
        elif child.kind in ("tables", "map-tables"):
            later += ["", *_describe(child), *_example_entry(child, sub_header)]
        elif child.example is not None:  # a plain map, or a table, in an item: show if we can
            later += ["", *_describe(child), f"[{sub_header}]", child.example]
    return [*lines, *later]


def _commented(lines: list[str]) -> list[str]:
    # Comment out a whole snippet, its own comments included, so that removing one "# " from
    # every line gives back valid TOML with its comments.
    return [f"# {line}" if line else "#" for line in lines]


def _preamble(minimal: bool) -> list[str]:
    what = "the main settings" if minimal else "every setting, each at its default"
    lines = [
        f"# Configuration for `nexus serve` (nexus-trio {__version__}), written by "
        "`nexus config init`.",
        f"# It holds {what}. Later sources win:",
        "# defaults < this file < NEXUS_* environment variables < command-line flags.",
    ]
    if minimal:
        lines.append("# `nexus config init` without --minimal writes every setting, explained.")
    return [*lines, ""]


def render_config(*, minimal: bool = False) -> str:
    """The text of a commented ``nexus.toml`` that loads back to the defaults (``Settings()``).

    Args:
        minimal: only ``[server]`` host and port and a commented-out ``[[backends]]`` example;
            otherwise every key of the schema, with its description.

    Example: ``Path("nexus.toml").write_text(render_config())``.
    """
    top = _children("")
    lines = _preamble(minimal)
    # Top-level values (none today) must come before the first table header.
    for key in top:
        if key.kind == "value" and not minimal:
            lines += [*_value_lines(key), ""]
    for key in top:
        header = toml_key(key.name)
        if key.kind in ("tables", "map-tables"):
            lines += [*_describe(key), *_commented(_example_entry(key, header)), ""]
        elif minimal and key.name == "server":
            lines += [*_describe(key), f"[{header}]"]
            for child in _children(key.path):
                if child.name in MINIMAL_SERVER_KEYS:
                    lines += [*_value_lines(child), ""]
        elif not minimal and key.kind == "table":
            lines += _table_lines(key, header)
        elif not minimal and key.kind == "map":
            lines += [*_describe(key), f"[{header}]", ""]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def write_config(text: str, output: str, *, force: bool = False) -> Path | None:
    """Write `text` to the file `output` (``"-"``: standard output); return the path written.

    Never replaces an existing file unless `force`. Returns None for standard output.

    Raises:
        ConfigInitError: the file exists (without `force`), or cannot be written.

    Example: ``write_config(render_config(), "nexus.toml")``.
    """
    if output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    path = Path(output).expanduser()
    try:
        # "x" refuses atomically, so a file that appears meanwhile is not clobbered either
        with path.open("w" if force else "x", encoding="utf-8", newline="\n") as file:
            file.write(text)
    except FileExistsError:
        raise ConfigInitError(
            f"{output} already exists; pass --force to overwrite it, or --output to write "
            "somewhere else"
        ) from None
    except IsADirectoryError:
        raise ConfigInitError(f"{output} is a directory; name a file with --output") from None
    except OSError as exc:
        raise ConfigInitError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return path


# ---------------------------------------------------------------------------------------------
# The command.

group = typer.Typer(name="config", help="Write a configuration file.", no_args_is_help=True)


@group.command("init")
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
    text = render_config(minimal=minimal)
    try:
        path = write_config(text, output, force=force)
    except ConfigInitError as exc:
        typer.echo(f"nexus: error: {exc.message}", err=True)
        raise typer.Exit(code=1) from None
    if path is None:
        return  # written to stdout: nothing else may go there
    if path.resolve() == Path(DEFAULT_CONFIG_FILE).resolve():
        hint = "`nexus serve` in this directory reads it"
    else:
        hint = f"use it with `nexus serve --config {output}`"
    typer.echo(f"Wrote {path.resolve()}; {hint}.")
