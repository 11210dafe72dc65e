"""The validator library of the settings schema: one small class per kind of value.

A checker takes a parsed value and its dotted path and returns the typed value, or raises
`Bad`. Values from an environment variable or a flag arrive as text; `from_text` reads them
first (``"9000"`` → 9000, ``"off"`` → False) and the same check follows. Each checker says
what it accepts in `expects()`, which both its error messages and the README's key list use,
so that the two cannot disagree::

    >>> Int(0, 65535)(8000, "server.port")
    8000
    >>> Int(0, 65535).expects()
    'an integer from 0 to 65535'
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final

__all__ = [
    "ArrayOfTables",
    "Bad",
    "Bool",
    "Check",
    "Choice",
    "Float",
    "Int",
    "ListOf",
    "Map",
    "ModelNames",
    "OrNone",
    "SetOf",
    "Str",
    "Table",
    "Url",
    "join",
    "show",
    "unknown_key",
]


class Bad(Exception):
    """A rejected value. With a `path`, the message is "<path> <problem>" and the loader names
    the source (file, env var or flag) that supplied that path; without, `problem` is whole."""

    def __init__(self, problem: str, path: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path


def show(value: object) -> str:
    """A short, one-line rendering of a bad value (repr escapes newlines)."""
    if isinstance(value, bool):
        return "true" if value else "false"  # say it the TOML way
    try:
        text = repr(value)
    except ValueError:  # int too large to print (sys.int_info.default_max_str_digits)
        return "a very large number"
    return text if len(text) <= 60 else text[:57] + "..."


def join(path: str, key: object) -> str:
    """Dotted path as TOML would spell it: model ids like ``llama3:8b`` get quoted."""
    text = str(key)
    part = text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text, ensure_ascii=False)
    return f"{path}.{part}" if path else part


def unknown_key(key: object, path: str, known: list[str]) -> str:
    """The message for a key the schema does not have, with the nearest known one."""
    near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = (
        f"did you mean '{join(path, near[0])}'?"
        if near
        else f"valid keys {f'in {path}' if path else 'at the top level'}: {', '.join(known)}"
    )
    return f"unknown key '{join(path, key)}'; {hint}"


class Check:
    """Base checker. Scalar ones may be set from the environment or the command line."""

    scalar: ClassVar[bool] = True

    def __call__(self, value: object, path: str) -> object:
        raise NotImplementedError

    def from_text(self, text: str, path: str) -> object:
        """The value an environment variable or flag spelled as `text` stands for."""
        return text

    def expects(self) -> str:
        """What is accepted, as a phrase that follows "must be"."""
        raise NotImplementedError

    def choices(self) -> tuple[str, ...]:
        """The words accepted, for checkers that take one of a few (else empty)."""
        return ()

    def settable(self) -> bool:
        """Whether a value may come from one line of text: an env var or a flag."""
        return self.scalar


@dataclass(frozen=True)
class Str(Check):
    pattern: str = r".+"
    rule: str = "a non-empty string"
    reveal: bool = True  # False where a user may have pasted a secret by mistake

    def __call__(self, value: object, path: str) -> object:
        if isinstance(value, str) and re.fullmatch(self.pattern, value, re.DOTALL):
            return value
        got = show(value) if self.reveal else "something else (value not shown)"
        raise Bad(f"must be {self.rule}, got {got}", path)

    def expects(self) -> str:
        return self.rule


@dataclass(frozen=True)
class Int(Check):
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
        raise Bad(f"must be {self.expects()}, got {show(value)}", path)

    def from_text(self, text: str, path: str) -> object:
        try:
            return int(text)
        except ValueError:
            return text  # reported by __call__ with the text as given

    def expects(self) -> str:
        span = f"from {self.lo} to {self.hi}" if self.hi is not None else f"of at least {self.lo}"
        return f"an integer {span}"


@dataclass(frozen=True)
class Float(Check):
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
        raise Bad(f"must be {self.expects()}, got {show(value)}", path)

    def from_text(self, text: str, path: str) -> object:
        try:
            return float(text)
        except ValueError:
            return text

    def expects(self) -> str:
        return f"a number {'greater than' if self.above else 'of at least'} {self.lo:g}"


BOOL_WORDS: Final = {
    "true": True, "1": True, "yes": True, "on": True,
    "false": False, "0": False, "no": False, "off": False,
}  # fmt: skip


@dataclass(frozen=True)
class Bool(Check):
    def __call__(self, value: object, path: str) -> object:
        if isinstance(value, bool):
            return value
        raise Bad(f"must be {self.expects()}, got {show(value)}", path)

    def from_text(self, text: str, path: str) -> object:
        try:
            return BOOL_WORDS[text.strip().lower()]
        except KeyError:
            words = ", ".join(BOOL_WORDS)
            raise Bad(f"must be one of {words}, got {show(text)}", path) from None

    def expects(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Choice(Check):
    """One word of `words`, case-insensitively; `aliases` are other spellings of some of them
    (``("warn", "warning")``). The value is stored as its word, passed through `convert`."""

    words: tuple[str, ...]
    convert: Callable[[str], object] = str
    aliases: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, kind: type[enum.StrEnum]) -> Choice:
        return cls(tuple(member.value for member in kind), kind)

    def __call__(self, value: object, path: str) -> object:
        # Case-insensitive everywhere: "Ollama" and "INFO" are not worth an error.
        folded = value.strip().lower() if isinstance(value, str) else None
        folded = dict(self.aliases).get(folded or "", folded)
        if folded is not None and folded in self.words:
            return self.convert(folded)
        problem = f"must be {self.expects()}, got {show(value)}"
        spellings = [*self.words, *(alias for alias, _ in self.aliases)]
        near = difflib.get_close_matches(folded or "", spellings, n=1, cutoff=0.6)
        raise Bad(problem + (f"; did you mean '{near[0]}'?" if near else ""), path)

    def expects(self) -> str:
        also = "".join(f" ({alias} means {word})" for alias, word in self.aliases)
        return f"one of {', '.join(self.words)}{also}"

    def choices(self) -> tuple[str, ...]:
        return self.words


@dataclass(frozen=True)
class OrNone(Check):
    """`inner`, or None (which TOML cannot spell: None is only ever a default)."""

    inner: Check

    def __call__(self, value: object, path: str) -> object:
        return None if value is None else self.inner(value, path)

    def from_text(self, text: str, path: str) -> object:
        return self.inner.from_text(text, path)

    def expects(self) -> str:
        return self.inner.expects()

    def choices(self) -> tuple[str, ...]:
        return self.inner.choices()

    def settable(self) -> bool:
        return self.inner.settable()


@dataclass(frozen=True)
class Url(Check):
    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, str) or re.search(r"\s", value):
            raise Bad(f"must be {self.expects()}, got {show(value)}", path)
        try:
            parts = urllib.parse.urlsplit(value)
            _ = parts.port  # raises on a port that is not a number or out of range
        except ValueError:
            raise Bad(f"must be {self.expects()}, got {show(value)}", path) from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise Bad(f"must be {self.expects()}, got {show(value)}", path)
        return value.rstrip("/")  # adapters append "/v1/..." themselves

    def expects(self) -> str:
        return "an http:// or https:// URL with a host, like 'http://localhost:11434'"


@dataclass(frozen=True)
class SetOf(Check):
    """A list of words drawn from a `Choice`, as a frozenset."""

    item: Choice

    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, list | tuple):
            raise Bad(f"must be {self.expects()}", path)
        return frozenset(str(self.item(v, f"{path}[{i}]")) for i, v in enumerate(value))

    def expects(self) -> str:
        return f"a list drawn from {', '.join(self.item.words)}"

    def choices(self) -> tuple[str, ...]:
        return self.item.words


@dataclass(frozen=True)
class ModelNames(Check):
    """A fallback list: one model name or a list of them, as a tuple."""

    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(v, str) and v for v in items):
            return tuple(items)
        raise Bad(f"must be {self.expects()}, got {show(value)}", path)

    def expects(self) -> str:
        return "a model name or a list of model names"


@dataclass(frozen=True)
class Map(Check):
    """A table of free keys (alias names, model ids) to values that `item` checks."""

    item: Check
    what: str  # what a key names, for the empty-key message

    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, Mapping):
            raise Bad(f"must be a table, got {show(value)}", path)
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise Bad(f"has an empty or invalid {self.what} {show(key)}", path)
            out[key] = self.item(item, join(path, key))
        return MappingProxyType(out)

    def expects(self) -> str:
        return f"a table of {self.what} = {self.item.expects()}"


@dataclass(frozen=True)
class ArrayOfTables(Check):
    """An array of tables (``[[backends]]``), as a tuple."""

    item: Check

    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, list | tuple):
            raise Bad(f"must be a list of tables ([[{path}]]), got {show(value)}", path)
        return tuple(self.item(v, f"{path}[{i}]") for i, v in enumerate(value))

    def expects(self) -> str:
        return "a list of tables"


@dataclass(frozen=True)
class ListOf(Check):
    """A list of scalars (strings, ports), as a tuple."""

    item: Check

    scalar: ClassVar[bool] = False

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, list | tuple):
            raise Bad(f"must be a list, got {show(value)}", path)
        return tuple(self.item(v, f"{path}[{i}]") for i, v in enumerate(value))

    def expects(self) -> str:
        return f"a list, each {self.item.expects()}"


@dataclass(frozen=True)
class Table(Check):
    """A nested dataclass: rejects unknown keys, checks each field, applies defaults.

    The loadable fields of `cls` are those whose metadata holds a checker under ``"check"``;
    the others (``config_path``, ``demo``) are set by the program, never by a file.
    """

    cls: type[Any]

    scalar: ClassVar[bool] = False

    def keys(self) -> dict[str, dataclasses.Field[Any]]:
        return {f.name: f for f in dataclasses.fields(self.cls) if "check" in f.metadata}

    def __call__(self, value: object, path: str) -> object:
        if not isinstance(value, Mapping):
            if not path:
                raise Bad(f"the configuration must be a table, got {show(value)}")
            raise Bad(f"must be a table, got {show(value)}", path)
        known = self.keys()
        for key in value:
            if key not in known:
                raise Bad(unknown_key(key, path, list(known)))
        kwargs: dict[str, object] = {}
        for name, spec in known.items():
            if name in value:
                kwargs[name] = spec.metadata["check"](value[name], join(path, name))
            elif (
                spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
            ):
                raise Bad("is required", join(path, name))
        return self.cls(**kwargs)

    def expects(self) -> str:
        return "a table"
