"""Settings: sources, precedence, and one clear line for every mistake."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import pkgutil
import types
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import nexus_trio.config
from nexus_trio.config import (
    ENV_VARS,
    LOG_LEVELS,
    MAX_ALIAS_HOPS,
    OVERRIDE_KEYS,
    TRACE,
    BackendSettings,
    BackendType,
    LogFormat,
    LoggingSettings,
    RoutingSettings,
    Settings,
    Strategy,
    load_settings,
    log_level_number,
    schema_keys,
    settings_from_mapping,
)
from nexus_trio.errors import ConfigError

README_CONFIG = """
[server]
host = "0.0.0.0"
port = 8000
[discovery]
enabled = true
[[backends]]
name = "local-ollama"
url = "http://localhost:11434"
type = "ollama"
priority = 1
[[backends]]
name = "gpu-server"
url = "http://192.168.1.100:8000"
type = "vllm"
priority = 2
"""


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, so no stray nexus.toml is read."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(directory: Path, text: str, name: str = "nexus.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def get(settings: Settings, key: str) -> object:
    return functools.reduce(getattr, key.split("."), settings)


def config_error(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Load `text` as nexus.toml (cwd is a fresh tmp dir) and return the error message."""
    write(Path.cwd(), text)
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ or {})
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


# --- loading ---------------------------------------------------------------------------------


def test_readme_config_loads(cwd: Path) -> None:
    path = write(cwd, README_CONFIG)
    settings = load_settings(environ={})
    assert settings.config_path == path.absolute()
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 8000
    assert settings.discovery.enabled is True
    first, second = settings.backends
    assert first == BackendSettings(
        name="local-ollama", url="http://localhost:11434", type=BackendType.OLLAMA, priority=1
    )
    assert second.name == "gpu-server"
    assert second.url == "http://192.168.1.100:8000"
    assert second.type is BackendType.VLLM
    assert second.priority == 2
    assert second.api_key_env is None
    assert second.max_concurrency is None
    assert dict(second.models) == {}
    assert settings.demo is False


def test_defaults_when_no_file(cwd: Path) -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.config_path is None
    assert settings.server.port == 8000
    assert settings.server.max_body_bytes == 10 * 1024 * 1024
    assert settings.server.shutdown_grace_seconds == 30.0
    assert settings.health_check.interval_seconds == 10.0
    assert settings.health_check.failure_threshold == 3
    assert settings.routing.strategy is Strategy.SMART
    assert settings.routing.max_attempts == 3
    assert settings.routing.timeouts.first_token_seconds == 60.0
    assert settings.logging.level == "info"
    assert settings.logging.format is LogFormat.PRETTY
    assert settings.backends == ()


def test_full_schema_loads(cwd: Path) -> None:
    write(
        cwd,
        """
        [server]
        max_body_bytes = 1024
        shutdown_grace_seconds = 0
        [health_check]
        interval_seconds = 2
        failure_threshold = 1
        [routing]
        strategy = "Least_Busy"
        max_attempts = 5
        [routing.aliases]
        "gpt-4" = "llama3:70b"
        [routing.fallbacks]
        "llama3:70b" = ["llama3:8b", "mistral"]
        "qwen" = "llama3:8b"
        [routing.timeouts]
        connect_seconds = 1.5
        [logging]
        level = "DEBUG"
        format = "json"
        [[backends]]
        name = "gpu"
        url = "https://gpu.lan:8443/"
        type = "openai"
        priority = 0
        max_concurrency = 4
        [backends.models."llama3:70b"]
        context_length = 8192
        capabilities = ["tools", "json"]
        """,
    )
    settings = load_settings(environ={})
    assert settings.server.max_body_bytes == 1024
    interval = settings.health_check.interval_seconds
    assert interval == 2.0
    assert isinstance(interval, float)  # an int is accepted where a float is expected
    assert settings.routing.strategy is Strategy.LEAST_BUSY
    assert settings.routing.aliases == {"gpt-4": "llama3:70b"}
    assert settings.routing.fallbacks == {
        "llama3:70b": ("llama3:8b", "mistral"),
        "qwen": ("llama3:8b",),
    }
    assert settings.routing.timeouts.connect_seconds == 1.5
    assert settings.routing.timeouts.request_seconds == 600.0
    assert settings.logging.level == "debug"
    assert settings.logging.format is LogFormat.JSON
    (gpu,) = settings.backends
    assert gpu.url == "https://gpu.lan:8443"  # trailing slash stripped
    assert gpu.type is BackendType.OPENAI
    assert gpu.priority == 0
    assert gpu.max_concurrency == 4
    override = gpu.models["llama3:70b"]
    assert override.context_length == 8192
    assert override.capabilities == frozenset({"tools", "json"})


