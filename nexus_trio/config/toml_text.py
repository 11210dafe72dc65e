"""Values, keys and strings spelled as TOML, for the files and docs written from the schema.

>>> toml_value(10 * 1024 * 1024), toml_value(("a", 1)), toml_key("llama3:8b")
('10_485_760', '["a", 1]', '"llama3:8b"')
"""

from __future__ import annotations

import enum
import re

__all__ = ["toml_key", "toml_string", "toml_value"]


def toml_key(name: str) -> str:
    """A bare key where TOML allows one, else a quoted one."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else toml_string(name)


def toml_string(text: str) -> str:
    """A TOML basic string: the quote, the backslash and every control character escaped."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return "\\" + char if char in '"\\' else f"\\u{ord(char):04x}"

    return '"' + re.sub(r'["\\\x00-\x1f\x7f]', escape, text) + '"'


def toml_value(value: object) -> str:
    """A default as TOML.

    Raises:
        TypeError: for what TOML cannot spell (None, which means "unset").
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, int):
        # 10_485_760 reads better than 10485760; ports and counts stay as they are
        return f"{value:_}" if abs(value) >= 100_000 else str(value)
    if isinstance(value, float):
        return repr(value)  # always has a "." or an exponent, as TOML floats need
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, tuple | list | frozenset):
        items = sorted(value) if isinstance(value, frozenset) else value
        return "[" + ", ".join(toml_value(item) for item in items) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")
