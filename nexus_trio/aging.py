"""A bounded map that forgets: per group, at most so many entries, each for at most so
long since it was last set, the least recently set forgotten first.

Plain data: times are given (``now``), never read. The registry keeps conversation
affinity in one (`nexus_trio.routing.affinity` says what goes in it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable

__all__ = ["AgingTable"]


class AgingTable:
    """``key → value`` per group (a model), at most ``max_entries`` per group, each for at
    most ``max_age`` seconds since it was last set.

    Example::

        table = AgingTable(max_entries=2, max_age=60)
        table.set("llama3", ["k1"], "gpu-1", now=0)
        table.get("llama3", "k1", now=30)  # "gpu-1"
        table.get("llama3", "k1", now=61)  # None: too old
    """

    __slots__ = ("_groups", "max_age", "max_entries")

    def __init__(self, max_entries: int, max_age: float) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        # Per group, in the order the keys were last set: (value, when), oldest first.
        self._groups: dict[str, OrderedDict[Hashable, tuple[str, float]]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._groups.values())

    def entries(self, group: str) -> int:
        """How many entries ``group`` holds now."""
        return len(self._groups.get(group, ()))

    def oldest(self, group: str) -> float | None:
        """When the least recently set entry of ``group`` was set."""
        entries = self._groups.get(group)
        return next(iter(entries.values()))[1] if entries else None

    def set(self, group: str, keys: Iterable[Hashable], value: str, now: float) -> None:
        """Each of ``keys`` of ``group`` maps to ``value`` from ``now``."""
        entries = self._groups.get(group)
        if entries is None:
            entries = self._groups[group] = OrderedDict()
        for key in keys:
            entries[key] = (value, now)
            entries.move_to_end(key)
        # Set in order, so the expired ones are at the front.
        limit = now - self.max_age
        while entries and next(iter(entries.values()))[1] < limit:
            entries.popitem(last=False)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def get(self, group: str, key: Hashable, now: float) -> str | None:
        """The value of ``key`` in ``group``, unless it is older than ``max_age``."""
        entries = self._groups.get(group)
        found = entries.get(key) if entries else None
        if found is None or found[1] < now - self.max_age:
            return None
        return found[0]

    def has(self, group: str) -> bool:
        """Whether ``group`` holds anything (expired entries included)."""
        return bool(self._groups.get(group))
