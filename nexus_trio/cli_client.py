"""The client side of ``nexus backends|models|health``: ask a running Nexus, render its answer.

Two halves, kept apart on purpose:

- I/O: `resolve_target` says where the server is and which token to send; `call` makes one
  HTTP request and returns the JSON object, or raises `ClientError` whose message is one
  line (no server there, or the server's own OpenAI-shaped error message).
- Pure rendering: ``render_*`` take the server's JSON and return text. They never raise on
  odd input (a field missing or of the wrong type prints as ``-``), and every string from the
  network goes through `clean`, so a backend named ``"\\x1b]0;pwned\\a"`` cannot drive the
  terminal. ``--json`` output goes through `render_json`: pretty, sorted keys, ASCII only.

The command functions (`list_backends`, `add_backend`, ...) join the two and return the text
to print::

    target = resolve_target(url=None, token=None)   # NEXUS_URL or the local settings
    print(list_backends(target, status="healthy"))
"""

from __future__ import annotations

import enum
import json
import math
import os
import unicodedata
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypedDict

import httpx

from nexus_trio import __version__
from nexus_trio.config import Settings, load_settings
from nexus_trio.errors import ConfigError

__all__ = [
    "FALLBACK_URL",
    "TIMEOUT_SECONDS",
    "TOKEN_ENV_VAR",
    "URL_ENV_VAR",
    "BackendStatus",
    "BackendView",
    "ClientError",
    "HealthView",
    "ModelView",
    "Target",
    "add_backend",
    "call",
    "clean",
    "display_width",
    "get_health",
    "list_backends",
    "list_models",
    "remove_backend",
    "render_backend",
    "render_backends",
    "render_health",
    "render_json",
    "render_models",
    "render_table",
    "resolve_target",
    "server_url",
]

URL_ENV_VAR: Final = "NEXUS_URL"
TOKEN_ENV_VAR: Final = "NEXUS_ADMIN_TOKEN"  # the same variable `nexus serve` reads
FALLBACK_URL: Final = "http://127.0.0.1:8000"
CONNECT_TIMEOUT_SECONDS: Final = 5.0
# `backends add` waits while the server fingerprints the new backend and lists its models,
# which takes up to its own connect and probe timeouts (5 s each by default).
TIMEOUT_SECONDS: Final = 30.0
MAX_CELL_WIDTH: Final = 48
START_HINT: Final = (
    "start one with `nexus serve` (or `nexus serve --demo` to try a simulated fleet)"
)


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


class ModelView(TypedDict, total=False):
    """One model as ``GET /admin/models`` describes it."""

    id: str
    backends: list[str]
    available: bool
    context_length: int | None
    capabilities: list[str] | None


class HealthView(TypedDict, total=False):
    """The body of ``GET /health``."""

    status: str  # healthy | degraded | unhealthy
    backends: dict[str, dict[str, Any]]
    models: int
    uptime_seconds: float
    version: str


class ClientError(Exception):
    """A command failed; `message` is one line for stderr, `exit_code` what to exit with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------------
# Where the server is.


@dataclass(frozen=True, slots=True)
class Target:
    """A Nexus to talk to: its base URL and the admin token to send (never in the repr)."""

    url: str
    token: str | None = field(default=None, repr=False)


def server_url(settings: Settings) -> str:
    """The URL a client on this machine reaches `settings`' server at.

    A wildcard listen address is not one to connect to: 0.0.0.0 becomes 127.0.0.1 and ::
    becomes [::1]. Port 0 (pick any) cannot be guessed, so it falls back to 8000.

    Example: ``server_url(Settings()) == "http://127.0.0.1:8000"``.
    """
    host = settings.server.host.strip()
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal in a URL
    port = settings.server.port or 8000
    return f"http://{host}:{port}"


def _check_url(url: str) -> str:
    text = url.strip()
    if "://" not in text:
        text = "http://" + text  # "localhost:8000" is what people type
    try:
        parts = urllib.parse.urlsplit(text)
        _ = parts.port  # raises on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(
            f"--url must look like http://127.0.0.1:8000, got {clean(url)!r}", exit_code=2
        )
    return text.rstrip("/")


class _KeysCountAsSet(Mapping[str, str]):
    """The environment, in which every variable outside ``NEXUS_*`` counts as set.

    The client never uses the backends' API keys, and the server it talks to may well have
    them (a service with its own environment) when this shell does not; without this, a
    missing key would fail the load and send us to the fallback address instead.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        if name in self._environ or name.startswith("NEXUS_"):
            return self._environ[name]
        return "set-for-the-client"

    def __iter__(self) -> Iterator[str]:
        return iter(self._environ)

    def __len__(self) -> int:
        return len(self._environ)


