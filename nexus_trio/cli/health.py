"""``nexus health``: a running Nexus's view of itself and of each backend (``GET /health``)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, TypedDict

from nexus_trio.cli._app import JsonOption, TokenOption, UrlOption, ask
from nexus_trio.cli.client import ClientError, Target, call
from nexus_trio.cli.output import (
    as_int,
    clean,
    details,
    duration,
    render_json,
    render_table,
    strings,
)

__all__ = ["HealthView", "get_health", "render_health"]


class HealthView(TypedDict, total=False):
    """The body of ``GET /health``."""

    status: str  # healthy | degraded | unhealthy
    backends: dict[str, dict[str, Any]]
    models: int
    uptime_seconds: float
    version: str


def get_health(target: Target, *, as_json: bool = False) -> str:
    """``nexus health``: the server's own view of itself and each backend.

    A 503 answer is still an answer (the server says it is unhealthy), so it renders.

    Raises:
        ClientError: as `call`.
    """
    answer = call(target, "GET", "/health", ok=(200, 503))
    if "status" not in answer:
        raise ClientError(f"{target.url}/health answered without a status; is that Nexus?")
    return render_json(answer) if as_json else render_health(answer)


def render_health(health: Mapping[str, Any]) -> str:
    """``nexus health``: the overall status in one line, then one row per backend."""
    backends = health.get("backends")
    entries = (
        [(name, b) for name, b in backends.items() if isinstance(b, dict)]
        if isinstance(backends, dict)
        else []
    )
    counts: dict[str, int] = {}
    for _, b in entries:
        state = clean(b.get("status"))
        counts[state] = counts.get(state, 0) + 1
    tally = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    models = as_int(health.get("models"))
    summary = (
        f"Nexus {clean(health.get('version'))} is {clean(health.get('status'))}: "
        f"{len(entries)} backend{'' if len(entries) == 1 else 's'}"
        + (f" ({tally})" if tally else "")
        + (f", {models} model{'' if models == 1 else 's'}" if models is not None else "")
        + f", up {duration(health.get('uptime_seconds'))}."
    )
    if not entries:
        return summary + "\n\nNo backends yet: add one with `nexus backends add URL`."
    rows = [
        [
            name,
            b.get("status"),
            b.get("type"),
            ",".join(strings(b.get("sources"))) or b.get("source"),
            as_int(b.get("models")),
            as_int(b.get("in_flight")),
        ]
        for name, b in entries
    ]
    table = render_table(
        ["backend", "status", "type", "source", "models", "busy"], rows, right={4, 5}
    )
    return f"{summary}\n\n{table}" + details([(name, b.get("detail")) for name, b in entries])


def health(json_: JsonOption = False, url: UrlOption = None, token: TokenOption = None) -> None:
    """Show the server's health and each backend's. Exits 0 whenever the server answers."""
    ask(url, token, partial(get_health, as_json=json_))
