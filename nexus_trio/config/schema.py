"""The settings schema: frozen dataclasses, one per TOML table, each key described once.

Every key the loader reads is declared with `_key`, which stores in the field's metadata its
checker, a sentence for people, an example where the default cannot show one, and its
``NEXUS_*`` variable and ``nexus serve`` flag if it has them. Everything else is derived
from these fields (`nexus_trio.config.keys` walks them): the loader, the environment names,
the flags and their help, ``nexus config init`` and README's key list. Adding a key is one
declaration here; tests then ask for what cannot follow by itself (README's key list to be
regenerated, a ``nexus serve`` parameter for a new flag).

Direct construction (``RoutingSettings(aliases=...)``) is not validated; the loader is.
"""

# ruff: noqa: RUF009  (`_key` returns a `dataclasses.field`, which ruff cannot see through)

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from nexus_trio.config._checks import (
    ArrayOfTables,
    Bool,
    Check,
    Choice,
    Float,
    Int,
    ListOf,
    Map,
    ModelNames,
    OrNone,
    SetOf,
    Str,
    Table,
    Url,
)
from nexus_trio.config.levels import LOG_LEVEL, canonical_level

__all__ = [
    "CAPABILITIES",
    "DEFAULT_PROBE_PORTS",
    "DEFAULT_SERVICE_TYPES",
    "MAX_ALIAS_HOPS",
    "AffinitySettings",
    "AuthSettings",
    "BackendSettings",
    "BackendType",
    "DiscoverySettings",
    "EngineLoadSettings",
    "HealthCheckSettings",
    "LogFormat",
    "LoggingSettings",
    "MidStream",
    "ModelOverride",
    "Period",
    "Priority",
    "Privacy",
    "QueueSettings",
    "RoutingSettings",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "Strategy",
    "TimeoutSettings",
    "Zone",
]

MAX_ALIAS_HOPS: Final = 3
CAPABILITIES: Final = ("vision", "tools", "json", "completion", "embedding")
DEFAULT_SERVICE_TYPES: Final = ("_ollama._tcp.local.", "_llm._tcp.local.")
# Ollama, llama.cpp (and LocalAI), vLLM, LM Studio, exo.
DEFAULT_PROBE_PORTS: Final = (11434, 8080, 8000, 1234, 52415)


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


class Zone(enum.StrEnum):
    """Where a backend runs, for privacy: requests that must stay local never reach cloud."""

    LOCAL = "local"
    CLOUD = "cloud"


class Privacy(enum.StrEnum):
    """Which zones may serve a key's (or a request's) work."""

    LOCAL = "local"  # local backends only, never a cloud one
    ANY = "any"


class Period(enum.StrEnum):
    """How often a key's budget starts again (UTC): at midnight, or on the 1st."""

    DAY = "day"
    MONTH = "month"


