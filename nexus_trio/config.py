"""Settings: one frozen, typed object, built once from defaults < TOML < ``NEXUS_*`` < CLI.

The schema is the dataclasses below. Each loadable field carries its checker in its metadata,
so adding a key is one line, and the environment names and CLI override keys are derived
from the same fields (`ENV_VARS`, `OVERRIDE_KEYS`) so that they cannot drift apart::

    [server]        host, port, max_body_bytes, shutdown_grace_seconds
    [discovery]     enabled
    [health_check]  enabled, interval_seconds, timeout_seconds, failure_threshold,
                    recovery_threshold
    [routing]       strategy, max_attempts, [routing.aliases], [routing.fallbacks],
                    [routing.timeouts] connect_seconds, first_token_seconds,
                    stream_idle_seconds, request_seconds
    [logging]       level, format
    [[backends]]    name, url, type, priority, api_key_env, max_concurrency,
                    [backends.models."<model id>"] context_length, capabilities

Every problem is a `ConfigError` whose message is one line naming where the bad value came
from (the file, ``environment: NEXUS_PORT`` or ``command line: server.port``), the dotted key,
and what would be accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Final

from nexus_trio.errors import ConfigError

__all__ = [
    "CAPABILITIES",
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_FILE",
    "ENV_VARS",
    "LOG_LEVELS",
    "MAX_ALIAS_HOPS",
    "OVERRIDE_KEYS",
    "BackendSettings",
    "BackendType",
    "DiscoverySettings",
    "HealthCheckSettings",
    "LogFormat",
    "LoggingSettings",
    "MidStream",
    "ModelOverride",
    "RoutingSettings",
    "ServerSettings",
    "Settings",
    "Strategy",
    "TimeoutSettings",
    "load_settings",
    "settings_from_mapping",
]

CONFIG_ENV_VAR: Final = "NEXUS_CONFIG"
DEFAULT_CONFIG_FILE: Final = "nexus.toml"
MAX_ALIAS_HOPS: Final = 3
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
CAPABILITIES: Final = ("vision", "tools", "json")


class Strategy(enum.StrEnum):
    """How the router orders the healthy backends of a model."""

    SMART = "smart"
    ROUND_ROBIN = "round_robin"
    PRIORITY = "priority"
    LEAST_BUSY = "least_busy"
    RANDOM = "random"


class MidStream(enum.StrEnum):
    """What to do when a stream's backend fails after the client has seen its first token."""

    CONTINUE_SAME_MODEL = "continue_same_model"  # continue on another backend of the model
    CONTINUE_ANY = "continue_any"  # ...or, failing that, on a fallback model
    ERROR = "error"  # end the stream with an error event


class LogFormat(enum.StrEnum):
    """Log line format: human-readable or one JSON object per line."""

    PRETTY = "pretty"
    JSON = "json"


class BackendType(enum.StrEnum):
    """The wire family of a backend server (selects its adapter)."""

    OLLAMA = "ollama"
    VLLM = "vllm"
    LLAMACPP = "llamacpp"
    EXO = "exo"
    LOCALAI = "localai"
    LMSTUDIO = "lmstudio"
    OPENAI = "openai"
    GENERIC = "generic"


# ---------------------------------------------------------------------------------------------
# Checkers: each takes a parsed value and its dotted path, returns the typed value or raises _Bad.


class _Bad(Exception):
    """A rejected value. With a `path`, the message is "<path> <problem>" and the loader names
    the source (file, env var or flag) that supplied that path; without, `problem` is whole."""

    def __init__(self, problem: str, path: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path


def _show(value: object) -> str:
    """A short, one-line rendering of a bad value (repr escapes newlines)."""
    if isinstance(value, bool):
        return "true" if value else "false"  # say it the TOML way
    try:
        text = repr(value)
    except ValueError:  # int too large to print (sys.int_info.default_max_str_digits)
        return "a very large number"
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: object) -> str:
    """Dotted path as TOML would spell it: model ids like ``llama3:8b`` get quoted."""
    text = str(key)
    part = text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text, ensure_ascii=False)
    return f"{path}.{part}" if path else part


class _Check:
    """Base checker; `from_text` first reads the value from an env var or flag string."""

    scalar: ClassVar[bool] = True  # may be set from the environment or the command line

    def __call__(self, value: object, path: str) -> object:
        raise NotImplementedError

    def from_text(self, text: str, path: str) -> object:
        return text


