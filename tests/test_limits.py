"""Per-key limits and budgets, pure: every time is an explicit ``now``.

The limiter is checked step by step against a reference model that keeps nothing but
lists of timestamps and recounts the window from scratch at every step; hypothesis
draws the programs (admit, finish with tokens, retune, time passing), and pinned
examples keep the edges (exactly 60 s later, limits of 0, lowered limits) in every run.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_trio.errors import BudgetExceeded, RateLimited
from nexus_trio.policy.budget import (
    BudgetStatus,
    budget_exceeded,
    check_budget,
    cost_usd,
    next_period_start,
    period_start,
)
from nexus_trio.policy.keys import KeyRecord
from nexus_trio.policy.limits import (
    WINDOW_SECONDS,
    KeyLimiter,
    Limiters,
    Verdict,
    openai_duration,
)


def key(
    rpm: int | None = None, tpm: int | None = None, concurrency: int | None = None, name: str = "k"
) -> KeyRecord:
    return KeyRecord(name, "0" * 64, "nx-abcdef", 0.0, rpm=rpm, tpm=tpm, concurrency=concurrency)


def header_map(limiter: KeyLimiter, now: float) -> dict[str, str]:
    return dict(limiter.headers(now))


# --- requests per minute ---------------------------------------------------------------


def test_rpm_window_slides() -> None:
    limiter = KeyLimiter(key(rpm=2))
    assert limiter.admit(100.0).allowed
    assert limiter.admit(130.0).allowed
    refused = limiter.admit(140.0)
    assert (refused.allowed, refused.limit, refused.value) == (False, "requests", 2)
    assert refused.retry_after_seconds == 20  # the request of 100.0 leaves at 160.0
    assert not limiter.admit(159.9).allowed
    assert limiter.admit(160.0).allowed  # exactly 60 s later it has left the window
    assert not limiter.admit(189.0).allowed


def test_refused_requests_are_not_counted() -> None:
    limiter = KeyLimiter(key(rpm=1))
    assert limiter.admit(0.0).allowed
    for t in range(1, 60):
        assert not limiter.admit(float(t)).allowed
    assert limiter.admit(60.0).allowed


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    limiter = KeyLimiter(key(rpm=1))
    limiter.admit(0.0)
    assert limiter.admit(0.5).retry_after_seconds == 60  # 59.5 s → 60
    assert limiter.admit(59.99).retry_after_seconds == 1  # 0.01 s → 1


def test_lowered_rpm_waits_until_the_window_is_under_it() -> None:
    limiter = KeyLimiter(key(rpm=3))
    for t in (0.0, 10.0, 20.0):
        assert limiter.admit(t).allowed
    limiter.retune(key(rpm=1))
    verdict = limiter.admit(30.0)
    assert (verdict.limit, verdict.retry_after_seconds) == ("requests", 50)  # 20.0 leaves at 80
    assert not limiter.admit(75.0).allowed
    assert limiter.admit(80.0).allowed


# --- tokens per minute -----------------------------------------------------------------


def test_tpm_admits_while_below_and_charges_at_the_end() -> None:
    limiter = KeyLimiter(key(tpm=1000))
    assert limiter.admit(0.0).allowed
    assert limiter.admit(1.0).allowed  # the first one's tokens are not known yet
    limiter.finish(5.0, 700)
    assert limiter.admit(6.0).allowed  # 700 < 1000
    limiter.finish(10.0, 400)  # 1100: over, by one answer
    limiter.finish(11.0, 50)
    refused = limiter.admit(12.0)
    assert (refused.limit, refused.value) == ("tokens", 1000)
    # 1150 in the window; under 1000 once the 700 of 5.0 leaves, at 65.0.
    assert refused.retry_after_seconds == 53
    assert not limiter.admit(64.0).allowed
    assert limiter.admit(65.0).allowed


def test_tpm_exactly_at_the_limit_refuses() -> None:
    limiter = KeyLimiter(key(tpm=100))
    limiter.admit(0.0)
    limiter.finish(0.0, 100)
    assert limiter.admit(1.0).limit == "tokens"


# --- concurrency -----------------------------------------------------------------------


def test_concurrency_slots_are_taken_and_given_back() -> None:
    limiter = KeyLimiter(key(concurrency=2))
    assert limiter.admit(0.0).allowed
    assert limiter.admit(0.0).allowed
    refused = limiter.admit(0.0)
    assert (refused.limit, refused.value, refused.retry_after_seconds) == ("concurrency", 2, 1)
    limiter.finish(3.0, 10)
    assert limiter.active == 1
    assert limiter.admit(3.0).allowed


def test_a_stray_finish_never_goes_below_zero() -> None:
    limiter = KeyLimiter(key(concurrency=1))
    limiter.finish(0.0, 0)
    assert limiter.active == 0
    assert limiter.admit(0.0).allowed
    assert not limiter.admit(0.0).allowed


def test_the_longest_wait_is_named() -> None:
    limiter = KeyLimiter(key(rpm=1, concurrency=1))
    limiter.admit(0.0)
    verdict = limiter.admit(10.0)  # both refuse: requests for 50 s, concurrency for 1 s
    assert (verdict.limit, verdict.retry_after_seconds) == ("requests", 50)


def test_no_limits_always_admits_and_keeps_nothing() -> None:
    limiter = KeyLimiter(key())
    for t in range(1000):
        assert limiter.admit(float(t) / 10).allowed
        limiter.finish(float(t) / 10, 5)
    assert limiter.headers(100.0) == []
    assert limiter.idle(100.0)


# --- errors ----------------------------------------------------------------------------


def test_verdict_error_names_the_limit_value_and_retry() -> None:
    limiter = KeyLimiter(key(rpm=60, name="alice"))
    for _ in range(60):
        limiter.admit(0.0)
    error = limiter.admit(15.0).error()
    assert isinstance(error, RateLimited)
    assert (error.status, error.code, error.type) == (
        429,
        "rate_limit_exceeded",
        "rate_limit_error",
    )
    assert error.headers() == [("retry-after", "45")]
    assert "'alice'" in error.message
    assert "60 requests per minute" in error.message
    assert "45 s" in error.message


def test_concurrency_error_says_what_to_wait_for() -> None:
    limiter = KeyLimiter(key(concurrency=1))
    limiter.admit(0.0)
    message = limiter.admit(0.0).error().message
    assert "1 requests at once" in message
    assert "when a request of this key ends" in message


def test_an_allowed_verdict_has_no_error() -> None:
    with pytest.raises(ValueError, match="allowed"):
        Verdict(True, "k").error()


# --- headers ---------------------------------------------------------------------------


def test_headers_openai_names_and_values() -> None:
    limiter = KeyLimiter(key(rpm=60, tpm=150_000, concurrency=4))
    limiter.admit(0.0)
    limiter.finish(0.8, 16)
    assert limiter.headers(1.6) == [
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-remaining-requests", "59"),
        ("x-ratelimit-reset-requests", "58.4s"),
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-tokens", "149984"),
        ("x-ratelimit-reset-tokens", "59.2s"),
    ]


def test_headers_only_for_the_limits_the_key_has() -> None:
    assert [n for n, _ in KeyLimiter(key(rpm=5)).headers(0.0)] == [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ]
    assert [n for n, _ in KeyLimiter(key(tpm=5)).headers(0.0)] == [
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ]
    assert KeyLimiter(key(concurrency=5)).headers(0.0) == []


def test_headers_of_an_untouched_key_and_an_overshot_one() -> None:
    limiter = KeyLimiter(key(tpm=10))
    assert header_map(limiter, 0.0)["x-ratelimit-reset-tokens"] == "0s"
    limiter.admit(0.0)
    limiter.finish(0.0, 25)
    assert header_map(limiter, 0.0)["x-ratelimit-remaining-tokens"] == "0"  # never negative
    assert header_map(limiter, 0.0)["x-ratelimit-reset-tokens"] == "1m0s"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.012, "12ms"),
        (0.9994, "999ms"),
        (0.9996, "1s"),
        (1, "1s"),
        (59.2, "59.2s"),
        (1.25, "1.25s"),
        (60, "1m0s"),
        (61.5, "1m1.5s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723.004, "1h2m3.004s"),
        (-3, "0s"),
    ],
)
def test_openai_duration(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text


_GO_UNIT = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


@given(st.integers(min_value=0, max_value=10**9))
def test_openai_duration_reads_back(ms: int) -> None:
    text = openai_duration(ms / 1000)
    assert re.fullmatch(r"(\d+h)?(\d+m)?(\d+(\.\d*[1-9])?s)|\d+ms", text), text
    total = sum(
        Fraction(number) * _GO_UNIT[unit]
        for number, unit in re.findall(r"([\d.]+)(ms|h|m|s)", text)
    )
    assert total == ms


# --- the reference model ---------------------------------------------------------------


@dataclass
class Model:
    """What the limits mean, recounted from lists of timestamps at every step."""

    rpm: int | None
    tpm: int | None
    concurrency: int | None
    requests: list[float] = field(default_factory=list)
    tokens: list[tuple[float, int]] = field(default_factory=list)
    active: int = 0

    def live_requests(self, now: float) -> list[float]:
        return [t for t in self.requests if now < t + WINDOW_SECONDS]

    def live_tokens(self, now: float) -> list[tuple[float, int]]:
        return [(t, n) for t, n in self.tokens if now < t + WINDOW_SECONDS]

    def waits(self, now: float) -> list[tuple[str, float]]:
        """Each refusing limit and when it will have room: the earliest moment one of
        the window's entries leaves after which the window is under the limit."""
        out: list[tuple[str, float]] = []
        live = self.live_requests(now)
        if self.rpm is not None and len(live) >= self.rpm:
            room = [
                t + WINDOW_SECONDS
                for t in live
                if sum(1 for u in live if u + WINDOW_SECONDS > t + WINDOW_SECONDS) < self.rpm
            ]
            out.append(("requests", (min(room) if room else now + WINDOW_SECONDS) - now))
        charged = self.live_tokens(now)
        if self.tpm is not None and sum(n for _, n in charged) >= self.tpm:
            room = [
                t + WINDOW_SECONDS
                for t, _ in charged
                if sum(n for u, n in charged if u + WINDOW_SECONDS > t + WINDOW_SECONDS) < self.tpm
            ]
            out.append(("tokens", (min(room) if room else now + WINDOW_SECONDS) - now))
        if self.concurrency is not None and self.active >= self.concurrency:
            out.append(("concurrency", 1.0))
        return out

    def admit(self, now: float) -> tuple[bool, str | None, int]:
        waits = self.waits(now)
        if waits:
            order = ["requests", "tokens", "concurrency"]
            limit, wait = max(waits, key=lambda w: (w[1], -order.index(w[0])))
            return False, limit, max(1, math.ceil(wait))
        if self.rpm is not None:
            self.requests.append(now)
        self.active += 1
        return True, None, 0

    def finish(self, now: float, tokens: int) -> None:
        self.active = max(0, self.active - 1)
        if self.tpm is not None and tokens > 0:
            self.tokens.append((now, tokens))

    def retune(self, rpm: int | None, tpm: int | None, concurrency: int | None) -> None:
        self.rpm, self.tpm, self.concurrency = rpm, tpm, concurrency
        if rpm is None:
            self.requests.clear()
        if tpm is None:
            self.tokens.clear()

    def headers(self, now: float) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.rpm is not None:
            live = self.live_requests(now)
            reset = max(live) + WINDOW_SECONDS - now if live else 0.0
            out["x-ratelimit-limit-requests"] = str(self.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - len(live)))
            out["x-ratelimit-reset-requests"] = openai_duration(reset)
        if self.tpm is not None:
            charged = self.live_tokens(now)
            reset = max(t for t, _ in charged) + WINDOW_SECONDS - now if charged else 0.0
            out["x-ratelimit-limit-tokens"] = str(self.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - sum(n for _, n in charged)))
            out["x-ratelimit-reset-tokens"] = openai_duration(reset)
        return out


