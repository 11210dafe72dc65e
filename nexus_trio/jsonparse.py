"""JSON parsing on the hot path: orjson where it can, the standard library where not.

Every request body and every streamed event is parsed once; orjson does that
about three times faster than ``json``. It is stricter in two corners JSON
allows — UTF-16/32 bodies and lone surrogate escapes (``"\\ud800"``) — and it
reports errors in its own words, so anything it refuses is parsed again by
``json``, which either accepts it or raises the usual, well-worded error.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["loads"]


def loads(data: bytes | str) -> Any:
    """Parse JSON text like ``json.loads``, faster.

    Raises:
        ValueError: it is not JSON (``json.JSONDecodeError``, or ``UnicodeDecodeError``).
        RecursionError: it nests deeper than Python's recursion limit.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