def test_settings_are_immutable(cwd: Path) -> None:
    write(cwd, '[routing.aliases]\na = "b"\n' + README_CONFIG)
    settings = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.routing.aliases["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        settings.backends[0].models["m"] = None  # type: ignore[index]
    assert isinstance(settings.backends, tuple)


def test_direct_construction_freezes_mappings() -> None:
    aliases = {"a": "b"}
    routing = RoutingSettings(aliases=aliases, fallbacks={"b": ["c"]})  # type: ignore[dict-item]
    aliases["a"] = "changed"
    assert routing.aliases["a"] == "b"
    assert routing.fallbacks["b"] == ("c",)


# --- precedence ------------------------------------------------------------------------------

# key, env var, default, (file TOML literal, loaded value), (env text, loaded value), CLI value
PRECEDENCE = [
    ("server.port", "NEXUS_PORT", 8000, ("9001", 9001), ("9002", 9002), 9003),
    ("server.host", "NEXUS_HOST", "0.0.0.0", ('"127.0.0.1"', "127.0.0.1"), ("::1", "::1"), "h"),
    (
        "logging.level",
        "NEXUS_LOG_LEVEL",
        "info",
        ('"warning"', "warning"),
        ("DEBUG", "debug"),
        "error",
    ),
    (
        "logging.format",
        "NEXUS_LOG_FORMAT",
        "pretty",
        ('"json"', "json"),
        ("pretty", "pretty"),
        "json",
    ),
    ("discovery.enabled", "NEXUS_DISCOVERY", True, ("false", False), ("on", True), False),
    ("health_check.enabled", "NEXUS_HEALTH_CHECK", True, ("false", False), ("YES", True), False),
    (
        "routing.stream_upstream",
        "NEXUS_STREAM_UPSTREAM",
        True,
        ("false", False),
        ("on", True),
        False,
    ),
]


@pytest.mark.parametrize("layers", ["default", "file", "env", "cli"])
@pytest.mark.parametrize(("key", "var", "default", "file", "env", "cli"), PRECEDENCE)
def test_precedence(
    cwd: Path,
    layers: str,
    key: str,
    var: str,
    default: object,
    file: tuple[str, object],
    env: tuple[str, object],
    cli: object,
) -> None:
    section, name = key.split(".")
    environ: dict[str, str] = {}
    overrides: dict[str, object] = {}
    expected = default
    if layers in ("file", "env", "cli"):
        write(cwd, f"[{section}]\n{name} = {file[0]}\n")
        expected = file[1]
    if layers in ("env", "cli"):
        environ[var] = env[0]
        expected = env[1]
    if layers == "cli":
        overrides[key] = cli
        expected = cli
    settings = load_settings(environ=environ, overrides=overrides)
    assert get(settings, key) == expected


def test_admin_token_is_never_shown() -> None:
    settings = settings_from_mapping({}, environ={"NEXUS_ADMIN_TOKEN": "tok-0123456789"})
    assert settings.server.admin_token == "tok-0123456789"
    assert "tok-0123456789" not in repr(settings)


def test_env_table_comes_from_the_schema() -> None:
    assert dict(ENV_VARS) == {
        "NEXUS_HOST": "server.host",
        "NEXUS_PORT": "server.port",
        "NEXUS_ADMIN_TOKEN": "server.admin_token",
        "NEXUS_RESPONSES_KEPT": "server.responses_kept",
        "NEXUS_DISCOVERY": "discovery.enabled",
        "NEXUS_HEALTH_CHECK": "health_check.enabled",
        "NEXUS_LOG_LEVEL": "logging.level",
        "NEXUS_LOG_FORMAT": "logging.format",
        "NEXUS_STREAM_UPSTREAM": "routing.stream_upstream",
        "NEXUS_ENGINE_LOAD": "routing.engine_load.enabled",
        "NEXUS_AUTH": "auth.enabled",
    }
    assert set(ENV_VARS.values()) <= set(OVERRIDE_KEYS)
    assert "routing.timeouts.connect_seconds" in OVERRIDE_KEYS
    assert "demo" in OVERRIDE_KEYS


@pytest.mark.parametrize(
    ("text", "expected"),
    [(w, True) for w in ("true", "1", "yes", "on", "TRUE", " On ")]
    + [(w, False) for w in ("false", "0", "no", "off", "False", "NO")],
)
def test_env_booleans(cwd: Path, text: str, expected: bool) -> None:
    assert load_settings(environ={"NEXUS_DISCOVERY": text}).discovery.enabled is expected


def test_unknown_and_empty_nexus_env_is_ignored(cwd: Path) -> None:
    settings = load_settings(environ={"NEXUS_SOMETHING_ELSE": "x", "NEXUS_PORT": ""})
    assert settings == Settings()


def test_cli_overrides(cwd: Path) -> None:
    settings = load_settings(
        environ={},
        overrides={
            "server.port": None,  # a flag that was not given
            "routing.timeouts.stream_idle_seconds": 2,
            "routing.strategy": "priority",
            "health_check.failure_threshold": "7",  # strings are read like env values
            "demo": True,
        },
    )
    assert settings.server.port == 8000
    assert settings.routing.timeouts.stream_idle_seconds == 2.0
    assert settings.routing.strategy is Strategy.PRIORITY
    assert settings.health_check.failure_threshold == 7
    assert settings.demo is True


# --- which file ------------------------------------------------------------------------------


def test_nexus_config_env_names_the_file(cwd: Path) -> None:
    path = write(cwd, "[server]\nport = 1234\n", "other.toml")
    write(cwd, "[server]\nport = 1\n")  # the default file is not read when one is named
    settings = load_settings(environ={"NEXUS_CONFIG": "other.toml"})
    assert settings.server.port == 1234
    assert settings.config_path == path.absolute()


def test_flag_beats_nexus_config(cwd: Path) -> None:
    write(cwd, "[server]\nport = 1234\n", "flag.toml")
    settings = load_settings(config_path=cwd / "flag.toml", environ={"NEXUS_CONFIG": "nope.toml"})
    assert settings.server.port == 1234


@pytest.mark.parametrize(("flag", "environ"), [("x.toml", {}), (None, {"NEXUS_CONFIG": "x.toml"})])
def test_named_file_must_exist(cwd: Path, flag: str | None, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"^config file 'x\.toml' does not exist$"):
        load_settings(config_path=flag, environ=environ)


def test_toml_syntax_error(cwd: Path) -> None:
    message = config_error("[server]\nport = \n")
    assert message.startswith("nexus.toml: invalid TOML:")
    assert "line 2" in message


def test_unreadable_file(cwd: Path) -> None:
    (cwd / "nexus.toml").mkdir()
    with pytest.raises(ConfigError, match=r"^nexus\.toml: cannot read the config file"):
        load_settings(environ={})


def test_not_utf8(cwd: Path) -> None:
    (cwd / "nexus.toml").write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(environ={})


# --- every mistake, one line -----------------------------------------------------------------

BACKEND = '[[backends]]\nname = "gpu"\nurl = "http://gpu:8000"\n'

ERRORS = [
    ("[server]\nprot = 1", ["unknown key 'server.prot'", "did you mean 'server.port'?"]),
    ("[sever]\nport = 1", ["unknown key 'sever'", "did you mean 'server'?"]),
    ("demo = true", ["unknown key 'demo'", "valid keys at the top level", "backends"]),
    ("[server]\nzzzz = 1", ["unknown key 'server.zzzz'", "valid keys in server", "host, port"]),
    (
        BACKEND + "prioirty = 2",
        ["unknown key 'backends[0].prioirty'", "did you mean 'backends[0].priority'?"],
    ),
    (
        BACKEND + '[backends.models."llama3:8b"]\ncontext = 5',
        ['backends[0].models."llama3:8b".context', "context_length"],
    ),
    ("[routing.timeouts]\nconect_seconds = 1", ["did you mean 'routing.timeouts.connect_seconds'"]),
    (
        '[server]\nport = "abc"',
        ["nexus.toml: server.port must be an integer from 0 to 65535, got 'abc'"],
    ),
    ("[server]\nport = true", ["server.port must be an integer", "got true"]),
    ("[server]\nport = 70000", ["server.port", "from 0 to 65535", "70000"]),
    ("[server]\nport = 80.0", ["server.port must be an integer"]),
    ('[server]\nhost = ""', ["server.host must be a non-empty string"]),
    ("[server]\nmax_body_bytes = 0", ["server.max_body_bytes", "at least 1"]),
    ("[server]\nshutdown_grace_seconds = -1", ["server.shutdown_grace_seconds", "at least 0"]),
    ("[health_check]\ninterval_seconds = 0", ["health_check.interval_seconds", "greater than 0"]),
    ("[health_check]\ntimeout_seconds = nan", ["health_check.timeout_seconds", "number"]),
    ("[health_check]\nenabled = 1", ["health_check.enabled must be true or false"]),
    ("[health_check]\nrecovery_threshold = 0", ["health_check.recovery_threshold"]),
    ('[routing.timeouts]\nrequest_seconds = "10"', ["routing.timeouts.request_seconds"]),
    ("[routing]\nmax_attempts = 0", ["routing.max_attempts must be an integer of at least 1"]),
    (
        '[routing]\nstrategy = "smrt"',
        ["routing.strategy must be one of smart, round_robin, priority", "did you mean 'smart'?"],
    ),
    (
        '[logging]\nlevel = "verbose"',
        ["logging.level must be one of trace, debug, info, warning, error, critical (warn means"],
    ),
    ('[logging]\nlevel = "wran"', ["logging.level", "did you mean 'warn'?"]),
    ('[logging.component_levels]\nregistry = "loud"', ["logging.component_levels.registry"]),
    (
        "[health_check]\nejection_base_seconds = 0",
        ["health_check.ejection_base_seconds", "greater than 0"],
    ),
    ("[health_check]\nejection_max_seconds = -1", ["health_check.ejection_max_seconds"]),
    (
        "[health_check]\nejection_base_seconds = 10\nejection_max_seconds = 5",
        [
            "health_check.ejection_max_seconds must be at least "
            "health_check.ejection_base_seconds (10), got 5"
        ],
    ),
    ("[health_check]\nejection_base_seconds = 400", ["ejection_max_seconds must be at least"]),
    ('[routing]\nstream_upstream = "no"', ["routing.stream_upstream must be true or false"]),
    ('[logging]\nformat = "jsn"', ["logging.format", "did you mean 'json'?"]),
    (BACKEND + 'type = "olama"', ["backends[0].type", "did you mean 'ollama'?"]),
    ("server = 5", ["server must be a table"]),
    ('[backends]\nname = "x"', ["backends must be a list of tables"]),
    (BACKEND + BACKEND, ["backends[1].name", "'gpu' is already used by backends[0]"]),
    ('[[backends]]\nname = "a"\nurl = "localhost:11434"', ["backends[0].url", "http://"]),
    ('[[backends]]\nname = "a"\nurl = "http://"', ["backends[0].url", "with a host"]),
    ('[[backends]]\nname = "a"\nurl = "ftp://x"', ["backends[0].url"]),
    ('[[backends]]\nname = "a"\nurl = "http://x:99999"', ["backends[0].url"]),
    ('[[backends]]\nname = "my gpu"\nurl = "http://x"', ["backends[0].name", "without spaces"]),
    ('[[backends]]\nurl = "http://x"', ["backends[0].name is required"]),
    ('[[backends]]\nname = "a"', ["backends[0].url is required"]),
    (BACKEND + "priority = -1", ["backends[0].priority", "at least 0"]),
    (BACKEND + "max_concurrency = 0", ["backends[0].max_concurrency"]),
    (
        BACKEND + '[backends.models.m]\ncapabilities = ["vision", "audio"]',
        ["backends[0].models.m.capabilities[1]", "vision, tools, json"],
    ),
    (BACKEND + '[backends.models.m]\ncapabilities = "vision"', ["models.m.capabilities"]),
    (BACKEND + "[backends.models.m]\ncontext_length = 0", ["models.m.context_length"]),
    ("[routing.aliases]\na = 5", ["routing.aliases.a must be a non-empty string"]),
    ('[routing.aliases]\n"" = "x"', ["routing.aliases", "empty"]),
    ("[routing.fallbacks]\na = 5", ["routing.fallbacks.a", "list of model names"]),
    ('[routing.fallbacks]\na = ["b", ""]', ["routing.fallbacks.a", "list of model names"]),
    ('[routing.fallbacks]\na = ["b", "a"]', ["routing.fallbacks.a must not list 'a' itself"]),
    (
        '[routing.aliases]\n"gpt-4" = "llama"\nllama = "gpt-4"',
        ["routing.aliases: alias cycle gpt-4 → llama → gpt-4"],
    ),
    ('[routing.aliases]\na = "a"', ["alias cycle a → a"]),
    (
        '[routing.aliases]\na = "b"\nb = "c"\nc = "d"\nd = "e"',
        ["alias chain a → b → c → d → e", f"longer than {MAX_ALIAS_HOPS} hops"],
    ),
]


@pytest.mark.parametrize(("text", "fragments"), ERRORS)
def test_error_messages(cwd: Path, text: str, fragments: list[str]) -> None:
    message = config_error(text)
    assert message.startswith("nexus.toml: ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("environ", "fragments"),
    [
        ({"NEXUS_PORT": "abc"}, ["environment: NEXUS_PORT must be an integer", "got 'abc'"]),
        ({"NEXUS_PORT": "-1"}, ["environment: NEXUS_PORT", "from 0 to 65535"]),
        ({"NEXUS_DISCOVERY": "maybe"}, ["environment: NEXUS_DISCOVERY", "yes", "'maybe'"]),
        ({"NEXUS_LOG_LEVEL": "loud"}, ["environment: NEXUS_LOG_LEVEL must be one of"]),
        ({"NEXUS_LOG_FORMAT": "jsno"}, ["NEXUS_LOG_FORMAT", "did you mean 'json'?"]),
    ],
)
def test_bad_environment(cwd: Path, environ: dict[str, str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"server.port": "abc"}, ["command line: server.port must be an integer", "'abc'"]),
        ({"server.port": True}, ["command line: server.port must be an integer", "true"]),
        ({"server.prot": 1}, ["command line: unknown key 'server.prot'", "'server.port'"]),
        ({"routing.aliases": {}}, ["command line: unknown key 'routing.aliases'"]),
        ({"zzz": 1}, ["command line: unknown key 'zzz'; valid: server.host, server.port"]),
        ({"logging.level": "loud"}, ["command line: logging.level must be one of"]),
        ({"discovery.enabled": "perhaps"}, ["command line: discovery.enabled"]),
        ({"demo": "yes"}, ["command line: demo must be true or false"]),
    ],
)
def test_bad_cli_value(cwd: Path, overrides: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_env_blames_the_file_for_the_files_mistakes(cwd: Path) -> None:
    message = config_error("[server]\nmax_body_bytes = 0\n", {"NEXUS_PORT": "9000"})
    assert message.startswith("nexus.toml: server.max_body_bytes")


def test_settings_from_mapping_layers_environ_and_checks_keys() -> None:
    data: dict[str, object] = {
        "server": {"port": 1},
        "backends": [{"name": "a", "url": "http://a", "api_key_env": "A_KEY"}],
    }
    only_validated = settings_from_mapping(data)  # no environ: keys are not looked up
    assert only_validated.server.port == 1
    settings = settings_from_mapping(data, environ={"NEXUS_PORT": "2", "A_KEY": "k"})
    assert settings.server.port == 2
    assert settings.config_path is None
    assert data["server"] == {"port": 1}  # the caller's mapping is left alone
    with pytest.raises(ConfigError, match=r"^<config>: backends\[0\] \('a'\): api_key_env"):
        settings_from_mapping(data, environ={})


# --- every layer validated on its own ----------------------------------------------------------

# A value the file, or the environment, gets wrong is an error even where a later layer sets
# the same key: otherwise the same file would fail on the next start, without the flag.
LAYERS = [
    # file, environ, overrides, the error
    (
        '[server]\nport = "eighty"',
        {"NEXUS_PORT": "9000"},
        {},
        "nexus.toml: server.port must be an integer from 0 to 65535, got 'eighty'",
    ),
    (
        '[server]\nport = "eighty"',
        {},
        {"server.port": 9000},
        "nexus.toml: server.port must be an integer from 0 to 65535, got 'eighty'",
    ),
    (
        '[server]\nport = "eighty"',
        {"NEXUS_PORT": "9000"},
        {"server.port": "9001"},
        "nexus.toml: server.port must be an integer from 0 to 65535, got 'eighty'",
    ),
    (
        '[logging]\nlevel = "loud"',
        {"NEXUS_LOG_LEVEL": "info"},
        {},
        "nexus.toml: logging.level must be one of",
    ),
    (
        "[discovery]\nenabled = 1",
        {},
        {"discovery.enabled": False},
        "nexus.toml: discovery.enabled must be true or false, got 1",
    ),
    (
        "",
        {"NEXUS_PORT": "eighty"},
        {"server.port": 9000},
        "environment: NEXUS_PORT must be an integer from 0 to 65535, got 'eighty'",
    ),
    (
        "",
        {"NEXUS_STREAM_UPSTREAM": "sometimes"},
        {"routing.stream_upstream": True},
        "environment: NEXUS_STREAM_UPSTREAM must be one of true, 1, yes, on",
    ),
    (
        "",
        {"NEXUS_LOG_LEVEL": "loud"},
        {"logging.level": "warn"},
        "environment: NEXUS_LOG_LEVEL must be one of trace",
    ),
    # The file is checked first, then the environment, then the command line.
    (
        "[server]\nport = -1",
        {"NEXUS_PORT": "x"},
        {"server.port": "y"},
        "nexus.toml: server.port",
    ),
    ("", {"NEXUS_PORT": "x"}, {"server.port": "y"}, "environment: NEXUS_PORT"),
]


@pytest.mark.parametrize(("text", "environ", "overrides", "expected"), LAYERS)
def test_each_layer_is_checked_even_where_a_later_one_overrides_it(
    cwd: Path, text: str, environ: dict[str, str], overrides: dict[str, object], expected: str
) -> None:
    write(cwd, text)
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ, overrides=overrides)
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_settings_from_mapping_checks_the_document_under_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"^x\.toml: server\.port must be an integer"):
        settings_from_mapping(
            {"server": {"port": "eighty"}}, source="x.toml", environ={"NEXUS_PORT": "1"}
        )