limits = st.none() | st.integers(min_value=0, max_value=6)
# Round numbers make sums land exactly on the limit, where "below" and "at" differ.
token_limits = st.none() | st.sampled_from([50, 100, 150]) | st.integers(min_value=0, max_value=300)
charges = st.sampled_from([0, 50, 100]) | st.integers(min_value=0, max_value=200)
# Time passes in drawn steps: often not at all, often exactly a window, else anything.
pauses = st.sampled_from([0.0, 0.5, 1.0, WINDOW_SECONDS, WINDOW_SECONDS - 0.25]) | st.floats(
    min_value=0.0, max_value=90.0, allow_nan=False
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), pauses),
        st.tuples(st.just("finish"), pauses, charges),
        st.tuples(st.just("headers"), pauses),
        st.tuples(st.just("retune"), limits, token_limits, limits),
    ),
    max_size=60,
)

Step = tuple[Any, ...]


@settings(max_examples=300, deadline=None)
@given(rpm=limits, tpm=token_limits, concurrency=limits, program=steps, start=pauses)
# rpm 1: the next request is refused until exactly 60 s later, then admitted.
@example(rpm=1, tpm=None, concurrency=None, start=0.0,
         program=[("admit", 0.0), ("admit", 59.75), ("admit", 0.25), ("admit", 0.0)])  # fmt: skip