@dataclass(frozen=True)
class _Str(_Check):
    pattern: str = r".+"
    rule: str = "a non-empty string"
    show: bool = True  # False where a user may have pasted a secret by mistake

    def __call__(self, value: object, path: str) -> object:
        if isinstance(value, str) and re.fullmatch(self.pattern, value, re.DOTALL):
            return value
        got = _show(value) if self.show else "something else (value not shown)"
        raise _Bad(f"must be {self.rule}, got {got}", path)


@dataclass(frozen=True)
class _Int(_Check):
    lo: int
    hi: int | None = None

    def __call__(self, value: object, path: str) -> object:
        # bool is an int subclass in Python, but `port = true` is a mistake, not 1
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.lo <= value
            and (self.hi is None or value <= self.hi)
        ):
            return value
        span = f"from {self.lo} to {self.hi}" if self.hi is not None else f"of at least {self.lo}"
        raise _Bad(f"must be an integer {span}, got {_show(value)}", path)

    def from_text(self, text: str, path: str) -> object:
        try:
            return int(text)
        except ValueError:
            return text  # reported by __call__ with the text as given


@dataclass(frozen=True)
class _Float(_Check):
    lo: float
    above: bool  # True: strictly greater than lo

    def __call__(self, value: object, path: str) -> object:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)  # an int is fine where a float is expected
            except OverflowError:
                number = None
        if (
            number is not None
            and math.isfinite(number)
            and (number > self.lo or (not self.above and number == self.lo))
        ):
            return number
        span = f"greater than {self.lo:g}" if self.above else f"of at least {self.lo:g}"
        raise _Bad(f"must be a number {span}, got {_show(value)}", path)

    def from_text(self, text: str, path: str) -> object:
        try:
            return float(text)
        except ValueError:
            return text


_BOOL_WORDS: Final = {
    "true": True, "1": True, "yes": True, "on": True,
    "false": False, "0": False, "no": False, "off": False,
}  # fmt: skip


@dataclass(frozen=True)
class _Bool(_Check):
    def __call__(self, value: object, path: str) -> object:
        if isinstance(value, bool):
            return value
        raise _Bad(f"must be true or false, got {_show(value)}", path)

    def from_text(self, text: str, path: str) -> object:
        try:
            return _BOOL_WORDS[text.strip().lower()]
        except KeyError:
            words = ", ".join(_BOOL_WORDS)
            raise _Bad(f"must be one of {words}, got {_show(text)}", path) from None


@dataclass(frozen=True)
class _Choice(_Check):
    choices: tuple[str, ...]
    convert: Callable[[str], object] = str

    @classmethod
    def of(cls, kind: type[enum.StrEnum]) -> _Choice:
        return cls(tuple(member.value for member in kind), kind)

    def __call__(self, value: object, path: str) -> object:
        # Case-insensitive everywhere: "Ollama" and "INFO" are not worth an error.
        folded = value.strip().lower() if isinstance(value, str) else None
        if folded is not None and folded in self.choices:
            return self.convert(folded)
        problem = f"must be one of {', '.join(self.choices)}, got {_show(value)}"
        near = difflib.get_close_matches(folded or "", self.choices, n=1, cutoff=0.6)
        raise _Bad(problem + (f"; did you mean '{near[0]}'?" if near else ""), path)


@dataclass(frozen=True)
class _Optional(_Check):
    inner: _Check

    def __call__(self, value: object, path: str) -> object:
        return None if value is None else self.inner(value, path)

    def from_text(self, text: str, path: str) -> object:
        return self.inner.from_text(text, path)


@dataclass(frozen=True)
class _Url(_Check):
    def __call__(self, value: object, path: str) -> object:
        rule = "an http:// or https:// URL with a host, like 'http://localhost:11434'"
        if not isinstance(value, str) or re.search(r"\s", value):
            raise _Bad(f"must be {rule}, got {_show(value)}", path)
        try:
            parts = urllib.parse.urlsplit(value)
            _ = parts.port  # raises on a port that is not a number or out of range
        except ValueError:
            raise _Bad(f"must be {rule}, got {_show(value)}", path) from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise _Bad(f"must be {rule}, got {_show(value)}", path)
        return value.rstrip("/")  # adapters append "/v1/..." themselves