def test_the_layer_that_breaks_a_rule_across_keys_is_named(cwd: Path) -> None:
    write(cwd, "[health_check]\nejection_base_seconds = 10\nejection_max_seconds = 20\n")
    settings = load_settings(environ={})
    assert settings.health_check.ejection_max_seconds == 20.0
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, overrides={"health_check.ejection_max_seconds": 5})
    assert str(info.value) == (
        "command line: health_check.ejection_max_seconds must be at least "
        "health_check.ejection_base_seconds (10), got 5; it caps the doubling of that time"
    )


# --- the new keys ------------------------------------------------------------------------------


def test_ejection_and_stream_upstream_keys(cwd: Path) -> None:
    health, routing = Settings().health_check, Settings().routing
    assert (health.ejection_base_seconds, health.ejection_max_seconds) == (5.0, 300.0)
    assert routing.stream_upstream is True
    write(
        cwd,
        "[health_check]\nejection_base_seconds = 2\nejection_max_seconds = 2\n"
        "[routing]\nstream_upstream = false\n",
    )
    settings = load_settings(environ={})
    assert settings.health_check.ejection_base_seconds == 2.0  # max == base is fine
    assert isinstance(settings.health_check.ejection_max_seconds, float)
    assert settings.routing.stream_upstream is False
    environ = {"NEXUS_STREAM_UPSTREAM": "yes"}
    assert load_settings(environ=environ).routing.stream_upstream is True