def _load_local_settings() -> Settings:
    return load_settings(environ=_KeysCountAsSet(os.environ))


def resolve_target(
    url: str | None,
    token: str | None,
    *,
    load: Callable[[], Settings] = _load_local_settings,
) -> Target:
    """The server to talk to, from the flags (typer has already applied ``NEXUS_URL`` and
    ``NEXUS_ADMIN_TOKEN``), else from the local settings (``nexus.toml``, ``NEXUS_*``).

    With no URL given, the one `nexus serve` would listen on here (`server_url`), and, if no
    token is given either, the settings' ``server.admin_token``: the server we derive is the
    one those settings configure. A URL given explicitly never gets the settings' token, so
    the token is not sent to another server. Settings that fail to load mean `FALLBACK_URL`.

    Raises:
        ClientError: the URL is not an http(s) URL (exit code 2).

    Example: ``resolve_target("http://gpu-box:8000", None).url == "http://gpu-box:8000"``.
    """
    token = token or None
    if url:
        return Target(_check_url(url), token)
    try:
        settings = load()
    except ConfigError:
        return Target(FALLBACK_URL, token)
    return Target(server_url(settings), token or settings.server.admin_token)


# ---------------------------------------------------------------------------------------------
# One request.


def _no_server(target: Target, why: str) -> ClientError:
    return ClientError(f"no Nexus server at {target.url} ({why}); {START_HINT}")


def _error_message(response: httpx.Response, target: Target) -> str:
    """The server's OpenAI-shaped error message, else the status line."""
    message: object = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        message = body["error"].get("message")
    if not isinstance(message, str) or not message.strip():
        message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    text = _one_line(message)
    if response.status_code in (401, 403) and not target.token:
        text += f" (pass --token or set {TOKEN_ENV_VAR})"
    return text


