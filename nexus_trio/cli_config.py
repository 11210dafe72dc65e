"""``nexus config init``: a commented ``nexus.toml`` generated from the settings schema.

The file is produced by walking the dataclasses in `nexus_trio.config` (the same fields the
loader reads: those whose metadata carries a checker), so a key added to the schema shows up
here without touching this module. What the schema cannot say, a sentence for people and an
example value for keys without a writable default, comes from `DESCRIPTIONS` and `EXAMPLES`,
keyed by dotted key; a test checks that every key has both it needs.

Every live line holds the default, so the full file loads back to exactly ``Settings()``;
keys whose default TOML cannot spell (None) and the ``[[backends]]`` example are written
commented out::

    text = render_config()
    assert settings_from_mapping(tomllib.loads(text)) == Settings()
"""

from __future__ import annotations

import dataclasses
import enum
import re
import sys
import textwrap
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nexus_trio import __version__
from nexus_trio.config import Settings

__all__ = [
    "DESCRIPTIONS",
    "EXAMPLES",
    "ConfigInitError",
    "SchemaKey",
    "render_config",
    "schema_keys",
    "write_config",
]

WRAP_COLUMNS: Final = 92
MINIMAL_SERVER_KEYS: Final = ("host", "port")

DESCRIPTIONS: Final[Mapping[str, str]] = {
    # [server]
    "server": "Where the OpenAI-compatible endpoint listens.",
    "server.host": "Address to listen on; 0.0.0.0 is every IPv4 interface, :: every IPv6 one.",
    "server.port": "TCP port to listen on; 0 asks the OS for a free one.",
    "server.max_body_bytes": "Largest request body accepted; bigger ones get HTTP 413.",
    "server.shutdown_grace_seconds": (
        "On SIGINT/SIGTERM, how long requests in flight may finish before they are cut."
    ),
    "server.admin_token": (
        "Token for the admin API (/admin/*), at least 8 characters. Unset: only clients on "
        "this machine may use it. Prefer the environment variable to writing it here."
    ),
    "server.state_file": (
        "Where backends added through the admin API are kept across restarts. Unset: "
        "nexus.state.json next to this file (or in the current directory)."
    ),
    # [discovery]
    "discovery": "Finding LLM servers by themselves: mDNS on the network and ports on this host.",
    "discovery.enabled": "Browse mDNS and probe local ports for backends.",
    "discovery.service_types": "mDNS service types to browse.",
    "discovery.interfaces": "Addresses to browse and announce on; empty means every interface.",
    "discovery.probe_local": "Probe the well-known ports of LLM servers on this host.",
    "discovery.probe_ports": (
        "Ports probed on this host: Ollama, llama.cpp/LocalAI, vLLM, LM Studio, exo."
    ),
    "discovery.probe_interval_seconds": "How often the local ports are probed again.",
    "discovery.grace_period_seconds": (
        "How long a backend that said goodbye (or stopped answering) is remembered."
    ),
    # [health_check]
    "health_check": (
        "Active health probes (a backend flips state after N results in a row), and how long "
        "a request that failed keeps its backend out of rotation."
    ),
    "health_check.enabled": "Probe every backend periodically.",
    "health_check.interval_seconds": "Time between two probes of one backend.",
    "health_check.timeout_seconds": "A probe that takes longer than this has failed.",
    "health_check.failure_threshold": "Failed probes in a row before a backend is unhealthy.",
    "health_check.recovery_threshold": "Good probes in a row before it is healthy again.",
    "health_check.ejection_base_seconds": (
        "A backend a request failed on is out of rotation this long, whatever its probes say."
    ),
    "health_check.ejection_max_seconds": (
        "Each ejection in a row lasts twice the one before, up to this; a run of requests "
        "served starts over from the base."
    ),
    # [routing]
    "routing": "How a request picks its backend, and what happens when that backend fails.",
    "routing.strategy": "How the healthy backends of a model are ordered.",
    "routing.max_attempts": (
        "Attempts for one request before giving up with HTTP 502; a backend that failed is "
        "tried again only once it is back in rotation."
    ),
    "routing.failover_timeout_seconds": (
        "No new attempt after the request (or, mid-stream, the failure) is this old; 0: no limit."
    ),
    "routing.mid_stream": (
        "When a stream's backend fails after its first token: continue_same_model, "
        "continue_any (a fallback model too) or error."
    ),
    "routing.max_mid_stream_failovers": "Continuations on another backend allowed per stream.",
    "routing.wait_for_backend_seconds": (
        "With every backend of the model out of rotation, wait this long for one to return."
    ),
    "routing.hedge_after_ms": (
        "Start the next backend beside one with no first token after this long; unset: off."
    ),
    "routing.aliases": "Other names for models: a request for the key is served by the value.",
    "routing.fallbacks": (
        "Models to serve instead when no backend of the key's model can (one name or a list)."
    ),
    "routing.timeouts": "One deadline per phase of an attempt; when it fires, the next backend.",
    "routing.timeouts.connect_seconds": "Opening the connection to a backend.",
    "routing.timeouts.first_token_seconds": (
        "Until the response headers and the first event of a stream (the whole answer's start "
        "otherwise)."
    ),
    "routing.timeouts.stream_idle_seconds": "Silence allowed between two events of a stream.",
    "routing.timeouts.request_seconds": "A whole answer that is not streamed.",
    # [logging]
    "logging": "Log lines on stderr.",
    "logging.level": "One of: debug, info, warning, error, critical.",
    "logging.format": "Human-readable lines, or one JSON object per line.",
    "logging.component_levels": (
        'Levels per component, e.g. {registry = "debug", request = "warning"} (logger names; '
        "the nexus. prefix may be left out)."
    ),
    "logging.content": "Put prompt and answer text in request lines (off: prompts are private).",
    "logging.history_size": "Finished requests /v1/history and the dashboard keep.",
    # [[backends]]
    "backends": ("Backends to use besides those found by discovery; one [[backends]] table each."),
    "backends.name": "Stable name, shown in X-Nexus-Backend and the admin API (no spaces).",
    "backends.url": "Where the server answers (http:// or https://, without /v1).",
    "backends.type": "The kind of server; generic works for any OpenAI-compatible one.",
    "backends.priority": "Lower is preferred.",
    "backends.api_key_env": (
        "NAME of the environment variable holding its API key (never the key itself)."
    ),
    "backends.max_concurrency": "Requests it may serve at once; unset means no limit.",
    "backends.first_token_seconds": "Overrides routing.timeouts.first_token_seconds here.",
    "backends.stream_idle_seconds": "Overrides routing.timeouts.stream_idle_seconds here.",
    "backends.models": "What to believe about one of its models instead of what it reports.",
    "backends.models.context_length": "Context window in tokens.",
    "backends.models.capabilities": "Replaces what the backend reports: vision, tools, json.",
}
"""One sentence per dotted key (tables included), written above it as a comment."""