@dataclass(frozen=True)
class _Capabilities(_Check):
    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, list | tuple):
            raise _Bad(f"must be a list drawn from {', '.join(CAPABILITIES)}", path)
        item = _Choice(CAPABILITIES)
        return frozenset(str(item(v, f"{path}[{i}]")) for i, v in enumerate(value))


@dataclass(frozen=True)
class _ModelNames(_Check):
    """A fallback list: one model name or a list of them, as a tuple."""

    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(v, str) and v for v in items):
            return tuple(items)
        raise _Bad(f"must be a model name or a list of model names, got {_show(value)}", path)


@dataclass(frozen=True)
class _Map(_Check):
    item: _Check
    what: str  # what a key names, for the empty-key message

    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, Mapping):
            raise _Bad(f"must be a table, got {_show(value)}", path)
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise _Bad(f"has an empty or invalid {self.what} {_show(key)}", path)
            out[key] = self.item(item, _join(path, key))
        return MappingProxyType(out)


@dataclass(frozen=True)
class _List(_Check):
    item: _Check

    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, list | tuple):
            raise _Bad(f"must be a list of tables ([[{path}]]), got {_show(value)}", path)
        return tuple(self.item(v, f"{path}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True)
class _Tuple(_Check):
    """A list of scalars (strings, ports), as a tuple."""

    item: _Check

    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, list | tuple):
            raise _Bad(f"must be a list, got {_show(value)}", path)
        return tuple(self.item(v, f"{path}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True)
class _Table(_Check):
    """A nested dataclass: rejects unknown keys, checks each field, applies defaults."""

    cls: type[Any]

    scalar: ClassVar[bool] = False

    def keys(self) -> dict[str, dataclasses.Field[Any]]:
        return {f.name: f for f in dataclasses.fields(self.cls) if "check" in f.metadata}

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, Mapping):
            if not path:
                raise _Bad(f"the configuration must be a table, got {_show(value)}")
            raise _Bad(f"must be a table, got {_show(value)}", path)
        known = self.keys()
        for key in value:
            if key not in known:
                raise _Bad(_unknown_key(key, path, list(known)))
        kwargs: dict[str, object] = {}
        for name, spec in known.items():
            if name in value:
                kwargs[name] = spec.metadata["check"](value[name], _join(path, name))
            elif (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            ):
                raise _Bad("is required", _join(path, name))
        return self.cls(**kwargs)


def _unknown_key(key: object, path: str, known: list[str]) -> str:
    near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = (
        f"did you mean '{_join(path, near[0])}'?"
        if near
        else f"valid keys {f'in {path}' if path else 'at the top level'}: {', '.join(known)}"
    )
    return f"unknown key '{_join(path, key)}'; {hint}"


def _meta(check: _Check, env: str | None = None) -> dict[str, object]:
    return {"check": check} if env is None else {"check": check, "env": env}


def _no_models() -> Mapping[str, ModelOverride]:
    return MappingProxyType({})


_POSITIVE: Final = _Float(0, above=True)
_AT_LEAST_ONE: Final = _Int(1)

# ---------------------------------------------------------------------------------------------
# The schema.


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: where the HTTP endpoint listens and how it shuts down."""

    host: str = field(default="0.0.0.0", metadata=_meta(_Str(), env="NEXUS_HOST"))
    # 0 asks the OS for any free port (tests, `--demo`)
    port: int = field(default=8000, metadata=_meta(_Int(0, 65535), env="NEXUS_PORT"))
    max_body_bytes: int = field(default=10 * 1024 * 1024, metadata=_meta(_AT_LEAST_ONE))
    shutdown_grace_seconds: float = field(default=30.0, metadata=_meta(_Float(0, above=False)))
    # Without a token the admin API answers loopback clients only; with one, anyone holding it.
    admin_token: str | None = field(
        default=None,
        repr=False,
        metadata=_meta(
            _Optional(_Str(r"\S{8,}", "at least 8 characters without spaces", show=False)),
            env="NEXUS_ADMIN_TOKEN",
        ),
    )
    # Backends added through the admin API, kept across restarts. Default: nexus.state.json
    # next to the config file, or in the current directory when there is none.
    state_file: str | None = field(default=None, metadata=_meta(_Optional(_Str())))


DEFAULT_SERVICE_TYPES: Final = ("_ollama._tcp.local.", "_llm._tcp.local.")
# Ollama, llama.cpp (and LocalAI), vLLM, LM Studio, exo.
DEFAULT_PROBE_PORTS: Final = (11434, 8080, 8000, 1234, 52415)


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """``[discovery]``: whether to browse mDNS and probe well-known local ports."""

    enabled: bool = field(default=True, metadata=_meta(_Bool(), env="NEXUS_DISCOVERY"))
    service_types: tuple[str, ...] = field(
        default=DEFAULT_SERVICE_TYPES,
        metadata=_meta(
            _Tuple(
                _Str(r"_[A-Za-z0-9-]+\._(tcp|udp)\.local\.", "an mDNS type like '_llm._tcp.local.'")
            )
        ),
    )
    # Addresses to listen and announce on; empty means every interface.
    interfaces: tuple[str, ...] = field(
        default=(), metadata=_meta(_Tuple(_Str(r"[0-9A-Fa-f.:]+", "an IP address")))
    )
    probe_local: bool = field(default=True, metadata=_meta(_Bool()))
    probe_ports: tuple[int, ...] = field(
        default=DEFAULT_PROBE_PORTS, metadata=_meta(_Tuple(_Int(1, 65535)))
    )
    probe_interval_seconds: float = field(default=60.0, metadata=_meta(_POSITIVE))
    # How long a backend that said goodbye (or stopped answering a probe) is remembered.
    grace_period_seconds: float = field(default=60.0, metadata=_meta(_Float(0, above=False)))


@dataclass(frozen=True, slots=True)
class HealthCheckSettings:
    """``[health_check]``: active probes; a backend flips state after N probes in a row."""

    enabled: bool = field(default=True, metadata=_meta(_Bool(), env="NEXUS_HEALTH_CHECK"))
    interval_seconds: float = field(default=10.0, metadata=_meta(_POSITIVE))
    timeout_seconds: float = field(default=5.0, metadata=_meta(_POSITIVE))
    failure_threshold: int = field(default=3, metadata=_meta(_AT_LEAST_ONE))
    recovery_threshold: int = field(default=2, metadata=_meta(_AT_LEAST_ONE))
    ejection_base_seconds: float = field(default=5.0, metadata=_meta(_POSITIVE))
    ejection_max_seconds: float = field(default=300.0, metadata=_meta(_POSITIVE))


@dataclass(frozen=True, slots=True)
class TimeoutSettings:
    """``[routing.timeouts]``: one deadline per phase of an upstream attempt."""

    connect_seconds: float = field(default=5.0, metadata=_meta(_POSITIVE))
    # response headers + first event (stream), or start of the whole answer (non-stream)
    first_token_seconds: float = field(default=60.0, metadata=_meta(_POSITIVE))
    stream_idle_seconds: float = field(default=30.0, metadata=_meta(_POSITIVE))  # between events
    request_seconds: float = field(default=600.0, metadata=_meta(_POSITIVE))  # whole non-stream


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """``[routing]``: strategy, retries, model aliases and fallbacks, per-phase timeouts."""

    strategy: Strategy = field(default=Strategy.SMART, metadata=_meta(_Choice.of(Strategy)))
    max_attempts: int = field(default=3, metadata=_meta(_AT_LEAST_ONE))
    mid_stream: MidStream = field(
        default=MidStream.CONTINUE_SAME_MODEL, metadata=_meta(_Choice.of(MidStream))
    )
    max_mid_stream_failovers: int = field(default=2, metadata=_meta(_Int(0)))
    # No new attempt starts once the request (or, after the commit, the stream's failure)
    # is this old; 0 means only max_attempts bounds failover.
    failover_timeout_seconds: float = field(default=120.0, metadata=_meta(_Float(0, above=False)))
    # Off when unset: start the next candidate beside a first one that has not
    # produced its first token after this long; the first to do so wins.
    hedge_after_ms: int | None = field(default=None, metadata=_meta(_Optional(_AT_LEAST_ONE)))
    # When every backend of the model is out of rotation, a request waits this long for
    # one to come back (a half-open probe answers within a second or two) before its 503.
    wait_for_backend_seconds: float = field(default=2.0, metadata=_meta(_Float(0, above=False)))
    aliases: Mapping[str, str] = field(
        default_factory=dict, metadata=_meta(_Map(_Str(), what="alias name"))
    )
    fallbacks: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, metadata=_meta(_Map(_ModelNames(), what="model name"))
    )
    timeouts: TimeoutSettings = field(
        default_factory=TimeoutSettings, metadata=_meta(_Table(TimeoutSettings))
    )

    def __post_init__(self) -> None:
        # Copy into read-only views so that no caller can change the settings after load.
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))
        frozen = {model: tuple(names) for model, names in self.fallbacks.items()}
        object.__setattr__(self, "fallbacks", MappingProxyType(frozen))

    def resolve_alias(self, model: str) -> str:
        """The model an alias names, following up to `MAX_ALIAS_HOPS` aliases.

        A name that is no alias is returned as is. The loader rejects cycles and longer
        chains, so this never loops::

            >>> RoutingSettings(aliases={"gpt-4": "big", "big": "llama3"}).resolve_alias("gpt-4")
            'llama3'
        """
        for _ in range(MAX_ALIAS_HOPS):
            target = self.aliases.get(model)
            if target is None:
                break
            model = target
        return model


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """``[logging]``: level (stored lower-case), line format, levels per component,
    whether request lines carry content, and how many requests ``/v1/history`` keeps."""

    level: str = field(default="info", metadata=_meta(_Choice(LOG_LEVELS), env="NEXUS_LOG_LEVEL"))
    format: LogFormat = field(
        default=LogFormat.PRETTY, metadata=_meta(_Choice.of(LogFormat), env="NEXUS_LOG_FORMAT")
    )
    # Logger name (``nexus.`` may be left out: "request", "registry", "health") -> level.
    component_levels: Mapping[str, str] = field(
        default_factory=dict, metadata=_meta(_Map(_Choice(LOG_LEVELS), what="component"))
    )
    # Prompt and answer text in the request line: off, since prompts are private.
    content: bool = field(default=False, metadata=_meta(_Bool()))
    history_size: int = field(default=200, metadata=_meta(_Int(0, 100_000)))

    def __post_init__(self) -> None:
        levels = {name: level.lower() for name, level in self.component_levels.items()}
        object.__setattr__(self, "component_levels", MappingProxyType(levels))


@dataclass(frozen=True, slots=True)
class ModelOverride:
    """``[backends.models."<id>"]``: what to believe about a model instead of the backend."""

    context_length: int | None = field(default=None, metadata=_meta(_Optional(_AT_LEAST_ONE)))
    # replaces (not extends) what the backend reports; values from `CAPABILITIES`
    capabilities: frozenset[str] | None = field(
        default=None, metadata=_meta(_Optional(_Capabilities()))
    )

    def __post_init__(self) -> None:
        if self.capabilities is not None:
            object.__setattr__(self, "capabilities", frozenset(self.capabilities))


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """``[[backends]]``: one configured backend server. Holds the NAME of its key's env var,
    never the key, so no repr or error can show a secret."""

    name: str = field(metadata=_meta(_Str(r"\S+", "a non-empty name without spaces")))
    url: str = field(metadata=_meta(_Url()))
    type: BackendType = field(default=BackendType.GENERIC, metadata=_meta(_Choice.of(BackendType)))
    priority: int = field(default=1, metadata=_meta(_Int(0)))  # lower number = preferred
    api_key_env: str | None = field(
        default=None,
        metadata=_meta(
            _Optional(
                _Str(
                    r"[A-Za-z_][A-Za-z0-9_]*",
                    "the NAME of an environment variable (letters, digits, _), not the key",
                    show=False,
                )
            )
        ),
    )
    max_concurrency: int | None = field(default=None, metadata=_meta(_Optional(_AT_LEAST_ONE)))
    # Per-backend overrides of routing.timeouts (a slow big model, say).
    first_token_seconds: float | None = field(default=None, metadata=_meta(_Optional(_POSITIVE)))
    stream_idle_seconds: float | None = field(default=None, metadata=_meta(_Optional(_POSITIVE)))
    models: Mapping[str, ModelOverride] = field(
        default_factory=_no_models,
        metadata=_meta(_Map(_Table(ModelOverride), what="model id")),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def read_api_key(self, environ: Mapping[str, str]) -> str | None:
        """The backend's API key from `environ`, or None if it has none (or it is empty).

        Example: ``backend.read_api_key(os.environ)``.
        """
        if self.api_key_env is None:
            return None
        return environ.get(self.api_key_env) or None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `nexus serve` is configured with; build it with `load_settings`.

    `config_path` is the file actually loaded (absolute; None when running on defaults) and
    `demo` is set only by the ``--demo`` flag.
    """

    server: ServerSettings = field(
        default_factory=ServerSettings, metadata=_meta(_Table(ServerSettings))
    )
    discovery: DiscoverySettings = field(
        default_factory=DiscoverySettings, metadata=_meta(_Table(DiscoverySettings))
    )
    health_check: HealthCheckSettings = field(
        default_factory=HealthCheckSettings, metadata=_meta(_Table(HealthCheckSettings))
    )
    routing: RoutingSettings = field(
        default_factory=RoutingSettings, metadata=_meta(_Table(RoutingSettings))
    )
    logging: LoggingSettings = field(
        default_factory=LoggingSettings, metadata=_meta(_Table(LoggingSettings))
    )
    backends: tuple[BackendSettings, ...] = field(
        default=(), metadata=_meta(_List(_Table(BackendSettings)))
    )
    config_path: Path | None = None
    demo: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", tuple(self.backends))


# ---------------------------------------------------------------------------------------------
# Keys settable from the environment and the command line, derived from the schema.


def _leaves(cls: type[Any], prefix: str) -> Iterator[tuple[str, dataclasses.Field[Any]]]:
    for spec in _Table(cls).keys().values():
        check = spec.metadata["check"]
        key = _join(prefix, spec.name)
        if isinstance(check, _Table):
            yield from _leaves(check.cls, key)
        elif (check.inner if isinstance(check, _Optional) else check).scalar:
            yield key, spec


_SCALARS: Final[Mapping[str, _Check]] = MappingProxyType(
    {key: spec.metadata["check"] for key, spec in _leaves(Settings, "")}
)
ENV_VARS: Final[Mapping[str, str]] = MappingProxyType(
    {spec.metadata["env"]: key for key, spec in _leaves(Settings, "") if "env" in spec.metadata}
)
"""``NEXUS_*`` variable → dotted key it sets, e.g. ``NEXUS_PORT`` → ``server.port``."""
OVERRIDE_KEYS: Final[tuple[str, ...]] = (*_SCALARS, "demo")
"""Every dotted key `load_settings` accepts in `overrides`."""


# ---------------------------------------------------------------------------------------------
# Loading.


def _check_cross(settings: Settings) -> None:
    """What no single value shows: alias chains, self-fallbacks, duplicate names."""
    aliases = settings.routing.aliases
    for start in aliases:
        chain = [start]
        while chain[-1] in aliases:
            target = aliases[chain[-1]]
            if target in chain:
                cycle = " → ".join([*chain[chain.index(target) :], target])
                raise _Bad(f"routing.aliases: alias cycle {cycle}")
            chain.append(target)
            if len(chain) - 1 > MAX_ALIAS_HOPS:
                raise _Bad(
                    f"routing.aliases: alias chain {' → '.join(chain)} is longer than "
                    f"{MAX_ALIAS_HOPS} hops; point the alias at the model directly"
                )
    for model, names in settings.routing.fallbacks.items():
        if model in names:
            raise _Bad(f"must not list {model!r} itself", _join("routing.fallbacks", model))
    seen: dict[str, int] = {}
    for i, backend in enumerate(settings.backends):
        if backend.name in seen:
            raise _Bad(
                f"{backend.name!r} is already used by backends[{seen[backend.name]}]; "
                "backend names must be unique",
                f"backends[{i}].name",
            )
        seen[backend.name] = i


def _build(data: object) -> Settings:
    settings = _Table(Settings)(data, "")
    assert isinstance(settings, Settings)
    _check_cross(settings)
    return settings


def _render(bad: _Bad, source: str, origins: Mapping[str, tuple[str, str]]) -> str:
    if bad.path is None:
        return f"{source}: {bad.problem}"
    where, name = origins.get(bad.path, (source, bad.path))
    return f"{where}: {name} {bad.problem}"


def settings_from_mapping(
    data: Mapping[str, object],
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Validate an already-parsed TOML document (e.g. ``tomllib.loads(text)``) into Settings.

    Never reads files or ``os.environ``. With `environ`, the ``NEXUS_*`` variables in it are
    applied over `data` and every backend's `api_key_env` must be set in it, as
    `load_settings` does; without, `data` is only validated. `source` prefixes each error.

    Raises:
        ConfigError: for any unknown key, bad value or inconsistency, as one line.

    Example: ``settings_from_mapping({"server": {"port": 9000}}).server.port == 9000``.
    """
    return _layered(data, source, environ, None)


def _read_toml(path: Path, name: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the config file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")  # TOML is UTF-8; tolerate the BOM some editors add
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: the config file is not UTF-8 text") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = " ".join(str(exc).split())  # keep it one line whatever tomllib says
        raise ConfigError(f"{name}: invalid TOML: {detail}") from exc


def _place(raw: dict[str, Any], key: str, value: object) -> None:
    """Set a dotted key in the raw document, copying (never changing) the tables on the way."""
    *tables, leaf = key.split(".")
    node = raw
    for part in tables:
        child = node.get(part, {})
        if not isinstance(child, Mapping):
            return  # the document's own bad value (e.g. `server = 5`) is reported instead
        node[part] = dict(child)
        node = node[part]
    node[leaf] = value


def _layered(
    data: Mapping[str, object],
    source: str,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, object] | None,
) -> Settings:
    """`data` < ``NEXUS_*`` in `environ` < `overrides`, validated; then the API keys."""
    env: Mapping[str, str] = {} if environ is None else environ
    raw: dict[str, Any] = dict(data) if isinstance(data, Mapping) else {}
    origins: dict[str, tuple[str, str]] = {}  # dotted key → (source, name) that last set it
    demo = False
    try:
        if not isinstance(data, Mapping):
            _build(data)  # says "the configuration must be a table"
        for var, key in ENV_VARS.items():
            text = env.get(var, "")
            if text.strip():  # compose files pass "" for unset variables
                origins[key] = ("environment", var)
                _place(raw, key, _SCALARS[key].from_text(text, key))
        for key, value in (overrides or {}).items():
            if value is None:
                continue
            origins[key] = ("command line", key)
            if key == "demo":
                demo = bool(_Bool()(value, key))
                continue
            check = _SCALARS.get(key)
            if check is None:
                near = difflib.get_close_matches(key, OVERRIDE_KEYS, n=1, cutoff=0.6)
                hint = (
                    f"did you mean '{near[0]}'?" if near else f"valid: {', '.join(OVERRIDE_KEYS)}"
                )
                raise ConfigError(f"command line: unknown key '{key}'; {hint}")
            if isinstance(value, str):
                value = check.from_text(value, key)
            _place(raw, key, value)
        settings = _build(raw)
    except _Bad as bad:
        raise ConfigError(_render(bad, source, origins)) from None

    for i, backend in enumerate(settings.backends if environ is not None else ()):
        # Fail at startup, not at the first request, when a key is missing.
        if backend.api_key_env is not None and backend.read_api_key(env) is None:
            raise ConfigError(
                f"{source}: backends[{i}] ({backend.name!r}): api_key_env names "
                f"{backend.api_key_env}, which is not set in the environment"
            )
    return dataclasses.replace(settings, demo=demo) if demo else settings


def load_settings(
    *,
    config_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the Settings: defaults < TOML file < ``NEXUS_*`` environment < `overrides`.

    Args:
        config_path: the ``--config`` flag. Else ``$NEXUS_CONFIG`` (if non-empty), else
            ``./nexus.toml``; only the last may be missing (then defaults are used).
        overrides: CLI flags by dotted key (`OVERRIDE_KEYS`), e.g. ``{"server.port": 9000,
            "demo": True}``. A None value means "flag not given". A string for a non-string
            key is read like an env var (``"9000"``, ``"off"``).
        environ: the environment (default ``os.environ``): the ``NEXUS_*`` variables in
            `ENV_VARS` (empty ones count as unset; unknown ones are ignored) and every
            backend's `api_key_env`, which must be set and non-empty.

    Raises:
        ConfigError: one line naming the file, variable or flag and the key at fault.

    Example::

        settings = load_settings(config_path=args.config, overrides={"server.port": args.port})
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if config_path is not None:
        name, named = os.fspath(config_path), True
    elif env.get(CONFIG_ENV_VAR):
        name, named = env[CONFIG_ENV_VAR], True
    else:
        name, named = DEFAULT_CONFIG_FILE, False
    path = Path(name)
    raw: dict[str, Any] = {}
    loaded: Path | None = None
    if path.exists():
        raw, loaded = _read_toml(path, name), path.absolute()
    elif named:
        raise ConfigError(f"config file '{name}' does not exist")

    settings = _layered(raw, name, env, overrides)
    return dataclasses.replace(settings, config_path=loaded)