# Limits of 0 refuse everything, a minute at a time.
@example(rpm=0, tpm=0, concurrency=0, start=5.0,
         program=[("admit", 0.0), ("finish", 1.0, 10), ("headers", 0.0)])  # fmt: skip
# One answer overshoots tpm; the key waits until it has left the window.
@example(rpm=None, tpm=100, concurrency=None, start=0.0,
         program=[("admit", 0.0), ("finish", 1.0, 250), ("admit", 0.0), ("admit", 59.0),
                  ("admit", 1.0), ("headers", 0.0)])  # fmt: skip
# Room only once the window is *below* tpm: the 50 leaving leaves exactly 100.
@example(rpm=None, tpm=100, concurrency=None, start=0.0,
         program=[("admit", 0.0), ("admit", 0.0), ("finish", 0.0, 50), ("finish", 1.0, 100),
                  ("admit", 1.0), ("admit", 58.0), ("admit", 1.0)])  # fmt: skip
# Two charges at the same moment, then an exact window later.
@example(rpm=None, tpm=5, concurrency=2, start=0.0,
         program=[("admit", 0.0), ("admit", 0.0), ("finish", 0.0, 3), ("finish", 0.0, 3),
                  ("admit", 0.0), ("admit", 60.0)])  # fmt: skip
