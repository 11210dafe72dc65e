"""How every ``nexus`` client command prints: plain tables and ``--json``.

Pure functions of the server's JSON. They never raise on odd input (a field missing or of
the wrong type prints as ``-``), and every string from the network goes through `clean`, so
a backend named ``"\\x1b]0;pwned\\a"`` cannot drive the terminal. ``--json`` output goes
through `render_json`: pretty, sorted keys, ASCII only.

The small readers (`as_int`, `as_number`, `as_list`, `strings`) turn a JSON value of the
wrong type into None or an empty list, which the table then shows as ``-``.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Collection, Sequence
from typing import Any, Final

__all__ = [
    "MAX_CELL_WIDTH",
    "as_int",
    "as_list",
    "as_number",
    "clean",
    "details",
    "display_width",
    "duration",
    "fit",
    "one_line",
    "render_json",
    "render_table",
    "strings",
    "yes_no",
]

MAX_CELL_WIDTH: Final = 48

# Shown as escapes rather than passed through: C0/C1 controls and DEL (terminal escape
# sequences), line and paragraph separators (a second line), bidi overrides (text that reads
# differently than it is, CVE-2021-42574), and lone surrogates (which stdout cannot encode).
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})


def clean(value: object) -> str:
    """`value` as text that is safe to print: controls become visible escapes like ``\\x1b``.

    None is ``-``; anything but a string is shown with `str`.

    Example: ``clean("evil\\x1b[2J") == "evil\\\\x1b[2J"``.
    """
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and text.isascii():
        return text  # the common case, fast
    out: list[str] = []
    for char in text:
        if char in _BIDI or unicodedata.category(char) in _UNSAFE_CATEGORIES:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def one_line(text: str) -> str:
    """`text` on one line (whitespace runs, newlines included, become one space), cleaned."""
    return clean(" ".join(text.split()))


def display_width(text: str) -> int:
    """Terminal columns `text` takes: wide East Asian characters count 2, combining marks 0."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def fit(text: str, limit: int) -> str:
    """`text` cut to at most `limit` columns, with an ellipsis when cut."""
    if display_width(text) <= limit:
        return text
    out, width = [], 0
    for char in text:
        step = display_width(char)
        if width + step > limit - 1:
            break
        out.append(char)
        width += step
    return "".join(out) + "…"


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    right: Collection[int] = (),
    max_width: int = MAX_CELL_WIDTH,
) -> str:
    """Rows as plain columns, two spaces apart, under upper-case headers; no trailing spaces.

    Every cell goes through `clean` and is cut to `max_width` columns; columns whose index is
    in `right` are right-aligned (numbers).

    Example::

        >>> print(render_table(["name", "n"], [["a", 1], ["bb", 22]], right={1}))
        NAME   N
        a      1
        bb    22
    """
    table = [[h.upper() for h in headers]] + [
        [fit(clean(cell), max_width) for cell in row] for row in rows
    ]
    widths = [max(display_width(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - display_width(cell))
            cells.append(pad + cell if i in right else cell + pad)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_json(body: object) -> str:
    """The server's JSON for scripts: indented, keys sorted, ASCII only (``\\u`` escapes for
    the rest, so nothing in it can be a terminal escape sequence)."""
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=True)


def as_list(value: object) -> list[Any]:
    """`value` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def strings(value: object) -> list[str]:
    """The items of a JSON list, each cleaned for printing."""
    return [clean(v) for v in as_list(value)]


def as_int(value: object) -> int | None:
    """`value` if it is an integer (a bool is not), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_number(value: object) -> float | None:
    """`value` as a float if it is a finite number (a bool is not), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def yes_no(value: object) -> str:
    """``yes`` or ``no`` for a bool, ``-`` for anything else."""
    return ("yes" if value else "no") if isinstance(value, bool) else "-"


def duration(seconds: object) -> str:
    """A number of seconds the way people say it: ``42s``, ``3m 5s``, ``2h 10m``, ``4d 1h``."""
    value = as_number(seconds)
    if value is None:
        return "-"
    total = int(value)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def details(rows: Sequence[tuple[object, object]]) -> str:
    """Why things are in the state they are in, under a table, one line each: the
    ``(name, detail)`` pairs whose detail is a non-blank string."""
    lines = [
        f"  {fit(clean(name), MAX_CELL_WIDTH)}: {one_line(detail)}"
        for name, detail in rows
        if isinstance(detail, str) and detail.strip()
    ]
    return "\n\n" + "\n".join(lines) if lines else ""