EXAMPLES: Final[Mapping[str, str]] = {
    "server.admin_token": '"change-me-to-a-long-random-string"',
    "server.state_file": '"/var/lib/nexus/state.json"',
    "routing.aliases": '"gpt-4o" = "llama3:70b"',
    "routing.fallbacks": '"llama3:70b" = ["llama3:8b", "mistral:7b"]',
    "routing.hedge_after_ms": "1500",
    "logging.component_levels": '"registry" = "debug"',
    "backends.name": '"gpu-box"',
    "backends.url": '"http://192.168.1.20:11434"',
    "backends.type": '"ollama"',
    "backends.api_key_env": '"GPU_BOX_API_KEY"',
    "backends.max_concurrency": "4",
    "backends.first_token_seconds": "120.0",
    "backends.stream_idle_seconds": "60.0",
    "backends.models": '"llama3:8b"',
    "backends.models.context_length": "8192",
    "backends.models.capabilities": '["tools"]',
}
"""TOML text shown (commented out) where the default cannot be written: None, a required key,
an entry of a map. For a map of tables (``backends.models``) it is the example key."""


class ConfigInitError(Exception):
    """The file cannot be written; `message` is one line saying why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------
# The schema walk.


@dataclass(frozen=True, slots=True)
class SchemaKey:
    """One key of the settings schema.

    `kind` is "table" (a nested dataclass), "tables" (an array of tables, ``[[backends]]``),
    "map" (a table of free keys to scalars, ``[routing.aliases]``), "map-tables" (free keys to
    tables, ``[backends.models."<id>"]``) or "value". `cls` is the dataclass of a table or of
    each item of "tables"/"map-tables".
    """

    path: str
    name: str
    kind: str
    annotation: Any
    default: Any  # dataclasses.MISSING for a required key
    env: str | None = None
    cls: type[Any] | None = None


def _children(cls: type[Any], prefix: str) -> list[SchemaKey]:
    """The loadable fields of `cls` (those the loader checks), in declaration order."""
    hints = typing.get_type_hints(cls)
    out: list[SchemaKey] = []
    for spec in dataclasses.fields(cls):
        if "check" not in spec.metadata:
            continue  # config_path, demo: set by the program, never by the file
        annotation = hints[spec.name]
        if spec.default is not dataclasses.MISSING:
            default: Any = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = dataclasses.MISSING
        path = f"{prefix}.{spec.name}" if prefix else spec.name
        kind, item = _classify(annotation)
        env = spec.metadata.get("env")
        out.append(SchemaKey(path, spec.name, kind, annotation, default, env, item))
    return out


def _classify(annotation: Any) -> tuple[str, type[Any] | None]:
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return "table", annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and args and dataclasses.is_dataclass(args[0]):
        return "tables", typing.cast(type[Any], args[0])
    if origin is Mapping or origin is dict:
        value = args[1] if len(args) == 2 else None
        if isinstance(value, type) and dataclasses.is_dataclass(value):
            return "map-tables", value
        return "map", None
    return "value", None


def schema_keys() -> Iterator[SchemaKey]:
    """Every key of the schema, depth first: ``server``, ``server.host``, ... ``backends.models
    .capabilities``. Items of arrays and maps are named without an index (``backends.name``)."""

    def walk(cls: type[Any], prefix: str) -> Iterator[SchemaKey]:
        for key in _children(cls, prefix):
            yield key
            if key.cls is not None:
                yield from walk(key.cls, key.path)

    return walk(Settings, "")


# ---------------------------------------------------------------------------------------------
# TOML spelling.


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml_string(name)


def _toml_string(text: str) -> str:
    # TOML basic strings: escape the quote, the backslash and every control character.
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return "\\" + char if char in '"\\' else f"\\u{ord(char):04x}"

    return '"' + re.sub(r'["\\\x00-\x1f\x7f]', escape, text) + '"'


def _toml_value(value: object) -> str:
    """A default as TOML; raises TypeError for what TOML cannot spell (None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _toml_value(value.value)
    if isinstance(value, int):
        # 10_485_760 reads better than 10485760; ports and counts stay as they are
        return f"{value:_}" if abs(value) >= 100_000 else str(value)
    if isinstance(value, float):
        return repr(value)  # always has a "." or an exponent, as TOML floats need
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple | list | frozenset):
        items = sorted(value) if isinstance(value, frozenset) else value
        return "[" + ", ".join(_toml_value(item) for item in items) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def _comment(text: str) -> list[str]:
    # A no-break space keeps "[env: NEXUS_HOST]" on one line (textwrap splits on ASCII
    # whitespace only); it is turned back into a plain space after wrapping.
    lines = textwrap.wrap(text, WRAP_COLUMNS, initial_indent="# ", subsequent_indent="# ")
    return [line.replace("\N{NO-BREAK SPACE}", " ") for line in lines]


