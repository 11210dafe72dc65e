"""A store that keeps everything in memory: for tests, and for `nexus serve` until the
SQLite store is opened (nothing outlives the process)."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from nexus_trio.policy.keys import KeyRecord
from nexus_trio.store.base import UsageRecord, UsageRow, sum_usage

__all__ = ["MemoryStore"]


class MemoryStore:
    """`nexus_trio.store.base.Store` in memory."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyRecord] = {}
        self.records: list[UsageRecord] = []

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def load_keys(self) -> Sequence[KeyRecord]:
        return list(self.keys.values())

    async def save_key(self, record: KeyRecord) -> None:
        self.keys[record.name] = record

    def record_usage(self, record: UsageRecord) -> None:
        self.records.append(record)

    async def flush(self) -> None:
        pass

    async def run_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()  # nothing to write: records are kept as they come

    async def usage(
        self, *, since: float | None = None, key: str | None = None
    ) -> Sequence[UsageRow]:
        return sum_usage(
            [
                r
                for r in self.records
                if (since is None or r.at >= since) and (key is None or r.key == key)
            ]
        )

    async def spent(self, key: str, since: float) -> float:
        return sum(r.cost_usd for r in self.records if r.key == key and r.at >= since)
