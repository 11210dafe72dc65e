"""``nexus usage``: what the keys used, by key, model and backend, through ``/admin/usage``.

Every request's usage is recorded against its key (``anonymous`` without one), the model
it asked for and the backend that served it; this prints the sums, and their totals.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Annotated, Any

import typer

from nexus_trio.cli._app import JsonOption, TokenOption, UrlOption, ask
from nexus_trio.cli.client import ClientError, Target, call, items
from nexus_trio.cli.keys import money
from nexus_trio.cli.output import as_int, clean, render_json, render_table

__all__ = ["get_usage", "render_usage", "usage"]


def get_usage(
    target: Target, *, key: str | None = None, since: str | None = None, as_json: bool = False
) -> str:
    """``nexus usage``: sums by key, model and backend, of one key or all, since a date
    (``YYYY-MM-DD``, UTC) or ever.

    Raises:
        ClientError: as `call` (400 for a date the server cannot read).
    """
    query = {name: value for name, value in (("key", key), ("since", since)) if value}
    path = "/admin/usage" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    answer = call(target, "GET", path)
    rows = items(answer, "rows", target, "/admin/usage")
    if not isinstance(answer.get("totals"), dict):
        raise ClientError(f"{target.url}/admin/usage answered without totals")
    if as_json:
        return render_json(answer)
    return render_usage(rows, answer["totals"], key=key, since=since)


def render_usage(
    rows: Sequence[Mapping[str, Any]],
    totals: Mapping[str, Any],
    *,
    key: str | None = None,
    since: str | None = None,
) -> str:
    """The table of ``nexus usage``: one row per key, model and backend, then the totals."""
    span = f" since {clean(since)}" if since else ""
    whose = f" by key {clean(key)}" if key else ""
    if not rows:
        return f"No usage{whose}{span}."

    def line(first: object, model: object, backend: object, row: Mapping[str, Any]) -> list[Any]:
        return [
            first,
            model,
            backend,
            as_int(row.get("requests")),
            as_int(row.get("prompt_tokens")),
            as_int(row.get("completion_tokens")),
            money(row.get("cost_usd")),
        ]

    body = [line(r.get("key"), r.get("model"), r.get("backend") or "-", r) for r in rows]
    table = render_table(
        ["key", "model", "backend", "requests", "prompt", "completion", "cost"],
        [*body, line("total", "", "", totals)],
        right={3, 4, 5, 6},
    )
    return f"Usage{whose}{span}:\n\n{table}"


def usage(
    key: Annotated[str | None, typer.Option(help="Only this key's usage.")] = None,
    since: Annotated[
        str | None, typer.Option(metavar="YYYY-MM-DD", help="From this day on (UTC).")
    ] = None,
    json_: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Show what was used, by key, model and backend: requests, tokens, cost."""
    ask(url, token, partial(get_usage, key=key, since=since, as_json=json_))