def call(
    target: Target,
    method: str,
    path: str,
    *,
    body: Mapping[str, object] | None = None,
    ok: Collection[int] = (200,),
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Send one request to the server; return its JSON object when the status is in `ok`.

    Raises:
        ClientError: nothing answers at `target` (refused, timed out, not HTTP), the server
            answered with an error (its message), or the answer is not a JSON object.

    Example: ``call(target, "GET", "/health", ok=(200, 503))["status"]``.
    """
    headers = {"Accept": "application/json", "User-Agent": f"nexus-cli/{__version__}"}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    timeout = httpx.Timeout(TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    try:
        with httpx.Client(base_url=target.url, timeout=timeout, transport=transport) as client:
            response = client.request(method, path, json=body, headers=headers)
    except httpx.ConnectTimeout:
        raise _no_server(target, f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s") from None
    except httpx.ConnectError as exc:
        reason = str(exc).split("] ", 1)[-1] or "cannot connect"  # drop "[Errno 111] "
        raise _no_server(target, _one_line(reason).lower()) from None
    except httpx.TimeoutException:
        raise ClientError(
            f"Nexus at {target.url} did not answer within {TIMEOUT_SECONDS:g} s; is it "
            f"running? If not, {START_HINT}"
        ) from None
    except httpx.HTTPError as exc:  # something answered, but not HTTP as we know it
        detail = _one_line(str(exc) or type(exc).__name__)
        raise ClientError(
            f"cannot talk to Nexus at {target.url} ({detail}); is that a Nexus server? "
            f"If not, {START_HINT}"
        ) from None
    if response.status_code not in ok:
        raise ClientError(_error_message(response, target))
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ClientError(
            f"{target.url}{path} answered something that is not a JSON object; "
            "is that a Nexus server?"
        )
    return answer


def _items(body: Mapping[str, Any], key: str, target: Target, path: str) -> list[Any]:
    items = body.get(key)
    if not isinstance(items, list):
        raise ClientError(
            f"{target.url}{path} answered without a {key!r} list; is that a Nexus server "
            "of this version?"
        )
    return [item for item in items if isinstance(item, dict)]


# ---------------------------------------------------------------------------------------------
# The commands: one request, then text to print.


def list_backends(target: Target, *, status: str | None = None, as_json: bool = False) -> str:
    """``nexus backends list``: the backends, optionally only those in `status`.

    Raises:
        ClientError: as `call`.
    """
    path = "/admin/backends"
    backends = _items(call(target, "GET", path), "backends", target, path)
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
    quoted = urllib.parse.quote(name, safe="")
    answer = call(target, "DELETE", f"/admin/backends/{quoted}")
    if as_json:
        return render_json(answer)
    return f"Removed backend {clean(answer.get('removed', name))}."


def list_models(target: Target, *, backend: str | None = None, as_json: bool = False) -> str:
    """``nexus models``: every model and the backends serving it (or only `backend`'s).

    Raises:
        ClientError: as `call`.
    """
    path = "/admin/models"
    models = _items(call(target, "GET", path), "models", target, path)
    if backend is not None:
        models = [m for m in models if backend in _list(m.get("backends"))]
    if as_json:
        return render_json({"models": models})
    if not models and backend is not None:
        return f"No models on a backend named {clean(backend)}."
    return render_models(models)


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


# ---------------------------------------------------------------------------------------------
# Rendering: pure functions of the server's JSON.

# Shown as escapes rather than passed through: C0/C1 controls and DEL (terminal escape
# sequences), line and paragraph separators (a second line), bidi overrides (text that reads
# differently than it is, CVE-2021-42574), and lone surrogates (which stdout cannot encode).
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})


def clean(value: object) -> str:
    """`value` as text that is safe to print: controls become visible escapes like ``\\x1b``.

    None is ``-``; anything but a string is shown with `str`.

    Example: ``clean("evil\\x1b[2J") == "evil\\\\x1b[2J"``.
    """
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and text.isascii():
        return text  # the common case, fast
    out: list[str] = []
    for char in text:
        if char in _BIDI or unicodedata.category(char) in _UNSAFE_CATEGORIES:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _one_line(text: str) -> str:
    """`text` on one line (whitespace runs, newlines included, become one space), cleaned."""
    return clean(" ".join(text.split()))


def display_width(text: str) -> int:
    """Terminal columns `text` takes: wide East Asian characters count 2, combining marks 0."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _fit(text: str, limit: int) -> str:
    """`text` cut to at most `limit` columns, with an ellipsis when cut."""
    if display_width(text) <= limit:
        return text
    out, width = [], 0
    for char in text:
        step = display_width(char)
        if width + step > limit - 1:
            break
        out.append(char)
        width += step
    return "".join(out) + "…"


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    right: Collection[int] = (),
    max_width: int = MAX_CELL_WIDTH,
) -> str:
    """Rows as plain columns, two spaces apart, under upper-case headers; no trailing spaces.

    Every cell goes through `clean` and is cut to `max_width` columns; columns whose index is
    in `right` are right-aligned (numbers).

    Example::

        >>> print(render_table(["name", "n"], [["a", 1], ["bb", 22]], right={1}))
        NAME   N
        a      1
        bb    22
    """
    table = [[h.upper() for h in headers]] + [
        [_fit(clean(cell), max_width) for cell in row] for row in rows
    ]
    widths = [max(display_width(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - display_width(cell))
            cells.append(pad + cell if i in right else cell + pad)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_json(body: object) -> str:
    """The server's JSON for scripts: indented, keys sorted, ASCII only (``\\u`` escapes for
    the rest, so nothing in it can be a terminal escape sequence)."""
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=True)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: object) -> list[str]:
    return [clean(v) for v in _list(value)]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _yes_no(value: object) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else "-"


def _latency(value: object) -> str:
    ms = _number(value)
    if ms is None:
        return "-"
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def _busy(in_flight: object, limit: object) -> str:
    busy, cap = _int(in_flight), _int(limit)
    if busy is None:
        return "-"
    return f"{busy}/{cap}" if cap is not None else str(busy)


def _details(rows: Sequence[tuple[object, object]]) -> str:
    """Why backends are in the state they are in, under a table, one line each."""
    lines = [
        f"  {_fit(clean(name), MAX_CELL_WIDTH)}: {_one_line(detail)}"
        for name, detail in rows
        if isinstance(detail, str) and detail.strip()
    ]
    return "\n\n" + "\n".join(lines) if lines else ""


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
    left = _number(backend.get("ejected_seconds"))
    if left is not None:
        when += f", in {_duration(math.ceil(left))}"
    count = _int(backend.get("ejections"))
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
            _int(b.get("priority")),
            ",".join(_strings(b.get("sources"))) or "-",
            b.get("url"),
        ]
        for b in backends
    ]
    table = render_table(
        ["name", "type", "status", "models", "busy", "latency", "priority", "source", "url"],
        rows,
        right={3, 4, 5, 6},
    )
    return table + _details([(b.get("name"), _ejection(b) or b.get("detail")) for b in backends])