class Priority(enum.StrEnum):
    """A key's place in the queue when backends are full (high before normal before low)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


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


def _key(
    check: Check,
    doc: str,
    *,
    default: Any = dataclasses.MISSING,
    factory: Callable[[], Any] | None = None,
    example: str | None = None,
    env: str | None = None,
    flags: tuple[str, ...] = (),
    secret: bool = False,
) -> Any:
    """A field the loader reads. Its metadata holds:

    ``check``   the `_checks` checker of its values;
    ``doc``     one sentence for people (``nexus config init``, README, flag help);
    ``example`` TOML text shown where the default cannot be written: None, a required key,
                an entry of a map (for a map of tables, the example key);
    ``env``     its ``NEXUS_*`` variable, if any;
    ``flags``   its ``nexus serve`` option declarations, if any (``("--port", "-p")``).

    A `secret` is left out of reprs.
    """
    metadata = {"check": check, "doc": doc, "example": example, "env": env, "flags": flags}
    if factory is not None:
        return field(default_factory=factory, repr=not secret, metadata=metadata)
    return field(default=default, repr=not secret, metadata=metadata)


def _table(cls: type[Any], doc: str) -> Any:
    """A field holding the nested table `cls`, all defaults unless the file says otherwise."""
    return _key(Table(cls), doc, factory=cls)


_POSITIVE: Final = Float(0, above=True)
_NOT_NEGATIVE: Final = Float(0, above=False)
_AT_LEAST_ONE: Final = Int(1)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: where the HTTP endpoint listens, and who may use the admin API."""

    host: str = _key(
        Str(),
        "Address to listen on; 0.0.0.0 is every IPv4 interface, :: every IPv6 one.",
        default="0.0.0.0",
        env="NEXUS_HOST",
        flags=("--host",),
    )
    port: int = _key(
        Int(0, 65535),
        "TCP port to listen on; 0 asks the OS for a free one.",
        default=8000,
        env="NEXUS_PORT",
        flags=("--port", "-p"),
    )
    max_body_bytes: int = _key(
        _AT_LEAST_ONE,
        "Largest request body accepted; bigger ones get HTTP 413.",
        default=10 * 1024 * 1024,
    )
    shutdown_grace_seconds: float = _key(
        _NOT_NEGATIVE,
        "On SIGINT/SIGTERM, how long requests in flight may finish before they are cut.",
        default=30.0,
    )
    admin_token: str | None = _key(
        # Not echoed in errors: what was typed may be a real token with a typo.
        OrNone(Str(r"\S{8,}", "at least 8 characters without spaces", reveal=False)),
        "Token for the admin API (/admin/*), at least 8 characters. Unset: only clients on "
        "this machine may use it. Prefer the environment variable to writing it here.",
        default=None,
        example='"change-me-to-a-long-random-string"',
        env="NEXUS_ADMIN_TOKEN",
        secret=True,
    )
    state_file: str | None = _key(
        OrNone(Str()),
        "Where backends added through the admin API are kept across restarts. Unset: "
        "nexus.state.json next to the config file, else nexus/state.json in $XDG_STATE_HOME "
        "(~/.local/state).",
        default=None,
        example='"/var/lib/nexus/state.json"',
    )
    responses_kept: int = _key(
        Int(0, 1_000_000),
        "How many answers of /v1/responses are kept in memory for previous_response_id and "
        "GET /v1/responses/{id} (the least recently used goes first; 0 keeps none).",
        default=1000,
        env="NEXUS_RESPONSES_KEPT",
    )


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """``[discovery]``: finding backends by mDNS and by probing ports on this host."""

    enabled: bool = _key(
        Bool(),
        "Browse mDNS and probe local ports for backends.",
        default=True,
        env="NEXUS_DISCOVERY",
        flags=("--discovery/--no-discovery",),
    )
    service_types: tuple[str, ...] = _key(
        ListOf(Str(r"_[A-Za-z0-9-]+\._(tcp|udp)\.local\.", "an mDNS type like '_llm._tcp.local.'")),
        "mDNS service types to browse.",
        default=DEFAULT_SERVICE_TYPES,
    )
    interfaces: tuple[str, ...] = _key(
        ListOf(Str(r"[0-9A-Fa-f.:]+", "an IP address")),
        "Addresses to browse and announce on; empty means every interface.",
        default=(),
    )
    probe_local: bool = _key(
        Bool(), "Probe the well-known ports of LLM servers on this host.", default=True
    )
    probe_ports: tuple[int, ...] = _key(
        ListOf(Int(1, 65535)),
        "Ports probed on this host: Ollama, llama.cpp/LocalAI, vLLM, LM Studio, exo.",
        default=DEFAULT_PROBE_PORTS,
    )
    probe_interval_seconds: float = _key(
        _POSITIVE, "How often the local ports are probed again.", default=60.0
    )
    grace_period_seconds: float = _key(
        _NOT_NEGATIVE,
        "How long a backend that said goodbye (or stopped answering) is remembered.",
        default=60.0,
    )


@dataclass(frozen=True, slots=True)
class HealthCheckSettings:
    """``[health_check]``: active probes, and how long a failing backend is kept out."""

    enabled: bool = _key(
        Bool(),
        "Probe every backend periodically.",
        default=True,
        env="NEXUS_HEALTH_CHECK",
        flags=("--health-check/--no-health-check",),
    )
    interval_seconds: float = _key(
        _POSITIVE, "Time between two probes of one backend.", default=10.0
    )
    timeout_seconds: float = _key(
        _POSITIVE, "A probe that takes longer than this has failed.", default=5.0
    )
    failure_threshold: int = _key(
        _AT_LEAST_ONE, "Failed probes in a row before a backend is unhealthy.", default=3
    )
    recovery_threshold: int = _key(
        _AT_LEAST_ONE, "Good probes in a row before it is healthy again.", default=2
    )
    ejection_base_seconds: float = _key(
        _POSITIVE,
        "How long a backend is kept out of rotation after its first ejection by failed "
        "requests; the time doubles with each consecutive ejection.",
        default=5.0,
        example="10.0",
    )
    ejection_max_seconds: float = _key(
        _POSITIVE,
        "The longest an ejection lasts, however often it doubled; at least ejection_base_seconds.",
        default=300.0,
        example="600.0",
    )


