"""The keys of the settings schema, walked once, for whatever reads or shows them.

`schema_keys` lists every key with everything the schema declares about it (a `SchemaKey`):
the loader takes the environment names and command-line keys from here (`ENV_VARS`,
`OVERRIDE_KEYS`), ``nexus serve`` its flags and their help, ``nexus config init`` and README's
key list their text. None of them names a key the schema does not have::

    >>> schema_key("server.port").env
    'NEXUS_PORT'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from nexus_trio.config._checks import ArrayOfTables, Check, Map, Table
from nexus_trio.config.schema import Settings

__all__ = ["ENV_VARS", "OVERRIDE_KEYS", "SchemaKey", "schema_key", "schema_keys"]


@dataclass(frozen=True, slots=True)
class SchemaKey:
    """One key of the settings schema, as declared in `nexus_trio.config.schema`.

    `path` is dotted; keys inside an array or a map of tables are named without an index or
    an entry (``backends.name``, ``backends.models.context_length``). `kind` is "table" (a
    nested dataclass), "tables" (an array of tables, ``[[backends]]``), "map" (free keys to
    values, ``[routing.aliases]``), "map-tables" (free keys to tables,
    ``[backends.models."<id>"]``) or "value". `cls` is the dataclass of a table, or of each
    item of "tables" and "map-tables". `default` is `dataclasses.MISSING` for a required key.
    `settable` keys may be set by an environment variable or the command line: the values
    outside arrays and maps.
    """

    path: str
    name: str
    kind: str
    check: Check
    doc: str
    default: Any
    example: str | None
    env: str | None
    flags: tuple[str, ...]
    cls: type[Any] | None
    settable: bool

    def describe(self) -> str:
        """Its description, and the words it accepts if it takes one of a few:
        ``"How ... are ordered. One of smart, round_robin, ..."``."""
        if not self.check.choices():
            return self.doc
        accepted = self.check.expects()
        return f"{self.doc} {accepted[0].upper()}{accepted[1:]}."


def _kind(check: Check) -> tuple[str, type[Any] | None]:
    if isinstance(check, Table):
        return "table", check.cls
    if isinstance(check, ArrayOfTables) and isinstance(check.item, Table):
        return "tables", check.item.cls
    if isinstance(check, Map):
        return ("map-tables", check.item.cls) if isinstance(check.item, Table) else ("map", None)
    return "value", None


def _children(cls: type[Any], prefix: str, in_items: bool) -> Iterator[SchemaKey]:
    """The loadable fields of `cls` in declaration order, each followed by its own keys."""
    for spec in Table(cls).keys().values():
        check: Check = spec.metadata["check"]
        if spec.default_factory is not dataclasses.MISSING:
            default: Any = spec.default_factory()
        else:
            default = spec.default
        path = f"{prefix}.{spec.name}" if prefix else spec.name
        kind, item = _kind(check)
        key = SchemaKey(
            path=path,
            name=spec.name,
            kind=kind,
            check=check,
            doc=spec.metadata["doc"],
            default=default,
            example=spec.metadata["example"],
            env=spec.metadata["env"],
            flags=spec.metadata["flags"],
            cls=item,
            settable=kind == "value" and not in_items and check.settable(),
        )
        yield key
        if item is not None:
            yield from _children(item, path, in_items or kind != "table")


_KEYS: Final = tuple(_children(Settings, "", in_items=False))
_BY_PATH: Final[Mapping[str, SchemaKey]] = MappingProxyType({key.path: key for key in _KEYS})


def schema_keys() -> tuple[SchemaKey, ...]:
    """Every key of the schema, depth first: ``server``, ``server.host``, ...,
    ``backends.models.capabilities``."""
    return _KEYS


def schema_key(path: str) -> SchemaKey:
    """The key at dotted `path` (as `schema_keys` names it). Raises KeyError if none."""
    return _BY_PATH[path]


ENV_VARS: Final[Mapping[str, str]] = MappingProxyType(
    {key.env: key.path for key in _KEYS if key.env is not None}
)
"""``NEXUS_*`` variable → dotted key it sets, e.g. ``NEXUS_PORT`` → ``server.port``."""

OVERRIDE_KEYS: Final[tuple[str, ...]] = (*(key.path for key in _KEYS if key.settable), "demo")
"""Every dotted key `load_settings` accepts in `overrides`."""
