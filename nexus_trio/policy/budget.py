"""Budgets: what a request costs, when a key's period began, and whether it has spent enough.

Pure: times are passed in (``time.time()`` seconds, since periods are calendar days and
months in UTC, not intervals of a monotonic clock), nothing here reads the store.

**Costs are exact.** ``tokens × price / 1_000_000`` in binary floating point is not the
product it names: ``3 * 0.1 / 1e6`` is ``3.0000000000000004e-07``, and such errors add
up over a month of usage rows. `cost_usd` computes in `decimal` from each price as it
was written (``str(0.1)`` is ``"0.1"``) — the products and the division by a million
are then exact — and rounds once, to the float nearest the exact cost, because the
store keeps costs as floats. So the cost of a million tokens at a price *is* that price,
and ``3`` tokens at ``0.1`` cost ``3e-07``.

Example::

    start = period_start(record.period, time.time())
    status = check_budget(store.spent(record.name, since=start), record.budget_usd)
    if status.over:
        raise budget_exceeded(record.name, record.budget_usd, record.period, time.time())
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from fractions import Fraction

from nexus_trio.errors import BudgetExceeded

__all__ = [
    "WARN_FRACTION",
    "BudgetStatus",
    "budget_exceeded",
    "check_budget",
    "cost_usd",
    "next_period_start",
    "period_start",
]

WARN_FRACTION = Fraction(4, 5)
# Below this share of the budget no float rounding can reach the warning.
_CLEARLY_BELOW_WARNING = float(WARN_FRACTION) * (1 - 1e-9)
"""A key is warned about once it has spent this much of its budget."""

_MTOK = 1_000_000


def _calendar(period: str, now_unix: float) -> datetime:
    at = datetime.fromtimestamp(now_unix, UTC)
    if period == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"a budget period is 'day' or 'month', not {period!r}")


def period_start(period: str, now_unix: float) -> float:
    """When the budget period holding ``now_unix`` began: midnight UTC of that day, or of
    the first of that month, as Unix seconds.

    >>> period_start("month", 1_735_689_599.5)  # 2024-12-31 23:59:59.5 UTC
    1733011200.0

    Raises:
        ValueError: ``period`` is neither ``"day"`` nor ``"month"``.
    """
    return _calendar(period, now_unix).timestamp()


def next_period_start(period: str, now_unix: float) -> float:
    """When the period after the one holding ``now_unix`` begins (the budget's reset):
    the next midnight UTC, or the first of the next month (December → January).

    Raises:
        ValueError: ``period`` is neither ``"day"`` nor ``"month"``.
    """
    start = _calendar(period, now_unix)
    if period == "day":
        return start.timestamp() + 86_400  # UTC has no daylight saving
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1).timestamp()
    return start.replace(month=start.month + 1).timestamp()


def cost_usd(
    prompt_tokens: int,
    completion_tokens: int,
    price_input_per_mtok: float,
    price_output_per_mtok: float,
) -> float:
    """What a request cost: ``prompt × input price + completion × output price``, prices in
    USD per million tokens, computed exactly and rounded once to the nearest float (see
    the module docstring).

    >>> cost_usd(3, 0, 0.1, 0.0), cost_usd(1_000_000, 1_000_000, 2.5, 10.0)
    (3e-07, 12.5)
    """
    with localcontext() as ctx:
        ctx.prec = 60  # enough digits that nothing below is rounded
        exact = (
            Decimal(prompt_tokens) * Decimal(repr(float(price_input_per_mtok)))
            + Decimal(completion_tokens) * Decimal(repr(float(price_output_per_mtok)))
        ) / _MTOK
        return float(exact)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """Where a key stands against its budget this period.

    ``over``: it has spent all of it (new requests are refused); ``remaining``: USD left,
    never negative (infinite without a budget); ``warn``: it has spent at least 80%.
    """

    over: bool
    remaining: float
    warn: bool


def check_budget(spent: float, budget: float | None) -> BudgetStatus:
    """``spent`` USD this period against ``budget`` (``None``: no budget, never over).

    Spending the whole budget is over it (a budget of 0 refuses everything). Amounts are
    compared and subtracted as the decimals they print as, exactly.

    >>> check_budget(8.0, 10.0)
    BudgetStatus(over=False, remaining=2.0, warn=True)
    """
    if budget is None:
        return BudgetStatus(over=False, remaining=math.inf, warn=False)
    if spent < _CLEARLY_BELOW_WARNING * budget:
        # Clearly below the warning (every request of most keys): no exact arithmetic is
        # needed to decide, and the remainder is shown only from the warning on.
        return BudgetStatus(over=False, remaining=budget - spent, warn=False)
    # Each amount as the decimal it prints as, so 8 cents of 10 warn at 80% and leave
    # 0.02, where binary floats say 0.08 < 0.8 * 0.1 and leave 0.020000000000000004.
    spent_, budget_ = Fraction(repr(float(spent))), Fraction(repr(float(budget)))
    over = spent_ >= budget_
    warn = spent_ >= WARN_FRACTION * budget_
    return BudgetStatus(over=over, remaining=float(max(Fraction(0), budget_ - spent_)), warn=warn)


def budget_exceeded(key: str, budget: float, period: str, now_unix: float) -> BudgetExceeded:
    """The `BudgetExceeded` (429, ``insufficient_quota``) for ``key``, with ``Retry-After``
    at the start of the next period and a message that says when that is.

    Raises:
        ValueError: ``period`` is neither ``"day"`` nor ``"month"``.
    """
    reset = next_period_start(period, now_unix)
    when = datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return BudgetExceeded(
        f"The key {key!r} has spent its budget of ${budget:g} for this {period}; it resets "
        f"at {when}. Ask an admin to raise the budget, or retry then.",
        retry_after_seconds=math.ceil(reset - now_unix),
    )
