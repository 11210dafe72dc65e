"""``nexus backends list|add|remove``: the backends of a running Nexus, through
``/admin/backends``.

The functions `list_backends`, `add_backend` and `remove_backend` make one request and
return the text to print; `render_backends` and `render_backend` are pure renderings of the
server's JSON.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, TypedDict

import typer

from nexus_trio.cli._app import JsonOption, TokenOption, UrlOption, ask
from nexus_trio.cli.client import ClientError, Target, call, items, quote
from nexus_trio.cli.output import (
    as_int,
    as_number,
    clean,
    details,
    duration,
    one_line,
    render_json,
    render_table,
    strings,
)
from nexus_trio.config import BackendType

__all__ = [
    "BackendStatus",
    "BackendView",
    "add_backend",
    "group",
    "list_backends",
    "remove_backend",
    "render_backend",
    "render_backends",
]


class BackendStatus(enum.StrEnum):
    """What the server says of a backend (`nexus_trio.registry.Backend.status`: its health,
    or ejected by the breaker), without importing the server to say so."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"
    EJECTED = "ejected"


class BackendView(TypedDict, total=False):
    """One backend as ``GET /admin/backends`` describes it."""

    name: str
    url: str
    type: str
    sources: list[str]
    status: str  # healthy | unhealthy | unknown | ejected
    health: str  # healthy | unhealthy | unknown: what its probes say, even while ejected
    detail: str | None
    ejected_until: str | None  # ISO 8601, UTC: when an ejected backend returns
    ejected_seconds: float | None  # how long that was from the answer's making
    ejections: int  # in a row, until a run of served requests forgives them
    priority: int
    models: list[str]
    in_flight: int
    max_concurrency: int | None
    latency_ms: float | None
    last_checked: str | None


def list_backends(target: Target, *, status: str | None = None, as_json: bool = False) -> str:
    """``nexus backends list``: the backends, optionally only those in `status`.

    Raises:
        ClientError: as `call`.
    """
    path = "/admin/backends"
    backends = items(call(target, "GET", path), "backends", target, path)
    if status is not None:
        backends = [b for b in backends if b.get("status") == status]
    if as_json:
        return render_json({"backends": backends})
    if not backends and status is not None:
        return f"No {status} backends."
    return render_backends(backends)


def add_backend(
    target: Target,
    url: str,
    *,
    name: str | None = None,
    type_: str | None = None,
    priority: int | None = None,
    as_json: bool = False,
) -> str:
    """``nexus backends add``: register the server at `url`; describe what was added.

    Raises:
        ClientError: as `call` (400 bad URL or type, 409 already registered, 422 nothing
            that speaks an LLM API answers there).
    """
    body: dict[str, object] = {"url": url}
    for key, value in (("name", name), ("type", type_), ("priority", priority)):
        if value is not None:
            body[key] = value
    answer = call(target, "POST", "/admin/backends", body=body, ok=(200, 201))
    backend = answer.get("backend")
    if not isinstance(backend, dict):
        raise ClientError(f"{target.url}/admin/backends answered without the added backend")
    if as_json:
        return render_json(answer)
    return render_backend(backend, verb="Added backend")


def remove_backend(target: Target, name: str, *, as_json: bool = False) -> str:
    """``nexus backends remove``: forget the backend called `name`.

    Raises:
        ClientError: as `call` (404 for an unknown name).
    """
    answer = call(target, "DELETE", f"/admin/backends/{quote(name)}")
    if as_json:
        return render_json(answer)
    return f"Removed backend {clean(answer.get('removed', name))}."


def _latency(value: object) -> str:
    ms = as_number(value)
    if ms is None:
        return "-"
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def _busy(in_flight: object, limit: object) -> str:
    busy, cap = as_int(in_flight), as_int(limit)
    if busy is None:
        return "-"
    return f"{busy}/{cap}" if cap is not None else str(busy)


