"""JSON on the hot path: orjson where it can, the standard library where not.

Every request body and every streamed event is parsed once; orjson does that
about three times faster than ``json``. It is stricter in two corners JSON
allows — UTF-16/32 bodies and lone surrogate escapes (``"\\ud800"``) — and it
reports errors in its own words, so anything it refuses is parsed again by
``json``, which either accepts it or raises the usual, well-worded error.

One corner orjson does not refuse but changes: an integer beyond 64 bits comes back
as a float (``-9223372036854775809`` → ``-9.223372036854776e+18``), so a body
rewritten on its way to a backend would carry a different value. Text with a run
of 19 digits (every such integer has one) goes to ``json``, which keeps it exact.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

# 19 digits in a row: where an integer may be beyond orjson's 64 bits (a string or a
# long fraction holding them costs only the slower parse).
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")


def loads(data: bytes | str) -> Any:
    """Parse JSON text like ``json.loads``, faster.

    Raises:
        ValueError: it is not JSON (``json.JSONDecodeError``, or ``UnicodeDecodeError``).
        RecursionError: it nests deeper than Python's recursion limit.
    """
    if isinstance(data, str):
        if _LONG_DIGITS_TEXT.search(data) is not None:
            return json.loads(data)
    elif _LONG_DIGITS.search(data) is not None:
        return json.loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON, about twice as fast as ``json.dumps``.

    What orjson cannot write — an integer beyond 64 bits, a lone surrogate that came in
    as ``"\\ud800"`` — is written by ``json`` (ASCII escapes keep such a string valid).
    """
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, separators=(",", ":")).encode()
