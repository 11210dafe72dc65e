"""The SQLite store: keys and usage kept in a file, usage written in batches off the
event loop, and a Nexus that keeps its keys across a restart."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from nexus_trio.config import Priority, Privacy, settings_from_mapping
from nexus_trio.errors import ConfigError
from nexus_trio.gateway import Gateway
from nexus_trio.policy.keys import KeyRecord
from nexus_trio.store import MemoryStore, SqliteStore, sqlite_path, store_for
from nexus_trio.store.base import UsageRecord
from nexus_trio.store.sqlite import BATCH_SIZE, MIGRATIONS
from nexus_trio.supervisor import serve_nexus

from helpers import nexus_config, sim

FULL = KeyRecord(
    name="alice",
    key_hash="a" * 64,
    prefix="nx-abcdef",
    created_at=1_700_000_000.25,
    rpm=60,
    tpm=100_000,
    concurrency=4,
    budget_usd=12.5,
    period="day",
    models=("llama3:*", "qwen*"),
    privacy=Privacy.LOCAL,
    priority=Priority.HIGH,
    revoked_at=None,
)
REVOKED = KeyRecord("bob", "b" * 64, "nx-bbbbbb", 1_700_000_001.0, revoked_at=1_700_000_100.5)


def used(
    at: float, key: str = "alice", model: str = "m", backend: str = "b", cost: float = 0.5
) -> UsageRecord:
    return UsageRecord(at, key, model, backend, 10, 5, cost, 200)


def stored_rows(path: Path) -> int:
    """Usage rows in the file, read by a connection of the test's own."""
    with sqlite3.connect(path) as conn:
        count: int = conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
    conn.close()
    return count


async def opened(path: Path | str) -> SqliteStore:
    store = SqliteStore(Path(path))
    await store.open()
    return store


async def test_keys_round_trip_every_field_and_revoked_ones_kept(tmp_path: Path) -> None:
    store = await opened(tmp_path / "nexus.db")
    await store.save_key(FULL)
    await store.save_key(REVOKED)
    assert sorted(await store.load_keys(), key=lambda r: r.name) == [FULL, REVOKED]

    changed = KeyRecord(FULL.name, FULL.key_hash, FULL.prefix, FULL.created_at, rpm=None)
    await store.save_key(changed)  # same name: replaced, not added
    assert sorted(await store.load_keys(), key=lambda r: r.name) == [changed, REVOKED]
    await store.close()


async def test_usage_is_seen_while_queued_and_after_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "nexus.db"
    store = await opened(path)
    store.record_usage(used(100.0, cost=0.25))
    store.record_usage(used(101.0, cost=0.5))
    assert stored_rows(path) == 0  # queued only
    [row] = await store.usage()
    assert (row.requests, row.prompt_tokens, row.completion_tokens, row.cost_usd) == (
        2,
        20,
        10,
        0.75,
    )
    assert await store.spent("alice", since=0) == 0.75

    await store.flush()
    assert stored_rows(path) == 2
    store.record_usage(used(102.0, cost=1.0))  # one written batch and one queued record
    [row] = await store.usage()
    assert (row.requests, row.cost_usd) == (3, 1.75)
    assert await store.spent("alice", since=0) == 1.75
    assert await store.spent("alice", since=101.0) == 1.5
    await store.close()
    assert stored_rows(path) == 3  # close writes what was queued


