"""Settings: one frozen, typed object, built once from defaults < TOML < ``NEXUS_*`` < CLI.

The package, one job per module:

- `schema`: the dataclasses, one per TOML table. Each key is declared once, with its type,
  default, checker, description and example, and its ``NEXUS_*`` variable and ``nexus serve``
  flag if it has them.
- `keys`: the schema walked once into `SchemaKey` records, which everything else reads (the
  loader, the flags, ``nexus config init``, README's key list); `ENV_VARS`, `OVERRIDE_KEYS`.
- `loader`: the file, the environment and the command line, each validated on its own, then
  laid over each other (`load_settings`, `settings_from_mapping`).
- `consistency`: rules across keys (alias cycles, unique backend names, ...).
- `levels`: log level names, ``trace`` and ``warn`` included.
- `reference`: README's key list, rendered from the schema.
- `toml_text`: values and keys spelled as TOML, for what is written from the schema.
- `_checks`: the validator library the schema is written in.

The keys themselves are listed by ``nexus config init`` and in README ("Every key"), both
generated from the schema; `python -m nexus_trio.config.reference` prints the latter.
"""

from __future__ import annotations

from nexus_trio.config.keys import ENV_VARS, OVERRIDE_KEYS, SchemaKey, schema_key, schema_keys
from nexus_trio.config.levels import LOG_LEVELS, TRACE, log_level_number
from nexus_trio.config.loader import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_FILE,
    load_settings,
    settings_from_mapping,
)
from nexus_trio.config.schema import (
    CAPABILITIES,
    DEFAULT_PROBE_PORTS,
    DEFAULT_SERVICE_TYPES,
    MAX_ALIAS_HOPS,
    AffinitySettings,
    AliasPattern,
    AuthSettings,
    BackendSettings,
    BackendType,
    DiscoverySettings,
    EngineLoadSettings,
    HealthCheckSettings,
    LogFormat,
    LoggingSettings,
    MidStream,
    ModelOverride,
    Period,
    Priority,
    Privacy,
    QueueSettings,
    RoutingSettings,
    ServerSettings,
    Settings,
    StoreSettings,
    Strategy,
    TimeoutSettings,
    Zone,
    is_alias_pattern,
    matching_pattern,
)

__all__ = [
    "CAPABILITIES",
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_PROBE_PORTS",
    "DEFAULT_SERVICE_TYPES",
    "ENV_VARS",
    "LOG_LEVELS",
    "MAX_ALIAS_HOPS",
    "OVERRIDE_KEYS",
    "TRACE",
    "AffinitySettings",
    "AliasPattern",
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
    "SchemaKey",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "Strategy",
    "TimeoutSettings",
    "Zone",
    "is_alias_pattern",
    "load_settings",
    "log_level_number",
    "matching_pattern",
    "schema_key",
    "schema_keys",
    "settings_from_mapping",
]