# --- log level names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelled", "stored"),
    [("warn", "warning"), ("WARN", "warning"), ("trace", "trace"), ("Trace", "trace")]
    + [(name.upper(), name) for name in ("debug", "info", "warning", "error", "critical")],
)
def test_log_level_names_of_the_original_nexus_everywhere(
    cwd: Path, spelled: str, stored: str
) -> None:
    write(cwd, f'[logging]\nlevel = "{spelled}"\ncomponent_levels = {{registry = "{spelled}"}}\n')
    from_file = load_settings(environ={}).logging
    assert from_file.level == stored
    assert from_file.component_levels == {"registry": stored}
    from_env = load_settings(environ={"NEXUS_LOG_LEVEL": spelled})
    assert from_env.logging.level == stored
    from_flag = load_settings(environ={}, overrides={"logging.level": spelled})
    assert from_flag.logging.level == stored
    # Built directly, without the loader, the names are stored the same way.
    assert LoggingSettings(level=spelled).level == stored


def test_log_level_numbers() -> None:
    assert TRACE == 5
    assert LOG_LEVELS == ("trace", "debug", "info", "warning", "error", "critical")
    assert [log_level_number(name) for name in ("TRACE", "warn", "Warning", "critical")] == [
        5,
        logging.WARNING,
        logging.WARNING,
        logging.CRITICAL,
    ]
    with pytest.raises(ValueError, match="log level must be one of trace, debug"):
        log_level_number("loud")