async def test_usage_is_summed_by_key_model_and_backend_since_a_time() -> None:
    store = await opened(":memory:")
    for record in [
        used(1.0, "alice", "llama", "gpu1", 0.25),
        used(2.0, "alice", "llama", "gpu1", 0.25),
        used(3.0, "alice", "llama", "gpu2", 0.5),
        used(4.0, "alice", "qwen", "gpu1", 1.0),
        used(5.0, "bob", "llama", "gpu1", 2.0),
    ]:
        store.record_usage(record)
        if record.at == 2.0:
            await store.flush()  # the same group, partly written and partly queued
    rows = [(r.key, r.model, r.backend, r.requests, r.cost_usd) for r in await store.usage()]
    assert rows == [
        ("alice", "llama", "gpu1", 2, 0.5),
        ("alice", "llama", "gpu2", 1, 0.5),
        ("alice", "qwen", "gpu1", 1, 1.0),
        ("bob", "llama", "gpu1", 1, 2.0),
    ]
    assert [(r.model, r.backend) for r in await store.usage(since=3.0, key="alice")] == [
        ("llama", "gpu2"),
        ("qwen", "gpu1"),
    ]
    assert await store.usage(since=6.0) == []
    assert await store.spent("bob", since=5.0) == 2.0
    assert await store.spent("bob", since=5.5) == 0.0
    await store.close()


records = st.lists(
    st.builds(
        UsageRecord,
        at=st.integers(0, 10).map(float),
        key=st.sampled_from(["alice", "bob", "anonymous"]),
        model=st.sampled_from(["llama", "qwen"]),
        backend=st.sampled_from(["gpu1", "gpu2", ""]),
        prompt_tokens=st.integers(0, 1000),
        completion_tokens=st.integers(0, 1000),
        cost_usd=st.integers(0, 8).map(lambda n: n / 4),  # exact in binary: sums are exact
        status=st.sampled_from([200, 502]),
    ),
    max_size=30,
)


@given(
    records=records,
    written=st.integers(0, 30),
    since=st.none() | st.integers(0, 11).map(float),
    key=st.none() | st.sampled_from(["alice", "bob"]),
)
async def test_usage_sums_as_the_memory_store_does(
    records: list[UsageRecord], written: int, since: float | None, key: str | None
) -> None:
    """Whatever part is written and whatever still queued, the sums are those of the
    records themselves (the memory store sums them in one list)."""
    store, memory = await opened(":memory:"), MemoryStore()
    for i, record in enumerate(records):
        if i == written:
            await store.flush()
        store.record_usage(record)
        memory.record_usage(record)
    assert await store.usage(since=since, key=key) == await memory.usage(since=since, key=key)
    for name in ("alice", "bob"):
        assert await store.spent(name, since or 0.0) == await memory.spent(name, since or 0.0)
    await store.close()


async def test_keys_and_usage_outlive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "nexus.db"
    first = await opened(path)
    await first.save_key(FULL)
    await first.save_key(REVOKED)
    first.record_usage(used(1.0, cost=0.5))
    await first.close()

    second = await opened(path)
    assert sorted(await second.load_keys(), key=lambda r: r.name) == [FULL, REVOKED]
    assert await second.spent("alice", since=0.0) == 0.5
    await second.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_a_file_from_a_newer_nexus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nexus.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        await opened(path)


