"""The store: where keys and usage outlive the process.

`Store` is the interface; `nexus_trio.store.sqlite` implements it on an embedded
SQLite file (the default), and a Valkey/Redis one is to follow for several instances
sharing state. Every method is async and must never block the event loop (SQLite
runs on a thread of its own); nothing on a request's path awaits the store except
`record_usage`, which only queues the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from nexus_trio.policy.keys import KeyRecord

__all__ = ["Store", "UsageRecord", "UsageRow", "merge_usage", "sum_usage"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request's use of the fleet: who, what, where, how much, what it cost."""

    at: float  # time.time() when the request ended
    key: str  # the key's name, or "anonymous"
    model: str  # as the client asked for it
    backend: str  # that served it ("" when none did)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    status: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage summed over a group (key, model, backend) and a time span."""

    key: str
    model: str
    backend: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def merge_usage(*groups: Sequence[UsageRow]) -> list[UsageRow]:
    """Rows of several sources summed by (key, model, backend), in that order."""
    totals: dict[tuple[str, str, str], list[Any]] = {}
    for rows in groups:
        for row in rows:
            t = totals.setdefault((row.key, row.model, row.backend), [0, 0, 0, 0.0])
            t[0] += row.requests
            t[1] += row.prompt_tokens
            t[2] += row.completion_tokens
            t[3] += row.cost_usd
    return [UsageRow(*group, *t) for group, t in sorted(totals.items())]


def sum_usage(records: Sequence[UsageRecord]) -> list[UsageRow]:
    """Records summed by (key, model, backend), in that order."""
    return merge_usage(
        [
            UsageRow(r.key, r.model, r.backend, 1, r.prompt_tokens, r.completion_tokens, r.cost_usd)
            for r in records
        ]
    )


class Store(Protocol):
    """Keys and usage, kept across restarts."""

    async def open(self) -> None:
        """Create or migrate what is needed; called once before anything else."""

    async def close(self) -> None:
        """Write what is queued and release the file or connection."""

    async def load_keys(self) -> Sequence[KeyRecord]:
        """Every key, revoked ones included."""

    async def save_key(self, record: KeyRecord) -> None:
        """Insert or replace the key named ``record.name``."""

    def record_usage(self, record: UsageRecord) -> None:
        """Queue one request's usage; written in batches, off the event loop. Never blocks."""

    async def flush(self) -> None:
        """Write every queued usage record now."""

    async def run_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write queued usage in batches until cancelled (then what is left); `serve_nexus`
        runs it under its root nursery."""

    async def usage(
        self, *, since: float | None = None, key: str | None = None
    ) -> Sequence[UsageRow]:
        """Usage since ``since`` (time.time(); None: all), of one key or all, summed by
        key, model and backend (queued records included)."""

    async def spent(self, key: str, since: float) -> float:
        """USD spent by ``key`` since ``since`` (queued records included)."""