# rpm lowered below what the window holds, then turned off and on again.
@example(rpm=3, tpm=None, concurrency=None, start=0.0,
         program=[("admit", 0.0), ("admit", 1.0), ("admit", 1.0), ("retune", 1, None, None),
                  ("admit", 1.0), ("admit", 57.5), ("admit", 1.0), ("retune", None, None, None),
                  ("retune", 1, None, None), ("admit", 0.0)])  # fmt: skip
# A finish with nothing in flight, with concurrency 1.
@example(rpm=None, tpm=None, concurrency=1, start=0.0,
         program=[("finish", 0.0, 0), ("admit", 0.0), ("admit", 0.0), ("finish", 0.5, 1),
                  ("admit", 0.0)])  # fmt: skip
def test_limiter_matches_the_reference_model(
    rpm: int | None, tpm: int | None, concurrency: int | None, program: list[Step], start: float
) -> None:
    limiter = KeyLimiter(key(rpm, tpm, concurrency))
    model = Model(rpm, tpm, concurrency)
    now = start
    for step in program:
        if step[0] == "retune":
            limiter.retune(key(*step[1:]))
            model.retune(*step[1:])
            continue
        now += step[1]
        if step[0] == "admit":
            verdict = limiter.admit(now)
            assert (verdict.allowed, verdict.limit, verdict.retry_after_seconds) == model.admit(
                now
            ), (step, now)
            if not verdict.allowed:
                assert verdict.retry_after_seconds >= 1
                assert verdict.error().retry_after_seconds == verdict.retry_after_seconds
        elif step[0] == "finish":
            limiter.finish(now, step[2])
            model.finish(now, step[2])
        assert limiter.active == model.active
        assert dict(limiter.headers(now)) == model.headers(now), (step, now)


