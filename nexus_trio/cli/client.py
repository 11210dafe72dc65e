"""The one client of the admin API that every ``nexus`` client command shares.

`resolve_target` says where the server is and which token to send; `call` makes one HTTP
request and returns the JSON object, or raises `ClientError` whose message is one line (no
server there, or the server's own OpenAI-shaped error message). Printing the answer is
`nexus_trio.cli.output`'s job; each command module joins the two::

    target = resolve_target(url=None, token=None)   # NEXUS_URL or the local settings
    body = call(target, "GET", "/admin/backends")
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from nexus_trio import __version__
from nexus_trio.cli.output import clean, one_line
from nexus_trio.config import Settings, load_settings
from nexus_trio.errors import ConfigError

__all__ = [
    "FALLBACK_URL",
    "TIMEOUT_SECONDS",
    "TOKEN_ENV_VAR",
    "URL_ENV_VAR",
    "ClientError",
    "Target",
    "call",
    "items",
    "quote",
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
START_HINT: Final = (
    "start one with `nexus serve` (or `nexus serve --demo` to try a simulated fleet)"
)


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
    text = one_line(message)
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
        raise _no_server(target, one_line(reason).lower()) from None
    except httpx.TimeoutException:
        raise ClientError(
            f"Nexus at {target.url} did not answer within {TIMEOUT_SECONDS:g} s; is it "
            f"running? If not, {START_HINT}"
        ) from None
    except httpx.HTTPError as exc:  # something answered, but not HTTP as we know it
        detail = one_line(str(exc) or type(exc).__name__)
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


def items(body: Mapping[str, Any], key: str, target: Target, path: str) -> list[Any]:
    """The objects in the list `body[key]` (anything else in it is skipped).

    Raises:
        ClientError: `body` has no such list: not a Nexus, or not this version of it.
    """
    found = body.get(key)
    if not isinstance(found, list):
        raise ClientError(
            f"{target.url}{path} answered without a {key!r} list; is that a Nexus server "
            "of this version?"
        )
    return [item for item in found if isinstance(item, dict)]


def quote(name: str) -> str:
    """`name` as one path segment of an admin URL (``/`` and all)."""
    return urllib.parse.quote(name, safe="")
