"""What ``/admin/keys`` and ``/admin/usage`` read and write, as pure functions.

A key's view (`key_view`) is its name, prefix, creation time, whether it is revoked and its
limits; never its hash, never the key (the key is shown once, by the route that makes it).
`read_limits` checks a request body's limits field by field, each failure a `RequestError`
naming the field; `read_since` reads a ``YYYY-MM-DD`` date as its midnight, UTC.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Final

from nexus_trio.config import Period, Priority, Privacy
from nexus_trio.errors import RequestError
from nexus_trio.policy.keys import KeyRecord
from nexus_trio.store.base import UsageRow

__all__ = [
    "LIMITS",
    "key_view",
    "read_key_name",
    "read_limits",
    "read_since",
    "refusal",
    "usage_view",
]

LIMITS: Final = (
    "rpm",
    "tpm",
    "concurrency",
    "budget_usd",
    "period",
    "models",
    "privacy",
    "priority",
)
"""The fields of `KeyRecord` a client may set, in the order the views list them."""

_DEFAULTS: Final[dict[str, Any]] = {
    f.name: f.default for f in dataclasses.fields(KeyRecord) if f.name in LIMITS
}
MAX_NAME_LENGTH: Final = 64


def refusal(message: str, *, status: int, code: str, param: str | None = None) -> RequestError:
    """A `RequestError` with its own status and code (404 key_not_found, 409 key_exists):
    the client must change the request, like any other, only the status says more."""
    error = RequestError(message, param=param)
    error.status = status
    error.code = code
    return error


def _iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="seconds")


def key_view(record: KeyRecord) -> dict[str, Any]:
    """One key as the admin API shows it: never its hash, never the key."""
    limits: dict[str, Any] = {name: getattr(record, name) for name in LIMITS}
    limits["models"] = list(record.models)
    limits["privacy"] = str(record.privacy)
    limits["priority"] = str(record.priority)
    return {
        "name": record.name,
        "prefix": record.prefix,
        "created_at": _iso(record.created_at),
        "revoked": record.revoked,
        "limits": limits,
    }


def read_key_name(value: object) -> str:
    """A new key's name: up to 64 printable characters, no spaces (it appears in logs,
    metrics and URLs).

    Raises:
        RequestError: anything else.
    """
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_NAME_LENGTH
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise RequestError(
            f"'name' must be a name of 1 to {MAX_NAME_LENGTH} characters without spaces.",
            param="name",
        )
    return value


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"'{name}' must be a positive integer, or null for none.", param=name)
    return value


def _budget(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise RequestError(f"'{name}' must be a number of USD ≥ 0, or null for none.", param=name)
    return float(value)


def _choice(name: str, value: object, choices: Iterable[str]) -> str:
    allowed = tuple(choices)
    if not isinstance(value, str) or value not in allowed:
        raise RequestError(f"'{name}' must be one of {', '.join(allowed)}.", param=name)
    return value


def _patterns(name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        raise RequestError(
            f"'{name}' must be a list of model names or glob patterns (e.g. [\"llama3:*\"]), "
            "none of them empty; [] or null for every model.",
            param=name,
        )
    return tuple(p.strip() for p in value)


def _read(name: str, value: object) -> Any:
    if name in ("rpm", "tpm", "concurrency"):
        return _positive_int(name, value)
    if name == "budget_usd":
        return _budget(name, value)
    if name == "period":
        return Period(_choice(name, value, (p.value for p in Period)))
    if name == "privacy":
        return Privacy(_choice(name, value, (p.value for p in Privacy)))
    if name == "priority":
        return Priority(_choice(name, value, (p.value for p in Priority)))
    return _patterns(name, value)  # models


def read_limits(body: Mapping[str, Any], *, allowed: Iterable[str] = ()) -> dict[str, Any]:
    """The limits in a request body, checked, as `KeyRecord` fields.

    A field left out is not in the result; a null one is its default (no limit, ``month``,
    every model, privacy ``any``, priority ``normal``), so a PATCH with null clears it.
    `allowed` names the other fields the body may hold (``name`` when making a key).

    Raises:
        RequestError: an unknown field, or a value out of its range (the message and
            ``param`` name the field).
    """
    unknown = sorted(set(body) - set(LIMITS) - set(allowed))
    if unknown:
        raise RequestError(
            f"Unknown field {unknown[0]!r}; a key's limits are {', '.join(LIMITS)}.",
            param=unknown[0],
        )
    limits: dict[str, Any] = {}
    for name in LIMITS:
        if name in body:
            value = body[name]
            limits[name] = _DEFAULTS[name] if value is None else _read(name, value)
    return limits


def read_since(text: str | None) -> float | None:
    """A ``since`` query parameter (``YYYY-MM-DD``) as the Unix time of that midnight, UTC.

    Raises:
        RequestError: not such a date.
    """
    if text is None or text == "":
        return None
    try:
        day = date.fromisoformat(text)
        if len(text) != len("YYYY-MM-DD"):
            raise ValueError(text)
    except ValueError:
        raise RequestError(
            f"'since' must be a date as YYYY-MM-DD (UTC), got {text!r:.40}.", param="since"
        ) from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


_COUNTS: Final = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


def usage_view(rows: Iterable[UsageRow]) -> dict[str, Any]:
    """Usage rows by key, model and backend (sorted so), and their totals."""
    shown = [
        dataclasses.asdict(row) for row in sorted(rows, key=lambda r: (r.key, r.model, r.backend))
    ]
    totals: dict[str, Any] = {name: sum(row[name] for row in shown) for name in _COUNTS}
    totals["cost_usd"] = float(totals["cost_usd"])
    return {"rows": shown, "totals": totals}