# --- the schema describes itself ---------------------------------------------------------------


def test_every_key_is_described_with_an_example_where_its_default_cannot_be_shown() -> None:
    keys = schema_keys()
    paths = {key.path for key in keys}
    assert {"server.port", "routing.timeouts.connect_seconds", "backends.models"} <= paths
    for key in keys:
        assert key.doc.strip(), f"describe {key.path} in nexus_trio/config/schema.py"
        unwritable = key.kind == "value" and key.default in (None, dataclasses.MISSING)
        if unwritable or key.kind in ("map", "map-tables"):
            assert key.example, f"give {key.path} an example in nexus_trio/config/schema.py"


def test_every_default_passes_its_own_check() -> None:
    for key in schema_keys():
        if key.kind == "value" and key.default not in (None, dataclasses.MISSING):
            assert key.check(key.default, key.path) == key.default, key.path


def test_only_keys_outside_arrays_and_maps_have_env_names_or_flags() -> None:
    for key in schema_keys():
        if key.env or key.flags:
            assert key.settable, f"{key.path} cannot be set from one line of text"
            assert key.path in OVERRIDE_KEYS


OLD_EXPORTS = {  # what `nexus_trio.config` offered as one module; other modules import these
    "CAPABILITIES",
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_PROBE_PORTS",
    "DEFAULT_SERVICE_TYPES",
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
}


