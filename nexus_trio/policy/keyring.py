"""The keys Nexus knows, in memory, written through to the store.

A request's key is looked up here, by hash, without I/O; making, changing and
revoking a key writes the store first and this map after, so a revoked key fails
from the moment `revoke` returns. The one owner of the keys in this process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from nexus_trio.policy.keys import KeyRecord, hash_key, key_matches, new_key, shown_prefix

__all__ = ["KeyExists", "KeyStore", "Keyring", "UnknownKey"]


class KeyExists(ValueError):
    """A key of that name exists already."""


class UnknownKey(KeyError):
    """No key has that name."""


class KeyStore(Protocol):
    """What the keyring needs of a store (`nexus_trio.store.base.Store` has it)."""

    async def load_keys(self) -> Sequence[KeyRecord]: ...

    async def save_key(self, record: KeyRecord) -> None: ...


class Keyring:
    """Keys by name and by hash; `open` loads them from the store."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._by_name: dict[str, KeyRecord] = {}
        self._by_hash: dict[str, KeyRecord] = {}

    async def open(self) -> None:
        self._index(await self._store.load_keys())

    def _index(self, records: Iterable[KeyRecord]) -> None:
        for record in records:
            old = self._by_name.get(record.name)
            if old is not None:
                self._by_hash.pop(old.key_hash, None)
            self._by_name[record.name] = record
            self._by_hash[record.key_hash] = record

    def __iter__(self) -> Any:
        return iter(sorted(self._by_name.values(), key=lambda r: r.name))

    def get(self, name: str) -> KeyRecord:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownKey(name) from None

    def find(self, presented: str) -> KeyRecord | None:
        """The live (not revoked) key ``presented`` is, or None. No I/O."""
        digest = hash_key(presented)
        record = self._by_hash.get(digest)
        if record is None or record.revoked or not key_matches(record, digest):
            return None
        return record

    async def create(self, name: str, **limits: Any) -> tuple[str, KeyRecord]:
        """A new key named ``name`` with ``limits`` (`KeyRecord` fields): the key itself,
        to be shown once, and its record.

        Raises:
            KeyExists: a key (live or revoked) has that name.
        """
        if name in self._by_name:
            raise KeyExists(name)
        key = new_key()
        record = KeyRecord(name, hash_key(key), shown_prefix(key), time.time(), **limits)
        await self._store.save_key(record)
        self._index([record])
        return key, record

    async def update(self, name: str, **limits: Any) -> KeyRecord:
        """Change the limits of the key ``name``.

        Raises:
            UnknownKey: no key has that name.
        """
        record = replace(self.get(name), **limits)
        await self._store.save_key(record)
        self._index([record])
        return record

    async def revoke(self, name: str) -> KeyRecord:
        """Revoke the key ``name``: it fails from now on (its usage is kept).

        Raises:
            UnknownKey: no key has that name.
        """
        record = self.get(name)
        if record.revoked:
            return record
        return await self.update(name, revoked_at=time.time())