def render_backend(backend: Mapping[str, Any], *, verb: str = "Backend") -> str:
    """One backend in a few lines (``nexus backends add``): name, type, URL, status, models."""
    models = _strings(backend.get("models"))
    lines = [
        f"{verb} {clean(backend.get('name'))} ({clean(backend.get('type'))}) at "
        f"{clean(backend.get('url'))}",
        f"  status:   {clean(backend.get('status'))}",
        f"  priority: {clean(_int(backend.get('priority')))}",
        f"  models:   {', '.join(models) if models else 'none yet'}",
    ]
    detail = backend.get("detail")
    if isinstance(detail, str) and detail.strip():
        lines.insert(2, f"  detail:   {_one_line(detail)}")
    return "\n".join(lines)


def render_models(models: Sequence[Mapping[str, Any]]) -> str:
    """The models table of ``nexus models`` (from ``GET /admin/models`` items)."""
    if not models:
        return "No models. No backend is serving one yet: see `nexus backends list`."
    rows = [
        [
            m.get("id"),
            _yes_no(m.get("available")),
            _int(m.get("context_length")),
            ",".join(_strings(m.get("capabilities"))) or "-",
            ", ".join(_strings(m.get("backends"))) or "-",
        ]
        for m in models
    ]
    return render_table(
        ["model", "available", "context", "capabilities", "backends"], rows, right={2}
    )


def _duration(seconds: object) -> str:
    value = _number(seconds)
    if value is None:
        return "-"
    total = int(value)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


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
    models = _int(health.get("models"))
    summary = (
        f"Nexus {clean(health.get('version'))} is {clean(health.get('status'))}: "
        f"{len(entries)} backend{'' if len(entries) == 1 else 's'}"
        + (f" ({tally})" if tally else "")
        + (f", {models} model{'' if models == 1 else 's'}" if models is not None else "")
        + f", up {_duration(health.get('uptime_seconds'))}."
    )
    if not entries:
        return summary + "\n\nNo backends yet: add one with `nexus backends add URL`."
    rows = [
        [
            name,
            b.get("status"),
            b.get("type"),
            ",".join(_strings(b.get("sources"))) or b.get("source"),
            _int(b.get("models")),
            _int(b.get("in_flight")),
        ]
        for name, b in entries
    ]
    table = render_table(
        ["backend", "status", "type", "source", "models", "busy"], rows, right={4, 5}
    )
    return f"{summary}\n\n{table}" + _details([(name, b.get("detail")) for name, b in entries])
