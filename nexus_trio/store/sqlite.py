"""`nexus_trio.store.base.Store` on an embedded SQLite file: one file, no server.

Why it never blocks the event loop: every SQLite call (open, each query, each write,
close) runs through `trio.to_thread.run_sync` under a `trio.CapacityLimiter` of one, so
the one connection (opened with ``check_same_thread=False``) is used by one worker
thread at a time and never by the trio thread.

Why usage is written in batches: a request's end must not wait for a disk. The sync
`SqliteStore.record_usage` only appends to a list; `SqliteStore.run_writer` writes that
list every `BATCH_SECONDS` (at once when `BATCH_SIZE` records wait), in one transaction,
and writes what is left when it is cancelled. Reads (`usage`, `spent`) add the records
still waiting to what the file holds, so a budget sees a request the moment it ends.

The file is in WAL mode: readers (another process running ``sqlite3``, a backup) do not
block the writer. ``PRAGMA user_version`` is the schema's version; `MIGRATIONS` brings
an older file up to date in `SqliteStore.open`, and a file from a newer Nexus is refused
rather than guessed at.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from nexus_trio.config import Priority, Privacy
from nexus_trio.errors import ConfigError
from nexus_trio.policy.keys import KeyRecord
from nexus_trio.store.base import UsageRecord, UsageRow, merge_usage, sum_usage

__all__ = [
    "BATCH_SECONDS",
    "BATCH_SIZE",
    "CLOSE_SECONDS",
    "MIGRATIONS",
    "SqliteStore",
]

log = logging.getLogger("nexus.store")

BATCH_SECONDS = 0.5  # how long a usage record may wait in memory
BATCH_SIZE = 100  # this many waiting records are written at once
CLOSE_SECONDS = 5.0  # the longest the last write may take when the writer stops

# Index i brings a file from version i to i + 1; the last index + 1 is the current version.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE keys (
        name TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at REAL NOT NULL,
        rpm INTEGER,
        tpm INTEGER,
        concurrency INTEGER,
        budget_usd REAL,
        period TEXT NOT NULL,
        models TEXT NOT NULL,  -- a JSON array of glob patterns
        privacy TEXT NOT NULL,
        priority TEXT NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE usage (
        at REAL NOT NULL,
        key TEXT NOT NULL,
        model TEXT NOT NULL,
        backend TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        status INTEGER NOT NULL
    );
    CREATE INDEX usage_by_key_at ON usage (key, at);
    CREATE INDEX usage_by_at ON usage (at);
    """,
)

Connect = Callable[[str], sqlite3.Connection]


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: transactions are begun and committed explicitly below.
    return sqlite3.connect(path, check_same_thread=False, isolation_level=None)


_KEY_COLUMNS = (
    "name, key_hash, prefix, created_at, rpm, tpm, concurrency, budget_usd, period, models,"
    " privacy, priority, revoked_at"
)

_SAVE_KEY = f"INSERT OR REPLACE INTO keys ({_KEY_COLUMNS}) VALUES ({', '.join('?' * 13)})"


def _key_row(r: KeyRecord) -> tuple[Any, ...]:
    return (
        r.name, r.key_hash, r.prefix, r.created_at, r.rpm, r.tpm, r.concurrency, r.budget_usd,
        r.period.value, json.dumps(list(r.models)), r.privacy.value, r.priority.value, r.revoked_at,
    )  # fmt: skip


def _key_record(row: tuple[Any, ...]) -> KeyRecord:
    (name, key_hash, prefix, created_at, rpm, tpm, concurrency, budget_usd, period, models,
     privacy, priority, revoked_at) = row  # fmt: skip
    return KeyRecord(
        name, key_hash, prefix, created_at, rpm, tpm, concurrency, budget_usd, period,
        tuple(json.loads(models)), Privacy(privacy), Priority(priority), revoked_at,
    )  # fmt: skip


