"""Log level names: Python's, and those of the original Nexus, ``trace`` and ``warn``.

``trace`` is the most verbose level, below DEBUG (number `TRACE`; `nexus_trio.logs` registers
the name with `logging`), and ``warn`` means ``warning``. Every place that reads a level name
goes through `LOG_LEVEL` (the schema's checker) or `log_level_number` (which `nexus_trio.logs`
applies), so the names are the same, and case-insensitive, everywhere::

    >>> log_level_number("WARN"), log_level_number("trace")
    (30, 5)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from nexus_trio.config._checks import Bad, Choice

__all__ = ["LOG_LEVEL", "LOG_LEVELS", "TRACE", "canonical_level", "log_level_number"]

TRACE: Final = 5
"""The number of ``trace``: below DEBUG (10), the most verbose level."""

_NUMBERS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "trace": TRACE,
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warning": logging.WARNING,
        "error": logging.ERROR,
        "critical": logging.CRITICAL,
    }
)
LOG_LEVELS: Final = tuple(_NUMBERS)
"""The level names as settings store them, most verbose first."""

_ALIASES: Final = (("warn", "warning"),)

LOG_LEVEL: Final = Choice(LOG_LEVELS, aliases=_ALIASES)
"""The checker of every setting that holds a level name."""


def canonical_level(name: str) -> str:
    """`name` as settings store it: lower case, ``warn`` spelled ``warning``. A name that is no
    level comes back lower-cased (only the loader rejects names)."""
    folded = name.strip().lower()
    return dict(_ALIASES).get(folded, folded)


def log_level_number(name: str) -> int:
    """The `logging` number of a level name, case-insensitively: ``"WARN"`` → 30.

    Raises:
        ValueError: `name` is no level; the message lists those that are.

    Example: ``logging.getLogger().setLevel(log_level_number(settings.logging.level))``.
    """
    try:
        return _NUMBERS[str(LOG_LEVEL(name, "level"))]
    except Bad as bad:
        raise ValueError(f"log level {bad.problem}") from None