def _describe(key: SchemaKey) -> list[str]:
    """The comment lines above a key: its description, its choices, its env variable."""
    text = DESCRIPTIONS.get(key.path, "")
    if isinstance(key.annotation, type) and issubclass(key.annotation, enum.Enum):
        choices = ", ".join(str(member.value) for member in key.annotation)
        text += f" One of: {choices}."
    if key.env:
        text += f" [env:\N{NO-BREAK SPACE}{key.env}]"
    return _comment(text.strip()) if text.strip() else []


def _example(key: SchemaKey) -> str:
    """The TOML value shown for `key` in a commented-out example."""
    if key.path in EXAMPLES:
        return EXAMPLES[key.path]
    return _toml_value(key.default)


# ---------------------------------------------------------------------------------------------
# Rendering.


def _value_lines(key: SchemaKey) -> list[str]:
    lines = _describe(key)
    try:
        lines.append(f"{_toml_key(key.name)} = {_toml_value(key.default)}")
    except TypeError:  # None (or required): TOML has no null, so show an example, off
        lines.append(f"# {_toml_key(key.name)} = {_example(key)}")
    return lines


def _table_lines(key: SchemaKey, header: str) -> list[str]:
    """A live ``[header]`` table: its values first (TOML files every later key under the last
    table opened), then its sub-tables."""
    assert key.cls is not None
    children = _children(key.cls, key.path)
    lines = [*_describe(key), f"[{header}]"]
    for child in children:
        if child.kind == "value":
            lines += [*_value_lines(child), ""]
    if lines[-1] != "":
        lines.append("")
    for child in children:
        sub_header = f"{header}.{_toml_key(child.name)}"
        if child.kind == "table":
            lines += _table_lines(child, sub_header)
        elif child.kind == "map":
            # The empty table loads as the empty default; the example shows the shape.
            lines += [*_describe(child), f"[{sub_header}]"]
            if child.path in EXAMPLES:
                lines.append(f"# {EXAMPLES[child.path]}")
            lines.append("")
        elif child.kind in ("tables", "map-tables"):
            lines += [*_describe(child), *_commented(_example_entry(child, sub_header)), ""]
    return lines