@settings(max_examples=100, deadline=None)
@given(
    program=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.floats(min_value=0.0, max_value=70.0, allow_nan=False),
            st.booleans(),
            st.integers(min_value=0, max_value=50),
        ),
        max_size=400,
    )
)
def test_limiters_forget_only_what_does_not_matter(
    program: list[tuple[str, float, bool, int]],
) -> None:
    """A `Limiters` that forgets idle keys decides exactly as limiters kept forever."""
    limiters = Limiters()
    kept = {name: KeyLimiter(key(rpm=2, tpm=60, concurrency=1, name=name)) for name in "abc"}
    in_flight: dict[str, KeyLimiter] = {}
    now = 0.0
    for name, pause, end_one, tokens in program:
        now += pause
        record = key(rpm=2, tpm=60, concurrency=1, name=name)
        if end_one and name in in_flight:
            in_flight.pop(name).finish(now, tokens)
            kept[name].finish(now, tokens)
            continue
        limiter = limiters.of(record, now)
        verdict = limiter.admit(now)
        assert verdict == kept[name].admit(now)
        assert limiter.headers(now) == kept[name].headers(now)
        if verdict.allowed:
            in_flight[name] = limiter
    assert len(limiters) <= 3


def test_limiters_are_bounded_by_the_keys_of_the_last_minute() -> None:
    limiters = Limiters()
    for i in range(1000):
        limiter = limiters.of(key(rpm=10, name=f"key{i}"), float(i))
        limiter.admit(float(i))
        limiter.finish(float(i), 0)
    assert len(limiters) <= 2 * 60 + 64  # twice a minute of keys, and a sweep's slack


def test_limiters_keep_a_key_in_flight_and_retune_it() -> None:
    limiters = Limiters()
    busy = limiters.of(key(concurrency=1, name="busy"), 0.0)
    assert busy.admit(0.0).allowed
    for i in range(500):  # many sweeps, long after, without an explicit time
        limiters.of(key(name=f"k{i}"), 1000.0 + i).admit(1000.0 + i)
        limiters.of(key(name=f"k{i}")).finish(1000.0 + i, 0)
    assert "busy" in limiters
    assert limiters.of(key(concurrency=1, name="busy")) is busy
    assert not busy.admit(2000.0).allowed
    assert limiters.of(key(concurrency=2, name="busy"), 2000.0).admit(2000.0).allowed


async def test_with_trio_time(autojump_clock: Any) -> None:
    import trio

    limiter = KeyLimiter(key(rpm=1))
    assert limiter.admit(trio.current_time()).allowed
    verdict = limiter.admit(trio.current_time())
    await trio.sleep(verdict.retry_after_seconds)
    assert limiter.admit(trio.current_time()).allowed


# --- budgets ---------------------------------------------------------------------------


