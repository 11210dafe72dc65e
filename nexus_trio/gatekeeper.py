"""Who is asking, and may they: API keys, their models, limits and budgets, at the door.

With ``[auth] enabled`` every API route needs a key (``Authorization: Bearer`` or
``x-api-key``), except ``/health``, ``/metrics`` (unless ``auth.metrics_need_key``),
the admin API (its own rules) and the dashboard's static page. A missing, unknown or
revoked key gets 401 in the API's own error shape; a model the key may not use, 403.
With auth off every request is the anonymous caller, and its usage is recorded too.

For an inference request `Gatekeeper.admit` then checks the key's limits and budget
and returns an `Admission`, which carries the rate-limit headers every response gets
and, when the request ends, records its usage (`Admission.finish`): tokens as the
backends reported them, priced with the serving backend's prices, in the store (off
the event loop) and in the key's running totals.

The key itself is never stored, logged or forwarded: it is hashed at once and looked
up by hash (`nexus_trio.policy.keyring`); logs name the key, never more than its
prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from nexus_trio.config import AuthSettings
from nexus_trio.errors import ModelNotAllowed, Unauthorized
from nexus_trio.policy.budget import budget_exceeded, check_budget, cost_usd, period_start
from nexus_trio.policy.keyring import Keyring
from nexus_trio.policy.keys import ANONYMOUS, Caller, KeyRecord
from nexus_trio.policy.limits import Limiters
from nexus_trio.registry import Registry
from nexus_trio.store.base import Store, UsageRecord

__all__ = ["BUDGET_HEADER", "KEY_SUBPROTOCOL", "Admission", "Gatekeeper", "presented_key"]

log = logging.getLogger("nexus.auth")

# Paths open without a key whatever the settings: liveness, and the dashboard's page
# and its files (its data, /ws, /v1/stats and /v1/history, need a key).
_OPEN_PATHS = frozenset({"/health", "/", "/index.html", "/favicon.ico"})
_OPEN_PREFIXES = ("/admin/", "/static/")
# How long a request may wait for the store to say what a key has spent this period
# (once per key and period; then it is counted here).
_SPENT_LOOKUP_SECONDS = 2.0
BUDGET_HEADER = "x-nexus-budget-remaining"
# A browser cannot set headers on a WebSocket: the dashboard offers its key as the
# subprotocols ``nexus-key, <key>`` (a key's characters are all valid in a token).
KEY_SUBPROTOCOL = "nexus-key"


def presented_key(headers: Any) -> str | None:
    """The key a client sent (``Authorization: Bearer …`` or ``x-api-key``), from ASGI
    header pairs; None when it sent none."""
    bearer = api_key = offered = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
        elif name == b"sec-websocket-protocol":
            protocols = [p.strip() for p in value.decode("latin-1").split(",")]
            if len(protocols) == 2 and protocols[0] == KEY_SUBPROTOCOL:
                offered = protocols[1]
    return bearer or api_key or offered


@dataclass
class _Spent:
    """What one key has spent in its current period, counted here after one look-up."""

    since: float  # the period's start (time.time())
    usd: float
    warned: bool = False


@dataclass(eq=False)
class Admission:
    """One admitted inference request: its caller, the headers its response carries, and
    what must happen when it ends (`finish`)."""

    gatekeeper: Gatekeeper
    caller: Caller
    headers: list[tuple[str, str]] = field(default_factory=list)
    _finished: bool = False

    def finish(self, model: str | None, backend: str | None, usage: Mapping[str, int],
               status: int) -> None:  # fmt: skip
        """The request is over: release its limits and record its usage. Once; sync."""
        if self._finished:
            return
        self._finished = True
        self.gatekeeper.finished(self, model, backend, usage, status)


class Gatekeeper:
    """The door of one Nexus: authenticates callers and admits their requests."""

    def __init__(self, auth: AuthSettings, keyring: Keyring, store: Store, registry: Registry):
        self.auth = auth
        self.keyring = keyring
        self.store = store
        self.registry = registry
        self.limiters = Limiters()
        self._spent: dict[str, _Spent] = {}

    def guards(self, path: str) -> bool:
        """Whether ``path`` needs a key."""
        if not self.auth.enabled:
            return False
        if path == "/metrics":
            return self.auth.metrics_need_key
        return path not in _OPEN_PATHS and not path.startswith(_OPEN_PREFIXES)

    def caller_of(self, headers: Any) -> Caller:
        """Who sent a request with these (ASGI) headers.

        Raises:
            Unauthorized: auth is on and the key is missing, unknown or revoked.
        """
        if not self.auth.enabled:
            return ANONYMOUS
        key = presented_key(headers)
        if key is None:
            raise Unauthorized(
                "This Nexus needs an API key: send 'Authorization: Bearer <key>' or "
                "'x-api-key: <key>'. An administrator makes one with `nexus keys create NAME`."
            )
        record = self.keyring.find(key)
        if record is None:
            raise Unauthorized(
                "The API key is not valid: unknown, or revoked. Ask an administrator for a key "
                "(`nexus keys list` shows which exist)."
            )
        return Caller(record.name, record)

    async def admit(self, caller: Caller, model: str, headers: list[tuple[str, str]]) -> Admission:
        """Admit one inference request for ``model`` (as the client named it). The key's
        rate-limit headers are added to ``headers`` whether it is admitted or refused: a
        429 tells its limits as every other response does.

        Raises:
            ModelNotAllowed: the key may not use that model.
            RateLimited: over the key's requests, tokens or concurrency per minute.
            BudgetExceeded: the key has spent its budget for the period.
        """
        admission = Admission(self, caller, headers)
        record = caller.key
        if record is None:
            return admission
        if not record.may_use(model):
            raise ModelNotAllowed(
                f"The key {record.name!r} may not use the model {model!r}; it may use "
                f"{', '.join(repr(p) for p in record.models)}.",
                param="model",
            )
        limiter = self.limiters.of(record)
        now = trio.current_time()
        if record.budget_usd is not None:
            headers += await self._check_budget(record)
        verdict = limiter.admit(now)
        headers += limiter.headers(now)
        if not verdict.allowed:
            raise verdict.error()
        return admission

    async def _check_budget(self, record: KeyRecord) -> list[tuple[str, str]]:
        assert record.budget_usd is not None
        spent = await self._spent_now(record)
        status = check_budget(spent.usd, record.budget_usd)
        if status.over:
            raise budget_exceeded(record.name, record.budget_usd, record.period, time.time())
        if not status.warn:
            return []
        if not spent.warned:
            spent.warned = True
            log.warning(
                "key %s has spent %.0f%% of its $%g budget for this %s",
                record.name, 100 * spent.usd / record.budget_usd, record.budget_usd,
                record.period,
            )  # fmt: skip
        return [(BUDGET_HEADER, format(status.remaining, ".10g"))]

    async def _spent_now(self, record: KeyRecord) -> _Spent:
        since = period_start(record.period, time.time())
        spent = self._spent.get(record.name)
        if spent is None or spent.since != since:
            usd = 0.0
            with trio.move_on_after(_SPENT_LOOKUP_SECONDS):
                usd = await self.store.spent(record.name, since)
            spent = self._spent[record.name] = _Spent(since, usd)
        return spent

    def forget_spending(self, key: str) -> None:
        """Read ``key``'s spending from the store again at its next request (its usage
        was changed there, by another tool or instance)."""
        self._spent.pop(key, None)

    def finished(self, admission: Admission, model: str | None, backend: str | None,
                 usage: Mapping[str, int], status: int) -> None:  # fmt: skip
        caller = admission.caller
        prompt = usage.get("prompt_tokens", 0) or 0
        completion = usage.get("completion_tokens", 0) or 0
        served = self.registry.get(backend) if backend and backend in self.registry else None
        cost = (
            cost_usd(prompt, completion, served.price_input_per_mtok, served.price_output_per_mtok)
            if served is not None
            else 0.0
        )
        if caller.key is not None:
            self.limiters.of(caller.key).finish(trio.current_time(), prompt + completion)
            spent = self._spent.get(caller.name)
            if spent is not None:
                spent.usd += cost
        if model is None:
            return  # nothing was asked of any backend (the body did not parse)
        self.store.record_usage(
            UsageRecord(
                time.time(), caller.name, model, backend or "", prompt, completion, cost, status
            )
        )