def test_the_package_docstring_names_each_of_its_modules() -> None:
    assert nexus_trio.config.__doc__ is not None
    for module in pkgutil.iter_modules(nexus_trio.config.__path__):
        assert f"- `{module.name}`: " in nexus_trio.config.__doc__, module.name


def test_the_package_exports_what_the_module_did() -> None:
    exported = set(nexus_trio.config.__all__)
    assert exported >= OLD_EXPORTS
    for name in exported:
        assert getattr(nexus_trio.config, name) is not None
    public = {
        name
        for name, value in vars(nexus_trio.config).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - {"annotations"} == exported, "list every public name in __all__"


# --- aliases ---------------------------------------------------------------------------------


def test_aliases_resolve_up_to_three_hops(cwd: Path) -> None:
    write(cwd, '[routing.aliases]\na = "b"\nb = "c"\nc = "llama3:70b"\n"gpt-4" = "c"\n')
    routing = load_settings(environ={}).routing
    assert routing.resolve_alias("a") == "llama3:70b"  # three hops
    assert routing.resolve_alias("b") == "llama3:70b"
    assert routing.resolve_alias("gpt-4") == "llama3:70b"
    assert routing.resolve_alias("llama3:70b") == "llama3:70b"
    assert routing.resolve_alias("unknown") == "unknown"


PATTERN_ALIASES = """[routing.aliases]
"claude-*" = "coder"
"claude-haiku-*" = "small"
"claude-opus-4-1" = "big"
"*" = "llama3"
coder = "qwen3-coder:30b"
"""


@pytest.mark.parametrize(
    ("asked", "served"),
    [
        ("claude-sonnet-4-5-20250929", "qwen3-coder:30b"),  # pattern, then an exact hop
        ("claude-haiku-4-5", "small"),  # the longer pattern wins
        ("claude-opus-4-1", "big"),  # an exact key wins over every pattern
        ("gpt-4o", "llama3"),  # the catch-all
        ("coder", "qwen3-coder:30b"),  # an exact key is never matched as a pattern first
        ("small", "llama3"),  # a pattern applies to any name the client sends...
    ],
)
def test_pattern_aliases_pick_the_most_specific_key(cwd: Path, asked: str, served: str) -> None:
    write(cwd, PATTERN_ALIASES)
    routing = load_settings(environ={}).routing
    assert routing.resolve_alias(asked) == served
    # ...unless the caller knows a backend serves that name itself.
    assert routing.resolve_alias("small", patterns=False) == "small"


def test_pattern_aliases_do_not_follow_patterns_after_the_first_hop(cwd: Path) -> None:
    write(cwd, '[routing.aliases]\n"claude-*" = "qwen"\n"q*" = "other"\n')
    assert load_settings(environ={}).routing.resolve_alias("claude-x") == "qwen"


def test_pattern_order_does_not_depend_on_the_file(cwd: Path) -> None:
    one = '[routing.aliases]\n"c*" = "a"\n"?laude*" = "b"\n"claude*" = "c"\n'
    two = '[routing.aliases]\n"claude*" = "c"\n"?laude*" = "b"\n"c*" = "a"\n'
    results = []
    for text in (one, two):
        write(cwd, text)
        results.append(load_settings(environ={}).routing.resolve_alias("claude-3"))
    assert results == ["c", "c"]  # same length: fewer wildcards is more specific


def test_a_pattern_that_leads_into_a_cycle_is_rejected(cwd: Path) -> None:
    message = config_error('[routing.aliases]\n"claude-*" = "a"\na = "b"\nb = "a"\n', {})
    assert "alias cycle a → b → a" in message


# --- API keys --------------------------------------------------------------------------------

KEYED = README_CONFIG + 'api_key_env = "OPENAI_API_KEY"\n'  # on backends[1], "gpu-server"


@pytest.mark.parametrize("environ", [{}, {"OPENAI_API_KEY": ""}])
def test_missing_api_key_fails_at_load(cwd: Path, environ: dict[str, str]) -> None:
    message = config_error(KEYED, environ)
    assert message == (
        "nexus.toml: backends[1] ('gpu-server'): api_key_env names OPENAI_API_KEY, "
        "which is not set in the environment"
    )


def test_api_key_is_read_but_never_shown(cwd: Path) -> None:
    write(cwd, KEYED)
    secret = "sk-very-secret-value"
    environ = {"OPENAI_API_KEY": secret}
    settings = load_settings(environ=environ)
    local, gpu = settings.backends
    assert gpu.api_key_env == "OPENAI_API_KEY"
    assert gpu.read_api_key(environ) == secret
    assert local.read_api_key(environ) is None
    assert secret not in repr(settings)
    assert secret not in str(settings)


def test_a_key_pasted_as_api_key_env_is_not_echoed(cwd: Path) -> None:
    message = config_error(BACKEND + 'api_key_env = "sk-live-1234-abcd"')
    assert "backends[0].api_key_env must be the NAME of an environment variable" in message
    assert "sk-live" not in message


def test_a_key_under_the_wrong_name_is_not_echoed(cwd: Path) -> None:
    message = config_error(BACKEND + 'api_key = "sk-live-1234-abcd"')
    assert "unknown key 'backends[0].api_key'; did you mean 'backends[0].api_key_env'?" in message
    assert "sk-live" not in message


# --- no input makes anything but a ConfigError -----------------------------------------------

KNOWN_KEYS = sorted(
    {part for key in OVERRIDE_KEYS for part in key.split(".")}
    | {"backends", "aliases", "fallbacks", "timeouts", "name", "url", "type", "priority"}
    | {"api_key_env", "max_concurrency", "models", "context_length", "capabilities"}
)
toml_keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8))
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["http://h:1", "smart", "ollama", "info", "json", "vision", "OPENAI_KEY"]),
    st.datetimes(),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(toml_keys, inner, max_size=4)
    ),
    max_leaves=20,
)


@hypothesis_settings(max_examples=300, database=None)
@given(st.dictionaries(toml_keys, toml_values, max_size=6))
def test_arbitrary_documents_only_raise_config_error(data: dict[str, object]) -> None:
    try:
        settings_from_mapping(data, source="x.toml")
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert "\n" not in message
    assert message.startswith("x.toml: ")


@pytest.fixture(scope="module")
def empty_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module-scoped file: hypothesis refuses function-scoped fixtures in @given tests."""
    return write(tmp_path_factory.mktemp("config"), "")


@hypothesis_settings(max_examples=200, database=None)
@given(environ=st.dictionaries(st.sampled_from(sorted(ENV_VARS)), st.text(max_size=10)))
def test_arbitrary_environment_only_raises_config_error(
    empty_toml: Path, environ: dict[str, str]
) -> None:
    try:
        load_settings(environ=environ, config_path=empty_toml)
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert "\n" not in message
    assert message.startswith("environment: NEXUS_")


def test_datetime_is_not_a_number() -> None:
    with pytest.raises(ConfigError, match=r"server\.shutdown_grace_seconds must be a number"):
        settings_from_mapping(
            {"server": {"shutdown_grace_seconds": datetime.time(1, 2)}}, source="x"
        )