async def test_the_writer_writes_a_full_batch_at_once_and_the_rest_when_cancelled(
    tmp_path: Path, mock_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    """The clock stands still: the batch interval never passes, so a write can only come
    from a full batch, or from the writer stopping."""
    path = tmp_path / "nexus.db"
    committed = trio.Event()

    class Signalling(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            cursor = super().execute(sql, *args)
            if sql == "COMMIT":  # done: the rows are in the file
                trio.from_thread.run_sync(committed.set)
            return cursor

    def connect(name: str) -> sqlite3.Connection:
        return sqlite3.connect(
            name, check_same_thread=False, isolation_level=None, factory=Signalling
        )

    store = SqliteStore(path, connect=connect)
    await store.open()
    committed = trio.Event()  # the schema's commit is behind us
    async with trio.open_nursery() as writer:
        await writer.start(store.run_writer)
        for i in range(BATCH_SIZE - 1):
            store.record_usage(used(float(i)))
        await trio.testing.wait_all_tasks_blocked()
        assert stored_rows(path) == 0
        store.record_usage(used(99.0))
        await committed.wait()
        assert stored_rows(path) == BATCH_SIZE

        store.record_usage(used(100.0))
        store.record_usage(used(101.0))
        writer.cancel_scope.cancel()
    assert stored_rows(path) == BATCH_SIZE + 2  # written as the writer stopped
    await store.close()


async def test_sqlite_runs_off_the_trio_thread(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Every statement (and the connecting) runs on a thread that is not trio's."""
    threads: set[int] = set()

    def connect(name: str) -> sqlite3.Connection:
        threads.add(threading.get_ident())
        conn = sqlite3.connect(name, check_same_thread=False, isolation_level=None)
        conn.set_trace_callback(lambda _: threads.add(threading.get_ident()))
        return conn

    store = SqliteStore(tmp_path / "nexus.db", connect=connect)
    await store.open()
    await nursery.start(store.run_writer)
    await store.save_key(FULL)
    await store.load_keys()
    store.record_usage(used(1.0))
    await store.flush()
    await store.usage(key="alice")
    await store.spent("alice", 0.0)
    await store.close()
    assert threads
    assert threading.get_ident() not in threads


async def test_store_for_the_settings(tmp_path: Path) -> None:
    beside_state = store_for(settings_from_mapping({}, environ={}), tmp_path / "state")
    assert beside_state.path == tmp_path / "state" / "nexus.db"
    assert (tmp_path / "state").is_dir()  # made, so the file can be
    url = f"sqlite:///{tmp_path}/deeper/kept.db"
    configured = store_for(settings_from_mapping({"store": {"url": url}}, environ={}), tmp_path)
    assert configured.path == tmp_path / "deeper" / "kept.db"
    assert (tmp_path / "deeper").is_dir()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/lib/nexus/nexus.db", Path("/var/lib/nexus/nexus.db")),
        ("sqlite:////var/lib/nexus/nexus.db", Path("/var/lib/nexus/nexus.db")),
        ("sqlite:///~/nexus.db", Path.home() / "nexus.db"),
        ("sqlite:///:memory:", Path(":memory:")),
    ],
)
def test_sqlite_urls(url: str, path: Path) -> None:
    assert sqlite_path(url) == path


async def test_a_key_made_through_nexus_outlives_its_restart(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    backend = sim("gpu1")
    await nursery.start(backend.serve)
    config = nexus_config([backend], store={"url": f"sqlite:///{tmp_path}/nexus.db"})
    settings = settings_from_mapping(config, environ={})

    async def serve_once(work: Callable[[Gateway], Awaitable[None]]) -> None:
        stop = trio.Event()
        async with trio.open_nursery() as serving:
            gateway: Gateway = await serving.start(
                partial(serve_nexus, settings, environ={}, handle_signals=False, stop=stop)
            )
            await work(gateway)
            stop.set()  # serve_nexus drains, closes the store and returns

    made: list[tuple[str, KeyRecord]] = []

    async def make_key(gateway: Gateway) -> None:
        made.append(await gateway.keyring.create("alice", rpm=30, models=("llama*",)))
        gateway.store.record_usage(used(1.0, cost=0.75))  # written as Nexus stops

    async def find_key(gateway: Gateway) -> None:
        [(key, record)] = made
        assert gateway.keyring.find(key) == record
        assert gateway.keyring.get("alice").models == ("llama*",)
        assert await gateway.store.spent("alice", since=0.0) == 0.75

    await serve_once(make_key)
    await serve_once(find_key)


async def test_a_failed_write_keeps_the_records_queued(tmp_path: Path) -> None:
    failing = [True]

    class Full(sqlite3.Connection):
        def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
            if failing[0]:
                raise sqlite3.OperationalError("database or disk is full")
            return super().executemany(sql, rows)

    path = tmp_path / "nexus.db"
    store = SqliteStore(
        path,
        connect=lambda name: sqlite3.connect(
            name, check_same_thread=False, isolation_level=None, factory=Full
        ),
    )
    await store.open()
    store.record_usage(used(1.0, cost=0.5))
    with pytest.raises(sqlite3.OperationalError):
        await store.flush()
    assert await store.spent("alice", 0.0) == 0.5  # still counted, still queued
    failing[0] = False
    await store.close()
    assert stored_rows(path) == 1