def utc(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("period", "now", "start", "next_start"),
    [
        ("day", utc(2025, 3, 14, 15, 9, 26), utc(2025, 3, 14), utc(2025, 3, 15)),
        ("day", utc(2025, 3, 14), utc(2025, 3, 14), utc(2025, 3, 15)),
        ("day", utc(2025, 3, 14) - 0.001, utc(2025, 3, 13), utc(2025, 3, 14)),
        ("day", utc(2024, 12, 31, 23, 59, 59), utc(2024, 12, 31), utc(2025, 1, 1)),
        ("day", utc(2024, 2, 28, 12), utc(2024, 2, 28), utc(2024, 2, 29)),
        ("month", utc(2025, 3, 14, 15, 9, 26), utc(2025, 3, 1), utc(2025, 4, 1)),
        ("month", utc(2025, 3, 1), utc(2025, 3, 1), utc(2025, 4, 1)),
        ("month", utc(2025, 3, 1) - 0.001, utc(2025, 2, 1), utc(2025, 3, 1)),
        ("month", utc(2024, 12, 31, 23, 59, 59), utc(2024, 12, 1), utc(2025, 1, 1)),
        ("month", utc(2025, 1, 1), utc(2025, 1, 1), utc(2025, 2, 1)),
        ("month", utc(2024, 2, 29, 23), utc(2024, 2, 1), utc(2024, 3, 1)),
    ],
)
def test_periods_are_utc_calendar_days_and_months(
    period: str, now: float, start: float, next_start: float
) -> None:
    assert period_start(period, now) == start
    assert next_period_start(period, now) == next_start


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False), st.sampled_from(["day", "month"]))
def test_a_period_holds_its_moment(now: float, period: str) -> None:
    start, end = period_start(period, now), next_period_start(period, now)
    assert start <= now < end
    assert period_start(period, end) == end
    assert datetime.fromtimestamp(start, UTC).hour == 0
    if period == "month":
        assert datetime.fromtimestamp(start, UTC).day == 1


def test_unknown_period() -> None:
    with pytest.raises(ValueError, match="week"):
        period_start("week", time.time())


def test_costs_are_exact() -> None:
    assert cost_usd(3, 0, 0.1, 0.0) == 3e-07  # 3 * 0.1 / 1e6 is 3.0000000000000004e-07
    assert cost_usd(0, 7, 0.0, 0.3) == 2.1e-06
    assert cost_usd(1_000_000, 1_000_000, 2.5, 10.0) == 12.5
    assert cost_usd(1_000_000, 0, 0.15, 0.6) == 0.15
    assert cost_usd(0, 0, 3.0, 15.0) == 0.0


prices = st.decimals(min_value=0, max_value=1000, places=4).map(float)


@given(
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=10**9),
    prices,
    prices,
)
def test_cost_is_tokens_times_prices_rounded_once(
    prompt: int, completion: int, price_in: float, price_out: float
) -> None:
    exact = (prompt * Fraction(repr(price_in)) + completion * Fraction(repr(price_out))) / 10**6
    assert cost_usd(prompt, completion, price_in, price_out) == float(exact)


def test_check_budget() -> None:
    assert check_budget(5.0, None) == BudgetStatus(over=False, remaining=math.inf, warn=False)
    assert check_budget(7.99, 10.0).warn is False
    assert check_budget(8.0, 10.0) == BudgetStatus(over=False, remaining=2.0, warn=True)
    assert check_budget(10.0, 10.0) == BudgetStatus(over=True, remaining=0.0, warn=True)
    assert check_budget(12.0, 10.0) == BudgetStatus(over=True, remaining=0.0, warn=True)
    assert check_budget(0.0, 0.0).over
    assert check_budget(0.8, 1.0).warn  # 0.8 * 1.0 in floats is fine; 80% of 0.1 is not
    assert check_budget(0.08, 0.1).warn


def test_budget_exceeded_retries_at_the_next_period() -> None:
    now = utc(2024, 12, 31, 23, 0)
    error = budget_exceeded("alice", 5.0, "month", now)
    assert isinstance(error, BudgetExceeded)
    assert (error.status, error.code) == (429, "insufficient_quota")
    assert error.retry_after_seconds == 3600
    assert "'alice'" in error.message
    assert "$5" in error.message
    assert "2025-01-01 00:00 UTC" in error.message
