"""``nexus keys create|list|update|revoke``: the API keys of a running Nexus, through
``/admin/keys`` (and ``/admin/usage`` for what each used this period).

A key is shown once, when it is made; Nexus keeps only its hash, so ``list`` shows each
key's prefix. The functions `create_key`, `list_keys`, `update_key` and `revoke_key` make
the requests and return the text to print; the ``render_*`` functions are pure.
"""

from __future__ import annotations

import enum
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from functools import partial
from typing import Annotated, Any, Final

import typer

from nexus_trio.cli._app import JsonOption, TokenOption, UrlOption, ask
from nexus_trio.cli.client import ClientError, Target, call, items, quote
from nexus_trio.cli.output import (
    as_int,
    as_number,
    clean,
    render_json,
    render_table,
    strings,
)
from nexus_trio.config import Period, Priority, Privacy

__all__ = [
    "Limit",
    "Period",
    "create_key",
    "group",
    "limits_body",
    "list_keys",
    "money",
    "period_start",
    "render_created",
    "render_key",
    "render_keys",
    "revoke_key",
    "update_key",
]

USAGE_NOTE: Final = (
    "Requests, tokens and cost are this period's (UTC): since the 1st of the month,\n"
    "or since midnight for a key with a daily budget."
)


class Limit(enum.StrEnum):
    """The limits ``keys update --clear`` can lift (back to none, or to the default)."""

    RPM = "rpm"
    TPM = "tpm"
    CONCURRENCY = "concurrency"
    BUDGET_USD = "budget_usd"
    PERIOD = "period"
    MODELS = "models"
    PRIVACY = "privacy"
    PRIORITY = "priority"


def limits_body(
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    concurrency: int | None = None,
    budget_usd: float | None = None,
    period: str | None = None,
    models: str | None = None,
    privacy: str | None = None,
    priority: str | None = None,
    clear: Sequence[str] = (),
) -> dict[str, object]:
    """The JSON body that sets the limits given (None: left as they are) and clears those in
    `clear`. `models` is comma-separated patterns (``"llama3:*,qwen*"``; ``""``: every model).

    Example: ``limits_body(rpm=60, clear=["tpm"]) == {"rpm": 60, "tpm": None}``.
    """
    given: dict[str, object] = {
        "rpm": rpm,
        "tpm": tpm,
        "concurrency": concurrency,
        "budget_usd": budget_usd,
        "period": period,
        "models": None if models is None else [p.strip() for p in models.split(",") if p.strip()],
        "privacy": privacy,
        "priority": priority,
    }
    body: dict[str, object] = {name: None for name in clear}
    body.update({name: value for name, value in given.items() if value is not None})
    return body


def period_start(period: object, today: date) -> date:
    """The first day of the budget period `today` is in (``month`` unless ``day``)."""
    return today if period == Period.DAY else today.replace(day=1)


# ---------------------------------------------------------------------------------------------
# The requests.


def create_key(
    target: Target, name: str, *, limits: Mapping[str, object], as_json: bool = False
) -> str:
    """``nexus keys create``: make a key; the text shows it, this once.

    Raises:
        ClientError: as `call` (400 a bad limit, 409 the name is taken).
    """
    answer = call(target, "POST", "/admin/keys", body={"name": name, **limits}, ok=(201,))
    if not isinstance(answer.get("key"), str):
        raise ClientError(f"{target.url}/admin/keys answered without the new key")
    return render_json(answer) if as_json else render_created(answer, target.url)


def update_key(
    target: Target, name: str, *, limits: Mapping[str, object], as_json: bool = False
) -> str:
    """``nexus keys update``: change a key's limits (a None value lifts that one).

    Raises:
        ClientError: nothing to change (exit code 2), or as `call` (400, 404).
    """
    if not limits:
        raise ClientError(
            "nothing to change; give a limit (e.g. --rpm 60) or --clear one", exit_code=2
        )
    answer = call(target, "PATCH", f"/admin/keys/{quote(name)}", body=dict(limits))
    return render_json(answer) if as_json else render_key(answer, verb="Updated key")


def revoke_key(target: Target, name: str, *, as_json: bool = False) -> str:
    """``nexus keys revoke``: the key fails from now on; its record and usage stay.

    Raises:
        ClientError: as `call` (404 for an unknown name).
    """
    answer = call(target, "DELETE", f"/admin/keys/{quote(name)}")
    if as_json:
        return render_json(answer)
    return (
        f"Revoked key {clean(answer.get('name', name))} ({clean(answer.get('prefix'))}); "
        "requests that send it are refused from now on."
    )