@dataclass(frozen=True, slots=True)
class TimeoutSettings:
    """``[routing.timeouts]``: one deadline per phase of an upstream attempt."""

    connect_seconds: float = _key(_POSITIVE, "Opening the connection to a backend.", default=5.0)
    first_token_seconds: float = _key(
        _POSITIVE,
        "Until the response headers and the first event of a stream (the whole answer's start "
        "otherwise).",
        default=60.0,
    )
    stream_idle_seconds: float = _key(
        _POSITIVE, "Silence allowed between two events of a stream.", default=30.0
    )
    request_seconds: float = _key(
        _POSITIVE,
        "The whole of a request answered in one piece (not streamed to the client), "
        "continuations included.",
        default=600.0,
    )
    cold_start_seconds: float = _key(
        _NOT_NEGATIVE,
        "Added to first_token_seconds when the backend must load the model first (an Ollama "
        "model not in memory): loading a large model takes longer than any first token.",
        default=120.0,
    )


@dataclass(frozen=True, slots=True)
class AffinitySettings:
    """``[routing.affinity]``: send a conversation's turns to the backend that still holds
    its prefix in its KV cache (``smart`` routing only)."""

    enabled: bool = _key(
        Bool(),
        "Prefer the backend that served a request's conversation (its longest known message "
        "prefix, or its session: X-Session-Id, user, prompt_cache_key, metadata.user_id).",
        default=True,
        example="false",
    )
    slack: float = _key(
        _NOT_NEGATIVE,
        "The preferred backend is passed over when its load is above (1 + slack) times the "
        "mean load of the model's backends.",
        default=0.5,
        example="0.25",
    )
    max_entries: int = _key(
        _AT_LEAST_ONE,
        "Conversations remembered per model; the least recently served is forgotten first.",
        default=10_000,
    )
    max_age_seconds: float = _key(
        _POSITIVE,
        "A conversation not served for this long is forgotten (servers evict caches too).",
        default=600.0,
    )


@dataclass(frozen=True, slots=True)
class EngineLoadSettings:
    """``[routing.engine_load]``: read each server's own account of its load, on a cycle of
    its own, never on a request's path (``smart`` and ``least_busy`` routing use it)."""

    enabled: bool = _key(
        Bool(),
        "Read what each backend reports of its load: vLLM /metrics (requests running and "
        "waiting, KV-cache use), llama.cpp /metrics or /slots, Ollama /api/ps and LM Studio "
        "/api/v0/models (which models are loaded). Types with no such endpoint are skipped.",
        default=True,
        example="false",
        env="NEXUS_ENGINE_LOAD",
    )
    interval_seconds: float = _key(
        _POSITIVE, "Time between two reads of one backend's load.", default=1.0
    )
    timeout_seconds: float = _key(
        _POSITIVE,
        "A read that takes longer has failed: routing forgets the backend's last report "
        "until a read answers again.",
        default=1.0,
    )


def is_alias_pattern(name: str) -> bool:
    """Whether an alias key is a glob pattern (``*``, ``?`` or ``[...]``, as `fnmatch`)."""
    return any(c in name for c in "*?[")


@dataclass(frozen=True, slots=True)
class AliasPattern:
    """One pattern key of ``routing.aliases``, compiled."""

    key: str
    target: str
    regex: re.Pattern[str]


def alias_patterns(aliases: Mapping[str, str]) -> tuple[AliasPattern, ...]:
    """The pattern keys of ``aliases``, most specific first: the longer pattern, then (a
    tie) the one with fewer wildcards, then by name, so the order never depends on the
    file's."""
    keys = sorted(
        (k for k in aliases if is_alias_pattern(k)),
        key=lambda k: (-len(k), sum(k.count(c) for c in "*?"), k),
    )
    return tuple(AliasPattern(k, aliases[k], re.compile(fnmatch.translate(k))) for k in keys)


