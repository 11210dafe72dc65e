"""Loading: a TOML file, then ``NEXUS_*`` variables, then command-line values → `Settings`.

Precedence is defaults < file < environment < command line, and **each layer is validated
on its own** before the next is laid over it. A bad value in the file is an error even when
a variable or a flag overrides that key (or the same file would fail on the next start,
without the flag); a bad variable is an error even when a flag overrides it.

Every problem is a `ConfigError` whose message is one line naming where the bad value came
from (the file, ``environment: NEXUS_PORT`` or ``command line: server.port``), the dotted
key, and what would be accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from nexus_trio.config._checks import Bad, Bool, Table
from nexus_trio.config.consistency import check_consistency
from nexus_trio.config.keys import ENV_VARS, OVERRIDE_KEYS, schema_key
from nexus_trio.config.schema import Settings
from nexus_trio.errors import ConfigError

__all__ = ["CONFIG_ENV_VAR", "DEFAULT_CONFIG_FILE", "load_settings", "settings_from_mapping"]

CONFIG_ENV_VAR: Final = "NEXUS_CONFIG"
DEFAULT_CONFIG_FILE: Final = "nexus.toml"


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
        ConfigError: one line naming the file, variable or flag and the key at fault; the
            file is checked first, then the environment, then `overrides`.

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


def _layered(
    data: object,
    source: str,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, object] | None,
) -> Settings:
    """`data` < ``NEXUS_*`` in `environ` < `overrides`, each validated; then the API keys."""
    try:
        settings = Table(Settings)(data, "")
        assert isinstance(settings, Settings)
        check_consistency(settings)
    except Bad as bad:
        raise ConfigError(_message(source, bad)) from None
    env: Mapping[str, str] = {} if environ is None else environ
    settings = _laid_over(settings, _environment_values(env), "environment")
    values, demo = _command_line_values(overrides or {})
    settings = _laid_over(settings, values, "command line")

    for i, backend in enumerate(settings.backends if environ is not None else ()):
        # Fail at startup, not at the first request, when a key is missing.
        if backend.api_key_env is not None and backend.read_api_key(env) is None:
            raise ConfigError(
                f"{source}: backends[{i}] ({backend.name!r}): api_key_env names "
                f"{backend.api_key_env}, which is not set in the environment"
            )
    return dataclasses.replace(settings, demo=True) if demo else settings


def _message(source: str, bad: Bad, name: str | None = None) -> str:
    """One line: where the value came from, the key (or `name`, a variable), the problem."""
    if bad.path is None:
        return f"{source}: {bad.problem}"
    return f"{source}: {name or bad.path} {bad.problem}"


def _environment_values(env: Mapping[str, str]) -> dict[str, object]:
    """The ``NEXUS_*`` variables set in `env`, each checked alone, by dotted key."""
    values: dict[str, object] = {}
    for var, key in ENV_VARS.items():
        text = env.get(var, "")
        if not text.strip():  # compose files pass "" for unset variables
            continue
        check = schema_key(key).check
        try:
            values[key] = check(check.from_text(text, key), key)
        except Bad as bad:
            raise ConfigError(_message("environment", bad, name=var)) from None
    return values


def _command_line_values(overrides: Mapping[str, object]) -> tuple[dict[str, object], bool]:
    """The flags given in `overrides`, each checked alone, by dotted key; and ``demo``."""
    values: dict[str, object] = {}
    demo = False
    for key, value in overrides.items():
        if value is None:
            continue  # a flag that was not given
        try:
            if key == "demo":
                demo = bool(Bool()(value, key))
                continue
            if key not in OVERRIDE_KEYS:
                near = difflib.get_close_matches(key, OVERRIDE_KEYS, n=1, cutoff=0.6)
                hint = (
                    f"did you mean '{near[0]}'?" if near else f"valid: {', '.join(OVERRIDE_KEYS)}"
                )
                raise ConfigError(f"command line: unknown key '{key}'; {hint}")
            check = schema_key(key).check
            if isinstance(value, str):
                value = check.from_text(value, key)
            values[key] = check(value, key)
        except Bad as bad:
            raise ConfigError(_message("command line", bad)) from None
    return values, demo


def _laid_over(settings: Settings, values: Mapping[str, object], layer: str) -> Settings:
    """`settings` with checked `values` (by dotted key) in place; the rules across keys are
    checked again, and a broken one is blamed on `layer`, which broke it."""
    if not values:
        return settings
    for key, value in values.items():
        settings = _replace(settings, key.split("."), value)
    try:
        check_consistency(settings)
    except Bad as bad:
        raise ConfigError(_message(layer, bad)) from None
    return settings


def _replace(node: Any, path: list[str], value: object) -> Any:
    """A copy of the dataclass `node` with the field at `path` set to `value`."""
    head, *rest = path
    new = value if not rest else _replace(getattr(node, head), rest, value)
    return dataclasses.replace(node, **{head: new})