def _ejection(backend: Mapping[str, Any]) -> str | None:
    """Why a backend is out and when it returns, if the breaker ejected it."""
    if backend.get("status") != BackendStatus.EJECTED:
        return None
    when = "ejected"
    until = backend.get("ejected_until")
    try:
        at = datetime.fromisoformat(until) if isinstance(until, str) else None
    except ValueError:
        at = None
    if at is not None and at.tzinfo is not None:
        when += f" until {at.astimezone(UTC):%H:%M:%S} UTC"
    left = as_number(backend.get("ejected_seconds"))
    if left is not None:
        when += f", in {duration(math.ceil(left))}"
    count = as_int(backend.get("ejections"))
    if count is not None and count > 1:
        when += f" ({count} ejections in a row)"
    if backend.get("health") == BackendStatus.UNHEALTHY:
        when += "; its probes fail too"
    detail = backend.get("detail")
    return f"{when}: {detail}" if isinstance(detail, str) and detail.strip() else when


def render_backends(backends: Sequence[Mapping[str, Any]]) -> str:
    """The backends table of ``nexus backends list`` (from ``GET /admin/backends`` items).

    One row per backend, then the status detail of those that have one; for an
    ejected one, when it returns.
    """
    if not backends:
        return "No backends. Add one with `nexus backends add URL`, or let discovery find some."
    rows = [
        [
            b.get("name"),
            b.get("type"),
            b.get("status"),
            len(b["models"]) if isinstance(b.get("models"), list) else "-",
            _busy(b.get("in_flight"), b.get("max_concurrency")),
            _latency(b.get("latency_ms")),
            as_int(b.get("priority")),
            ",".join(strings(b.get("sources"))) or "-",
            b.get("url"),
        ]
        for b in backends
    ]
    table = render_table(
        ["name", "type", "status", "models", "busy", "latency", "priority", "source", "url"],
        rows,
        right={3, 4, 5, 6},
    )
    return table + details([(b.get("name"), _ejection(b) or b.get("detail")) for b in backends])


def render_backend(backend: Mapping[str, Any], *, verb: str = "Backend") -> str:
    """One backend in a few lines (``nexus backends add``): name, type, URL, status, models."""
    models = strings(backend.get("models"))
    lines = [
        f"{verb} {clean(backend.get('name'))} ({clean(backend.get('type'))}) at "
        f"{clean(backend.get('url'))}",
        f"  status:   {clean(backend.get('status'))}",
        f"  priority: {clean(as_int(backend.get('priority')))}",
        f"  models:   {', '.join(models) if models else 'none yet'}",
    ]
    detail = backend.get("detail")
    if isinstance(detail, str) and detail.strip():
        lines.insert(2, f"  detail:   {one_line(detail)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The commands.

group = typer.Typer(
    name="backends",
    help="List, add and remove the backends of a running Nexus.",
    no_args_is_help=True,
)


@group.command("list")
def backends_list(
    json_: JsonOption = False,
    status: Annotated[
        BackendStatus | None, typer.Option(help="Only the backends in this state.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """List the backends: type, health, models, load, latency, where they came from."""
    wanted = status.value if status else None
    ask(url, token, partial(list_backends, status=wanted, as_json=json_))


@group.command("add")
def backends_add(
    backend_url: Annotated[
        str, typer.Argument(metavar="URL", help="Where the server answers, e.g. http://gpu:11434.")
    ],
    name: Annotated[str | None, typer.Option(help="Stable name (default: type@host:port).")] = None,
    type_: Annotated[
        BackendType | None,
        typer.Option("--type", case_sensitive=False, help="Kind of server (default: detected)."),
    ] = None,
    priority: Annotated[
        int | None, typer.Option(min=0, help="Lower is preferred (default: 1).")
    ] = None,
    json_: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Add the LLM server at URL; Nexus checks that it answers and lists its models."""
    ask(
        url,
        token,
        partial(
            add_backend,
            url=backend_url,
            name=name,
            type_=type_.value if type_ else None,
            priority=priority,
            as_json=json_,
        ),
    )


@group.command("remove")
def backends_remove(
    name: Annotated[str, typer.Argument(help="The backend's name, as `backends list` shows.")],
    json_: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Remove a backend; requests in flight on it finish."""
    ask(url, token, partial(remove_backend, name=name, as_json=json_))