def _example_entry(key: SchemaKey, header: str) -> list[str]:
    """One entry of an array of tables or a map of tables, as live TOML (to be commented out):
    ``[[backends]]`` or ``[backends.models."llama3:8b"]`` and its keys, with descriptions."""
    assert key.cls is not None
    if key.kind == "map-tables":
        header = f"{header}.{EXAMPLES.get(key.path, _toml_string('<name>'))}"
        lines = [f"[{header}]"]
    else:
        lines = [f"[[{header}]]"]
    later: list[str] = []
    for child in _children(key.cls, key.path):
        sub_header = f"{header}.{_toml_key(child.name)}"
        if child.kind == "value":
            lines += [*_describe(child), f"{_toml_key(child.name)} = {_example(child)}"]
        elif child.kind in ("tables", "map-tables"):
            later += ["", *_describe(child), *_example_entry(child, sub_header)]
        elif child.path in EXAMPLES:  # a plain map, or a table, in an item: show if we can
            later += ["", *_describe(child), f"[{sub_header}]", EXAMPLES[child.path]]
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
    top = _children(Settings, "")
    lines = _preamble(minimal)
    # Top-level values (none today) must come before the first table header.
    for key in top:
        if key.kind == "value" and not minimal:
            lines += [*_value_lines(key), ""]
    for key in top:
        header = _toml_key(key.name)
        if key.kind in ("tables", "map-tables"):
            lines += [*_describe(key), *_commented(_example_entry(key, header)), ""]
        elif minimal and key.name == "server":
            assert key.cls is not None
            lines += [*_describe(key), f"[{header}]"]
            for child in _children(key.cls, key.path):
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
