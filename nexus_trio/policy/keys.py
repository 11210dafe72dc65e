"""API keys: what one is, how it is made, how a presented one is recognised.

A key is ``nx-`` and 40 random URL-safe characters (240 bits from `secrets`), shown
once when made. Nexus keeps only its SHA-256 hash and its first characters (the
prefix, for logs and lists): a key this random cannot be guessed from its hash, so a
slow password hash would only cost every request time. A presented key is hashed and
looked up by hash; the final comparison is `hmac.compare_digest`, in constant time.

`KeyRecord` is what is kept of a key: its name, hash, prefix and the limits it carries.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from nexus_trio.config import Period, Priority, Privacy

__all__ = [
    "ANONYMOUS",
    "KEY_PREFIX",
    "Caller",
    "KeyRecord",
    "hash_key",
    "key_matches",
    "new_key",
    "shown_prefix",
]

KEY_PREFIX = "nx-"
_RANDOM_CHARS = 40  # token_urlsafe(30) gives 40 characters: 240 bits
_SHOWN = len(KEY_PREFIX) + 6  # "nx-" and six more: enough to tell keys apart in a list


def new_key() -> str:
    """A fresh key: ``nx-`` and 40 random URL-safe characters."""
    return KEY_PREFIX + secrets.token_urlsafe(30)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest that is stored and looked up instead of the key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def shown_prefix(key: str) -> str:
    """The part of a key that may be logged and listed (``nx-`` and six characters)."""
    return key[:_SHOWN]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as kept: never the key itself.

    ``None`` limits are unlimited; ``models`` are glob patterns (empty: every model).
    """

    name: str
    key_hash: str
    prefix: str
    created_at: float  # time.time()
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens (prompt + completion) per minute
    concurrency: int | None = None  # requests at once
    budget_usd: float | None = None  # spend per period
    period: Period = Period.MONTH
    models: tuple[str, ...] = ()
    privacy: Privacy = Privacy.ANY
    priority: Priority = Priority.NORMAL
    revoked_at: float | None = None

    def __post_init__(self) -> None:
        # Whoever builds a record (the admin API, the store) may pass the plain strings.
        object.__setattr__(self, "period", Period(self.period))
        object.__setattr__(self, "privacy", Privacy(self.privacy))
        object.__setattr__(self, "priority", Priority(self.priority))
        object.__setattr__(self, "models", tuple(self.models))

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def may_use(self, model: str) -> bool:
        """Whether this key may ask for ``model`` (as the client named it)."""
        return not self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)


def key_matches(record: KeyRecord, presented_hash: str) -> bool:
    """Constant-time check that ``presented_hash`` is this record's."""
    return hmac.compare_digest(record.key_hash, presented_hash)


_PRIORITY_ORDER = (Priority.HIGH, Priority.NORMAL, Priority.LOW)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: a key's record, or nobody (auth off): usage is recorded
    under ``name`` either way. ``lowered`` is a priority the request asked for
    (``X-Nexus-Priority``), which counts only where it is lower than the key's."""

    name: str
    key: KeyRecord | None = field(default=None, repr=False)
    lowered: Priority | None = None

    @property
    def privacy(self) -> Privacy:
        return self.key.privacy if self.key else Privacy.ANY

    @property
    def priority(self) -> Priority:
        own = self.key.priority if self.key else Priority.NORMAL
        if self.lowered is None:
            return own
        return max(own, self.lowered, key=_PRIORITY_ORDER.index)


ANONYMOUS = Caller("anonymous")