def matching_pattern(patterns: tuple[AliasPattern, ...], model: str) -> AliasPattern | None:
    """The most specific of ``patterns`` that matches ``model`` (case-sensitive, as model
    names are), or None."""
    for pattern in patterns:
        if pattern.regex.match(model):
            return pattern
    return None


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """``[routing]``: which backend serves a request, and what happens when it fails."""

    strategy: Strategy = _key(
        Choice.of(Strategy),
        "How the healthy backends of a model are ordered.",
        default=Strategy.SMART,
    )
    max_attempts: int = _key(
        _AT_LEAST_ONE,
        "Attempts for one request before giving up with HTTP 502; a backend that failed is "
        "tried again only once it is back in rotation.",
        default=3,
    )
    mid_stream: MidStream = _key(
        Choice.of(MidStream),
        "When a stream's backend fails after its first token: continue on another backend of "
        "the model, or on a fallback model too (continue_any), or end the stream with an "
        "error event.",
        default=MidStream.CONTINUE_SAME_MODEL,
    )
    max_mid_stream_failovers: int = _key(
        Int(0), "Continuations on another backend allowed per stream.", default=2
    )
    failover_timeout_seconds: float = _key(
        _NOT_NEGATIVE,
        "No new attempt after the request (or, mid-stream, the failure) is this old; 0: no limit.",
        default=120.0,
    )
    hedge_after_ms: int | None = _key(
        OrNone(_AT_LEAST_ONE),
        "Start the next backend beside one with no first token after this long; the first to "
        "answer wins. Unset: off.",
        default=None,
        example="1500",
    )
    wait_for_backend_seconds: float = _key(
        _NOT_NEGATIVE,
        "With every backend of the model out of rotation, wait this long for one to return "
        "before answering 503.",
        default=2.0,
    )
    stream_upstream: bool = _key(
        Bool(),
        "Stream every request from its backend and assemble non-streaming answers here, so "
        "that those get first-token and stall deadlines, hedging and mid-generation "
        "continuation too; false sends non-streaming requests upstream unchanged. Requests "
        "with n > 1 or logprobs always go upstream unchanged.",
        default=True,
        example="false",
        env="NEXUS_STREAM_UPSTREAM",
    )
    aliases: Mapping[str, str] = _key(
        Map(Str(), what="alias name"),
        f"Other names for models: a request for the key is served by the value (up to "
        f'{MAX_ALIAS_HOPS} hops). A key with * or ? is a glob pattern ("claude-*" maps '
        "every Claude model id); an exact key wins over a pattern, a longer pattern over a "
        "shorter one.",
        factory=dict,
        example='"gpt-4o" = "llama3:70b"',
    )
    fallbacks: Mapping[str, tuple[str, ...]] = _key(
        Map(ModelNames(), what="model name"),
        "Models to serve instead when no backend of the key's model can (one name or a list).",
        factory=dict,
        example='"llama3:70b" = ["llama3:8b", "mistral:7b"]',
    )
    timeouts: TimeoutSettings = _table(
        TimeoutSettings, "One deadline per phase of an attempt; when it fires, the next backend."
    )
    affinity: AffinitySettings = _table(
        AffinitySettings, "Conversation affinity: turns of one conversation to one backend."
    )
    engine_load: EngineLoadSettings = _table(
        EngineLoadSettings, "What each backend reports of its own load, read every second."
    )
    # The pattern keys of ``aliases``, most specific first (derived, not loaded).
    alias_patterns: tuple[AliasPattern, ...] = field(default=(), init=False, repr=False,
                                                     compare=False)  # fmt: skip

    def __post_init__(self) -> None:
        # Copy into read-only views so that no caller can change the settings after load.
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))
        object.__setattr__(self, "alias_patterns", alias_patterns(self.aliases))
        frozen = {model: tuple(names) for model, names in self.fallbacks.items()}
        object.__setattr__(self, "fallbacks", MappingProxyType(frozen))

    def resolve_alias(self, model: str, *, patterns: bool = True) -> str:
        """The model an alias names, following up to `MAX_ALIAS_HOPS` aliases.

        The name the client sent is looked up as an exact key, else matched against the
        pattern keys, most specific first; the hops after it follow exact keys only, so a
        catch-all pattern (``"*"``) never swallows another alias's target. Callers that know
        a backend serves ``model`` under its own name pass ``patterns=False``: a pattern
        stands for names nobody serves. A name that is no alias is returned as is. The
        loader rejects cycles and longer chains, so this never loops::

            >>> RoutingSettings(aliases={"gpt-4": "big", "big": "llama3"}).resolve_alias("gpt-4")
            'llama3'
            >>> RoutingSettings(aliases={"claude-*": "qwen3"}).resolve_alias("claude-haiku-4-5")
            'qwen3'
        """
        target = self.aliases.get(model)
        if target is None and patterns and self.alias_patterns:
            pattern = matching_pattern(self.alias_patterns, model)
            target = None if pattern is None else pattern.target
        for _ in range(MAX_ALIAS_HOPS - 1):
            if target is None:
                return model
            model, target = target, self.aliases.get(target)
        return model if target is None else target


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """``[logging]``: what is logged and how. Level names are stored in canonical form
    (`nexus_trio.config.levels`): lower case, ``warn`` as ``warning``."""

    level: str = _key(
        LOG_LEVEL,
        "The least severe level written; trace, below debug, is the most verbose.",
        default="info",
        env="NEXUS_LOG_LEVEL",
        flags=("--log-level",),
    )
    format: LogFormat = _key(
        Choice.of(LogFormat),
        "Human-readable lines, or one JSON object per line.",
        default=LogFormat.PRETTY,
        env="NEXUS_LOG_FORMAT",
        flags=("--log-format",),
    )
    component_levels: Mapping[str, str] = _key(
        Map(LOG_LEVEL, what="component"),
        'Levels per component, e.g. {registry = "debug", request = "warning"} (logger names; '
        "the nexus. prefix may be left out).",
        factory=dict,
        example='"registry" = "debug"',
    )
    content: bool = _key(
        Bool(),
        "Put prompt and answer text in request lines (off: prompts are private).",
        default=False,
    )
    history_size: int = _key(
        Int(0, 100_000), "Finished requests /v1/history and the dashboard keep.", default=200
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", canonical_level(self.level))
        levels = {name: canonical_level(level) for name, level in self.component_levels.items()}
        object.__setattr__(self, "component_levels", MappingProxyType(levels))


@dataclass(frozen=True, slots=True)
class ModelOverride:
    """``[backends.models."<id>"]``: what to believe about a model instead of the backend."""

    context_length: int | None = _key(
        OrNone(_AT_LEAST_ONE), "Context window in tokens.", default=None, example="8192"
    )
    capabilities: frozenset[str] | None = _key(
        OrNone(SetOf(Choice(CAPABILITIES))),
        "Replaces (not extends) what the backend reports.",
        default=None,
        example='["tools"]',
    )

    def __post_init__(self) -> None:
        if self.capabilities is not None:
            object.__setattr__(self, "capabilities", frozenset(self.capabilities))


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """``[[backends]]``: one configured backend server. Holds the NAME of its key's env var,
    never the key, so no repr or error can show a secret."""

    name: str = _key(
        Str(r"\S+", "a non-empty name without spaces"),
        "Stable name, shown in X-Nexus-Backend, /health, logs and the admin API.",
        example='"gpu-box"',
    )
    url: str = _key(
        Url(),
        "Where the server answers; a trailing /v1 is fine (it is never doubled).",
        example='"http://192.168.1.20:11434"',
    )
    type: BackendType = _key(
        Choice.of(BackendType),
        "The kind of server; generic works for any OpenAI-compatible one.",
        default=BackendType.GENERIC,
        example='"ollama"',
    )
    priority: int = _key(Int(0), "Lower is preferred.", default=1)
    api_key_env: str | None = _key(
        OrNone(
            Str(
                r"[A-Za-z_][A-Za-z0-9_]*",
                "the NAME of an environment variable (letters, digits, _), not the key",
                reveal=False,
            )
        ),
        "NAME of the environment variable holding its API key (never the key itself); the key "
        "is sent to this backend only.",
        default=None,
        example='"GPU_BOX_API_KEY"',
    )
    max_concurrency: int | None = _key(
        OrNone(_AT_LEAST_ONE),
        "Requests it may serve at once; unset means no limit.",
        default=None,
        example="4",
    )
    first_token_seconds: float | None = _key(
        OrNone(_POSITIVE),
        "Overrides routing.timeouts.first_token_seconds here (a slow big model, say).",
        default=None,
        example="120.0",
    )
    stream_idle_seconds: float | None = _key(
        OrNone(_POSITIVE),
        "Overrides routing.timeouts.stream_idle_seconds here.",
        default=None,
        example="60.0",
    )
    zone: Zone | None = _key(
        OrNone(Choice.of(Zone)),
        "Where it runs, for privacy: keys and requests that must stay local are never "
        "served by a cloud backend. Unset: cloud for type openai, local for the rest.",
        default=None,
        example='"cloud"',
    )
    price_input_per_mtok: float = _key(
        _NOT_NEGATIVE,
        "USD per million prompt tokens it serves, for usage costs and budgets.",
        default=0.0,
        example="0.15",
    )
    price_output_per_mtok: float = _key(
        _NOT_NEGATIVE,
        "USD per million completion tokens it serves.",
        default=0.0,
        example="0.60",
    )
    models: Mapping[str, ModelOverride] = _key(
        Map(Table(ModelOverride), what="model id"),
        "What to believe about one of its models instead of what it reports.",
        factory=lambda: MappingProxyType({}),
        example='"llama3:8b"',
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
class AuthSettings:
    """``[auth]``: API keys for the inference routes (``nexus keys``)."""

    enabled: bool = _key(
        Bool(),
        "Every API route (OpenAI, Anthropic, Ollama, completions, embeddings, the dashboard's "
        "data) needs a key made by `nexus keys create`; /health stays open. Off: no key is "
        "needed and usage is recorded as 'anonymous'.",
        default=False,
        example="true",
        env="NEXUS_AUTH",
    )
    metrics_need_key: bool = _key(
        Bool(),
        "With auth on, /metrics needs a key too.",
        default=False,
        example="true",
    )


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """``[queue]``: requests wait here when every backend that could serve them is full."""

    max_size: int = _key(
        Int(0, 1_000_000),
        "Requests that may wait at once; one more gets HTTP 429 at once (0: no queue, full "
        "backends answer 503 at once).",
        default=1000,
    )
    max_wait_seconds: float = _key(
        _NOT_NEGATIVE,
        "The longest a request waits for a backend before HTTP 503 with Retry-After.",
        default=30.0,
    )


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """``[store]``: where keys and usage are kept."""

    url: str | None = _key(
        OrNone(Str(r"sqlite:///\S+", "sqlite:/// and a file path")),
        "The database: sqlite:///path/to/nexus.db. Unset: nexus.db beside the state file.",
        default=None,
        example='"sqlite:///var/lib/nexus/nexus.db"',
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `nexus serve` is configured with; build it with `load_settings`.

    `config_path` is the file actually loaded (absolute; None when running on defaults) and
    `demo` is set only by the ``--demo`` flag.
    """

    server: ServerSettings = _table(ServerSettings, "Where the OpenAI-compatible endpoint listens.")
    discovery: DiscoverySettings = _table(
        DiscoverySettings,
        "Finding LLM servers by themselves: mDNS on the network and ports on this host.",
    )
    health_check: HealthCheckSettings = _table(
        HealthCheckSettings,
        "Active health probes, and how long a backend that fails requests stays out.",
    )
    routing: RoutingSettings = _table(
        RoutingSettings,
        "How a request picks its backend, and what happens when that backend fails.",
    )
    logging: LoggingSettings = _table(LoggingSettings, "Log lines on stderr.")
    auth: AuthSettings = _table(AuthSettings, "API keys: who may use Nexus, and their limits.")
    queue: QueueSettings = _table(QueueSettings, "Waiting for a backend instead of a refusal.")
    store: StoreSettings = _table(StoreSettings, "Where keys and usage are kept.")
    backends: tuple[BackendSettings, ...] = _key(
        ArrayOfTables(Table(BackendSettings)),
        "Backends to use besides those found by discovery; one [[backends]] table each.",
        default=(),
    )
    config_path: Path | None = None
    demo: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", tuple(self.backends))
