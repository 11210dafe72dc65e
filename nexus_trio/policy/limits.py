"""Per-key rate limits: requests per minute, tokens per minute, requests at once.

Pure: every method takes ``now`` (seconds, ``trio.current_time()`` from the caller),
nothing here reads a clock, sleeps or does I/O, so the request path can call it
without an ``await`` and tests can drive it with plain numbers.

**Why a window log, not a two-bucket sliding window.** The two-bucket scheme (this
minute's count plus the last minute's, weighted by how much of it still overlaps)
keeps two integers a key, but it *estimates*: it admits bursts the limit forbids when
traffic was uneven in the previous bucket, and refuses some it allows. A key's limit is
a promise to the person who set it, and the headers tell clients how much is left, so
we keep the exact sliding window instead: the times of the admitted requests (and of
the charged tokens) in the last 60 s. Its memory is bounded by the limit itself — at
most ``rpm`` request times are ever kept (a refused request is not recorded), and a
token charge is kept only while it is in the window — and each call pops what has
left the window, so every operation is amortised O(1). Finding *when* enough tokens
leave the window (for ``Retry-After``) walks the oldest charges; that is done only
on a refusal and usually stops at the first.

An event at time ``t`` counts while ``now < t + 60`` and is gone at ``t + 60``.

How the limits are applied (the issue's rules):

- **requests** (``rpm``): a request is admitted while fewer than ``rpm`` requests were
  admitted in the window; admitting it records it.
- **tokens** (``tpm``): a request is admitted while the tokens charged in the window are
  below ``tpm``; its own tokens are not known until it ends, so `KeyLimiter.finish`
  charges them then. One large answer can therefore overshoot ``tpm``, and the key waits
  until enough of it has left the window — as OpenAI's own limiter behaves.
- **concurrency**: admitted while fewer than ``concurrency`` requests of the key are
  in flight; admitting takes a slot, `KeyLimiter.finish` gives it back.

A limit that is ``None`` is not checked, and nothing is recorded for it: a limit added
later by `KeyLimiter.retune` starts from an empty window.

Example::

    limiter = KeyLimiter(record)                 # record.rpm == 60
    verdict = limiter.admit(trio.current_time())
    if not verdict.allowed:
        raise verdict.error()                    # RateLimited, 429 with Retry-After
    try:
        ...                                      # serve the request
    finally:
        limiter.finish(trio.current_time(), tokens=usage.total_tokens)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from nexus_trio.errors import RateLimited
from nexus_trio.policy.keys import KeyRecord

__all__ = [
    "WINDOW_SECONDS",
    "KeyLimiter",
    "Limit",
    "Limiters",
    "Verdict",
    "openai_duration",
]

WINDOW_SECONDS = 60.0
"""The sliding window of ``rpm`` and ``tpm``."""

Limit = Literal["requests", "tokens", "concurrency"]

# How a refused limit reads in a message.
_UNITS: dict[Limit, str] = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "concurrency": "requests at once",
}
# The order in which limits are named when several refuse with the same wait.
_ORDER: tuple[Limit, ...] = ("requests", "tokens", "concurrency")


def openai_duration(seconds: float) -> str:
    """``seconds`` the way OpenAI writes ``x-ratelimit-reset-*``: Go's duration format.

    OpenAI's rate-limit guide shows ``1s`` and ``6m0s``; its servers also send ``59.2s``
    and ``12ms``. That is Go's ``time.Duration.String``: hours, minutes and seconds with
    the zero units after the first kept (``1h0m0s``), seconds with the fraction's
    trailing zeros dropped, milliseconds under a second, ``0s`` for nothing. We round to
    whole milliseconds (Go would print micro- and nanoseconds; a client gains nothing
    from them).

    >>> openai_duration(360), openai_duration(59.2), openai_duration(0.012)
    ('6m0s', '59.2s', '12ms')
    """
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, frac = divmod(ms, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _retry_seconds(wait: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, so a client that waits them finds
    room, and at least 1."""
    return max(1, math.ceil(wait))


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request may start now, and if not, which limit refused it and when to retry.

    ``limit`` and ``value`` name the refusing limit and the key's setting of it (``None``
    when allowed); ``retry_after_seconds`` is whole seconds, at least 1 when refused (0
    when allowed): when the window will have room again. When several limits refuse,
    the verdict names the one that keeps the key waiting longest.
    """

    allowed: bool
    key: str
    limit: Limit | None = None
    value: int | None = None
    retry_after_seconds: int = 0

    def error(self) -> RateLimited:
        """The `RateLimited` (429, ``rate_limit_exceeded``, ``Retry-After``) to raise for a
        refusal; its message names the limit, the key's value of it and when to retry.

        Raises:
            ValueError: the verdict allowed the request.
        """
        if self.allowed or self.limit is None:
            raise ValueError("an allowed request has no error")
        return RateLimited(
            f"The key {self.key!r} is over its limit of {self.value} "
            f"{_UNITS[self.limit]}. Retry in {self.retry_after_seconds} s"
            f"{', when a request of this key ends' if self.limit == 'concurrency' else ''}.",
            retry_after_seconds=self.retry_after_seconds,
        )


class KeyLimiter:
    """The sliding windows and in-flight count of one key (see the module docstring).

    Built from a `KeyRecord`'s ``rpm``, ``tpm`` and ``concurrency``; `retune` takes a
    changed record without losing the windows.
    """

    __slots__ = (
        "_active",
        "_concurrency",
        "_last_seen",
        "_name",
        "_requests",
        "_rpm",
        "_tokens",
        "_tpm",
        "_used",
    )

    def __init__(self, record: KeyRecord) -> None:
        self._name = record.name
        self._rpm: int | None = None
        self._tpm: int | None = None
        self._concurrency: int | None = None
        self._requests: deque[float] = deque()  # times of admitted requests, oldest first
        self._tokens: deque[tuple[float, int]] = deque()  # (time, tokens) charged, oldest first
        self._used = 0  # sum of the tokens in ``_tokens``
        self._active = 0  # admitted and not yet finished
        self._last_seen: float | None = None  # the latest ``now`` it was called with
        self.retune(record)

    @property
    def name(self) -> str:
        return self._name

    @property
    def active(self) -> int:
        """Requests admitted and not yet finished."""
        return self._active

    def retune(self, record: KeyRecord) -> None:
        """Apply ``record``'s limits from now on. Windows already kept stay; a lowered
        limit refuses until the window is under it, a limit turned off forgets its
        window, and one turned on starts empty."""
        self._rpm, self._tpm, self._concurrency = record.rpm, record.tpm, record.concurrency
        if self._rpm is None:
            self._requests.clear()
        if self._tpm is None:
            self._tokens.clear()
            self._used = 0

    @property
    def last_seen(self) -> float | None:
        """The latest ``now`` this limiter was called with (None: never)."""
        return self._last_seen

    def _expire(self, now: float) -> None:
        if self._last_seen is None or now > self._last_seen:
            self._last_seen = now
        # ``t + WINDOW <= now``, not ``t <= now - WINDOW``: the same sum as the reset
        # and retry times below, so the float roundings agree.
        requests, tokens = self._requests, self._tokens
        while requests and requests[0] + WINDOW_SECONDS <= now:
            requests.popleft()
        while tokens and tokens[0][0] + WINDOW_SECONDS <= now:
            self._used -= tokens.popleft()[1]

    def _waits(self, now: float) -> Iterator[tuple[Limit, int, float]]:
        """Each limit that refuses now: (which, the key's value, seconds until room)."""
        if self._rpm is not None and len(self._requests) >= self._rpm:
            # Room when all but rpm - 1 of the kept requests have left the window
            # (an rpm of 0 never has room: ask again in a window).
            excess = len(self._requests) - self._rpm
            leaves = self._requests[excess] if self._rpm > 0 else now
            yield "requests", self._rpm, leaves + WINDOW_SECONDS - now
        if self._tpm is not None and self._used >= self._tpm:
            # Room when the charges still in the window add up to less than tpm.
            # (A tpm of 0 never has room: ask again in a window.)
            left, leaves = self._used, now
            for at, tokens in self._tokens if self._tpm > 0 else ():
                left -= tokens
                if left < self._tpm:
                    leaves = at
                    break
            yield "tokens", self._tpm, leaves + WINDOW_SECONDS - now
        if self._concurrency is not None and self._active >= self._concurrency:
            # Nobody knows when a request in flight ends; ask again in a second.
            yield "concurrency", self._concurrency, 1.0

    def admit(self, now: float) -> Verdict:
        """May a request of this key start at ``now``? If so, it is counted (one request
        in the window, one slot in flight) and must be ended with `finish`."""
        self._expire(now)
        refusals = list(self._waits(now))
        if refusals:
            limit, value, wait = max(refusals, key=lambda r: (r[2], -_ORDER.index(r[0])))
            return Verdict(False, self._name, limit, value, _retry_seconds(wait))
        if self._rpm is not None:
            self._requests.append(now)
        self._active += 1
        return Verdict(True, self._name)

    def finish(self, now: float, tokens: int) -> None:
        """An admitted request ended at ``now`` having used ``tokens`` (prompt and
        completion): its slot is free and its tokens count from ``now``.

        Safe in a ``finally``: never raises, and a stray call cannot take the in-flight
        count below zero.
        """
        self._expire(now)
        self._active = max(0, self._active - 1)
        if self._tpm is not None and tokens > 0:
            if self._tokens and self._tokens[-1][0] == now:
                at, before = self._tokens.pop()
                self._tokens.append((at, before + tokens))
            else:
                self._tokens.append((now, tokens))
            self._used += tokens

    def headers(self, now: float) -> list[tuple[str, str]]:
        """OpenAI's ``x-ratelimit-*`` headers for the limits this key has (requests for
        ``rpm``, tokens for ``tpm``; there is no header for concurrency).

        ``remaining`` is what the window has room for now; ``reset`` is OpenAI's "time
        until the rate limit resets to its initial state": until the newest entry has
        left the window, in `openai_duration`'s format.
        """
        self._expire(now)
        out: list[tuple[str, str]] = []
        if self._rpm is not None:
            newest = self._requests[-1] if self._requests else None
            out += _trio("requests", self._rpm, self._rpm - len(self._requests), newest, now)
        if self._tpm is not None:
            newest = self._tokens[-1][0] if self._tokens else None
            out += _trio("tokens", self._tpm, self._tpm - self._used, newest, now)
        return out

    def idle(self, now: float) -> bool:
        """Nothing in flight and nothing in the windows: forgetting this limiter loses
        nothing, since a new one would decide the same."""
        self._expire(now)
        return self._active == 0 and not self._requests and not self._tokens


def _trio(
    what: str, limit: int, remaining: int, newest: float | None, now: float
) -> list[tuple[str, str]]:
    reset = 0.0 if newest is None else newest + WINDOW_SECONDS - now
    return [
        (f"x-ratelimit-limit-{what}", str(limit)),
        (f"x-ratelimit-remaining-{what}", str(max(0, remaining))),
        (f"x-ratelimit-reset-{what}", openai_duration(reset)),
    ]


class Limiters:
    """The `KeyLimiter` of every key in use, by key name.

    A key's limiter is made on its first request and forgotten once it is idle (nothing
    in flight, nothing in its windows): forgetting one loses nothing, since a new one
    would decide the same. A sweep drops the idle limiters and the next one comes after as
    many calls of `of` as limiters were left (at least 64), so a sweep's cost spread over
    the calls before it is O(1) each, and at most about twice the keys used in the last
    minute are kept (plus 64).
    """

    _SWEEP_EVERY = 64

    def __init__(self) -> None:
        self._by_name: dict[str, KeyLimiter] = {}
        self._until_sweep = self._SWEEP_EVERY  # calls of `of` until the next sweep

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def of(self, record: KeyRecord, now: float | None = None) -> KeyLimiter:
        """``record``'s limiter, made if it has none, retuned to ``record``'s limits (a
        key may have been updated since its last request). A limiter with a request in
        flight is never forgotten, so the one `KeyLimiter.admit` counted a request in is
        the one its `KeyLimiter.finish` finds.

        ``now``, when given, dates the sweep of idle limiters; without it, the sweep uses
        the latest time any limiter was called with (a lower bound of the time now, as
        every limiter is called with the same monotonic clock).
        """
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(now)
            self._until_sweep = max(self._SWEEP_EVERY, len(self._by_name))
        limiter = self._by_name.get(record.name)
        if limiter is None:
            limiter = self._by_name[record.name] = KeyLimiter(record)
        else:
            limiter.retune(record)
        return limiter

    def _sweep(self, now: float | None) -> None:
        seen = [lim.last_seen for lim in self._by_name.values() if lim.last_seen is not None]
        if now is not None:
            seen.append(now)
        if not seen:
            return
        now = max(seen)
        for name in [n for n, lim in self._by_name.items() if lim.idle(now)]:
            del self._by_name[name]