class SqliteStore:
    """Keys and usage in the SQLite file ``path``.

    ``connect`` opens the connection (on the worker thread); a test may wrap it.

    Example::

        store = SqliteStore(Path("nexus.db"))
        await store.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            store.record_usage(record)      # never blocks
            ...
        await store.close()
    """

    def __init__(self, path: Path, *, connect: Connect = _connect) -> None:
        self.path = path
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        # Held while a batch is being written and while a read adds the queue to what
        # the file holds, so a read never sees a batch in both places or in neither.
        self._lock = trio.Lock()
        self._queued: list[UsageRecord] = []
        self._batch_full = trio.Event()

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"the store {self.path} is not open")
        return await trio.to_thread.run_sync(fn, conn, limiter=self._limiter)

    async def open(self) -> None:
        """Open the file (creating it), switch it to WAL and bring its schema up to date.

        Raises:
            ConfigError: the file cannot be opened, is no SQLite database, or was made
                by a newer Nexus.
        """
        try:
            self._conn = await trio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the store {self.path}: {exc}") from exc

    def _open_sync(self) -> sqlite3.Connection:
        conn = self._connect(str(self.path))
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL loses at most the last commits on a power cut, never
            # the file's consistency; usage is batched anyway.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")  # another process writing: wait
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ConfigError(
                    f"the store {self.path} has schema version {version}, newer than this"
                    f" Nexus knows ({len(MIGRATIONS)}): upgrade Nexus, or point [store] url"
                    " at another file"
                )
            for step in range(version, len(MIGRATIONS)):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in MIGRATIONS[step].split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {step + 1}")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLite may have rolled back already
                        conn.execute("ROLLBACK")
                    raise
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Write what is queued, then close the file (even when that write fails). A
        second call does nothing."""
        if self._conn is None:
            return
        try:
            await self.flush()
        finally:
            await self._run(lambda conn: conn.close())
            self._conn = None

    async def load_keys(self) -> Sequence[KeyRecord]:
        rows = await self._run(
            lambda conn: conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY name").fetchall()
        )
        return [_key_record(row) for row in rows]

    async def save_key(self, record: KeyRecord) -> None:
        row = _key_row(record)
        await self._run(lambda conn: conn.execute(_SAVE_KEY, row))

    def record_usage(self, record: UsageRecord) -> None:
        """Queue ``record``; the writer writes it within `BATCH_SECONDS`. Never blocks."""
        self._queued.append(record)
        if len(self._queued) >= BATCH_SIZE:
            self._batch_full.set()

    async def flush(self) -> None:
        """Write every queued record now, in one transaction.

        On an error the records stay queued (the next write tries them again) and the
        error is raised.
        """
        async with self._lock:
            batch, self._queued = self._queued, []
            if not batch:
                return
            rows = [
                (r.at, r.key, r.model, r.backend, r.prompt_tokens, r.completion_tokens,
                 r.cost_usd, r.status)
                for r in batch
            ]  # fmt: skip

            def write(conn: sqlite3.Connection) -> None:
                conn.execute("BEGIN")  # one transaction: one disk sync for the batch
                try:
                    conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLite may have rolled back already
                        conn.execute("ROLLBACK")
                    raise

            try:
                await self._run(write)
            except BaseException:
                self._queued[:0] = batch  # oldest first, as they came
                raise

    async def run_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write queued usage every `BATCH_SECONDS`, or at once when `BATCH_SIZE` wait;
        runs until cancelled, then writes what is left (within `CLOSE_SECONDS`).

        A failed write is logged and tried again with the next batch: the requests
        that made the records have ended, and nothing better can be done with them.
        """
        task_status.started()
        try:
            while True:
                with trio.move_on_after(BATCH_SECONDS):
                    await self._batch_full.wait()
                self._batch_full = trio.Event()
                try:
                    await self.flush()
                except sqlite3.Error as exc:
                    log.warning(
                        "cannot write usage to %s (%d records wait): %s",
                        self.path,
                        len(self._queued),
                        exc,
                    )
        finally:
            with trio.move_on_after(CLOSE_SECONDS, shield=True):
                try:
                    await self.flush()
                except (sqlite3.Error, RuntimeError) as exc:
                    log.warning("usage of %d requests not written: %s", len(self._queued), exc)

    async def usage(
        self, *, since: float | None = None, key: str | None = None
    ) -> Sequence[UsageRow]:
        where: list[str] = ["1"]
        args: list[float | str] = []
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        if key is not None:
            where.append("key = ?")
            args.append(key)
        query = (
            "SELECT key, model, backend, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens),"
            f" SUM(cost_usd) FROM usage WHERE {' AND '.join(where)} GROUP BY key, model, backend"
        )
        async with self._lock:
            rows = await self._run(lambda conn: conn.execute(query, args).fetchall())
            queued = [
                r
                for r in self._queued
                if (since is None or r.at >= since) and (key is None or r.key == key)
            ]
        return merge_usage([UsageRow(*row) for row in rows], sum_usage(queued))

    async def spent(self, key: str, since: float) -> float:
        async with self._lock:
            stored = await self._run(
                lambda conn: conn.execute(
                    "SELECT TOTAL(cost_usd) FROM usage WHERE key = ? AND at >= ?", (key, since)
                ).fetchone()[0]
            )
            queued = sum(r.cost_usd for r in self._queued if r.key == key and r.at >= since)
        return float(stored) + queued