def _usage_since(target: Target, since: date) -> dict[str, dict[str, Any]]:
    """Each key's requests, tokens and cost since `since`, from ``/admin/usage``."""
    path = f"/admin/usage?{urllib.parse.urlencode({'since': since.isoformat()})}"
    totals: dict[str, dict[str, Any]] = {}
    for row in items(call(target, "GET", path), "rows", target, "/admin/usage"):
        key = row.get("key")
        if not isinstance(key, str):
            continue
        sums = totals.setdefault(key, _no_usage(since))
        for field in ("requests", "prompt_tokens", "completion_tokens"):
            sums[field] += as_int(row.get(field)) or 0
        sums["cost_usd"] += as_number(row.get("cost_usd")) or 0.0
    return totals


def _no_usage(since: date) -> dict[str, Any]:
    return {
        "since": since.isoformat(),
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
    }


def list_keys(target: Target, *, as_json: bool = False, today: date | None = None) -> str:
    """``nexus keys list``: every key, revoked ones included, with its usage this period
    (since midnight UTC for a ``day`` budget, since the 1st of the month otherwise).

    Raises:
        ClientError: as `call`.
    """
    keys = items(call(target, "GET", "/admin/keys"), "keys", target, "/admin/keys")
    today = today or datetime.now(UTC).date()
    starts = [period_start(_limits(k).get("period"), today) for k in keys]
    usage = {start: _usage_since(target, start) for start in sorted(set(starts))}  # 2 at most
    shown = []
    for k, start in zip(keys, starts, strict=True):
        name = k.get("name")
        used = usage[start].get(name, _no_usage(start)) if isinstance(name, str) else None
        shown.append({**k, "usage": used or _no_usage(start)})
    return render_json({"keys": shown}) if as_json else render_keys(shown)


# ---------------------------------------------------------------------------------------------
# Rendering: pure functions of the server's JSON.


def _limits(key: Mapping[str, Any]) -> Mapping[str, Any]:
    limits = key.get("limits")
    return limits if isinstance(limits, dict) else {}


def money(value: object) -> str:
    """USD as ``$1.50``, or ``$0.0042`` below a dollar; ``-`` for no number."""
    usd = as_number(value)
    if usd is None:
        return "-"
    return f"${usd:.2f}" if usd >= 1 or usd == 0 else f"${usd:.4f}"


def _budget(limits: Mapping[str, Any]) -> str:
    budget = as_number(limits.get("budget_usd"))
    return "-" if budget is None else f"{money(budget)}/{clean(limits.get('period'))}"


def _models(limits: Mapping[str, Any]) -> str:
    return ",".join(strings(limits.get("models"))) or "*"


def render_keys(keys: Sequence[Mapping[str, Any]]) -> str:
    """The table of ``nexus keys list``: each key's limits and its usage this period."""
    if not keys:
        return "No keys. Make one with `nexus keys create NAME`."
    rows = []
    for k in keys:
        limits = _limits(k)
        usage = k.get("usage")
        used: Mapping[str, Any] = usage if isinstance(usage, dict) else {}
        tokens = (as_int(used.get("prompt_tokens")) or 0) + (
            as_int(used.get("completion_tokens")) or 0
        )
        rows.append(
            [
                k.get("name"),
                k.get("prefix"),
                "revoked" if k.get("revoked") is True else "active",
                as_int(limits.get("rpm")),
                as_int(limits.get("tpm")),
                as_int(limits.get("concurrency")),
                _budget(limits),
                _models(limits),
                limits.get("privacy"),
                limits.get("priority"),
                as_int(used.get("requests")),
                tokens,
                money(used.get("cost_usd")),
            ]
        )
    headers = ["name", "prefix", "status", "rpm", "tpm", "concurrency", "budget", "models"]
    headers += ["privacy", "priority", "requests", "tokens", "cost"]
    table = render_table(headers, rows, right={3, 4, 5, 6, 10, 11, 12})
    return f"{table}\n\n{USAGE_NOTE}"


def _limit_lines(view: Mapping[str, Any]) -> list[str]:
    limits = _limits(view)
    rates = [
        f"{value} {unit}"
        for value, unit in (
            (as_int(limits.get("rpm")), "requests/min"),
            (as_int(limits.get("tpm")), "tokens/min"),
            (as_int(limits.get("concurrency")), "at once"),
        )
        if value is not None
    ]
    budget = as_number(limits.get("budget_usd"))
    return [
        f"  rate:      {', '.join(rates) or 'no limit'}",
        f"  budget:    {'none' if budget is None else _budget(limits)}",
        f"  models:    {_models(limits)}",
        f"  privacy:   {clean(limits.get('privacy'))}",
        f"  priority:  {clean(limits.get('priority'))}",
    ]


def render_key(view: Mapping[str, Any], *, verb: str = "Key") -> str:
    """One key in a few lines (``keys update``): name, prefix, state, limits."""
    state = "revoked" if view.get("revoked") is True else "active"
    head = f"{verb} {clean(view.get('name'))} ({clean(view.get('prefix'))}, {state})"
    return "\n".join([head, *_limit_lines(view)])


def render_created(view: Mapping[str, Any], url: str) -> str:
    """``keys create``: the new key, this once, and how a client sends it."""
    key = clean(view.get("key"))
    return "\n".join(
        [
            f"Created key {clean(view.get('name'))}:",
            "",
            f"  {key}",
            "",
            "Copy it now: Nexus keeps only its hash and cannot show it again.",
            f'Use it as the API key: OpenAI(base_url="{clean(url)}/v1", api_key="{key}"),',
            f"or send the header 'Authorization: Bearer {key}'.",
            "",
            *_limit_lines(view),
        ]
    )


# ---------------------------------------------------------------------------------------------
# The commands.

group = typer.Typer(
    name="keys",
    help="Make, list, change and revoke the API keys of a running Nexus.",
    no_args_is_help=True,
)

RpmOption = Annotated[int | None, typer.Option(min=1, help="Requests per minute.")]
TpmOption = Annotated[
    int | None, typer.Option(min=1, help="Tokens (prompt and completion) per minute.")
]
ConcurrencyOption = Annotated[int | None, typer.Option(min=1, help="Requests at once.")]
BudgetOption = Annotated[
    float | None, typer.Option("--budget-usd", min=0, help="USD to spend per period.")
]
PeriodOption = Annotated[
    Period | None, typer.Option(case_sensitive=False, help="When the budget starts again (UTC).")
]
ModelsOption = Annotated[
    str | None,
    typer.Option(
        metavar="PATTERN,...",
        help="Only these models (names or glob patterns, comma-separated); '' for every model.",
    ),
]
PrivacyOption = Annotated[
    Privacy | None,
    typer.Option(case_sensitive=False, help="'local': never served by a cloud backend."),
]
PriorityOption = Annotated[
    Priority | None,
    typer.Option(case_sensitive=False, help="Place in the queue when backends are full."),
]
NameArgument = Annotated[str, typer.Argument(help="The key's name, as `keys list` shows.")]


@group.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key: who or what uses it.")],
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    concurrency: ConcurrencyOption = None,
    budget_usd: BudgetOption = None,
    period: PeriodOption = None,
    models: ModelsOption = None,
    privacy: PrivacyOption = None,
    priority: PriorityOption = None,
    json_: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Make an API key with these limits (none by default) and print it, this once."""
    limits = limits_body(
        rpm=rpm, tpm=tpm, concurrency=concurrency, budget_usd=budget_usd, period=period,
        models=models, privacy=privacy, priority=priority,
    )  # fmt: skip
    ask(url, token, partial(create_key, name=name, limits=limits, as_json=json_))


@group.command("list")
def keys_list(json_: JsonOption = False, url: UrlOption = None, token: TokenOption = None) -> None:
    """List the keys (revoked ones too): prefix, limits, and usage this period."""
    ask(url, token, partial(list_keys, as_json=json_))


@group.command("update")
def keys_update(
    name: NameArgument,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    concurrency: ConcurrencyOption = None,
    budget_usd: BudgetOption = None,
    period: PeriodOption = None,
    models: ModelsOption = None,
    privacy: PrivacyOption = None,
    priority: PriorityOption = None,
    clear: Annotated[
        list[Limit] | None,
        typer.Option("--clear", case_sensitive=False, help="Lift this limit (repeatable)."),
    ] = None,
    json_: JsonOption = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Change a key's limits; those not given stay as they are."""
    limits = limits_body(
        rpm=rpm, tpm=tpm, concurrency=concurrency, budget_usd=budget_usd, period=period,
        models=models, privacy=privacy, priority=priority, clear=[c.value for c in clear or ()],
    )  # fmt: skip
    ask(url, token, partial(update_key, name=name, limits=limits, as_json=json_))


@group.command("revoke")
def keys_revoke(
    name: NameArgument, json_: JsonOption = False, url: UrlOption = None, token: TokenOption = None
) -> None:
    """Revoke a key: requests with it are refused from now on; its usage is kept."""
    ask(url, token, partial(revoke_key, name=name, as_json=json_))
