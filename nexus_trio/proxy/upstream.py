"""The edge where Nexus talks to backends: one pooled httpx client, translated errors.

Headers to a backend are built here and only here, so two rules hold by
construction: the client's ``Authorization`` never reaches a backend (nothing
of the client's headers is copied but ``X-Request-Id``), and a backend's own
key is sent to that backend only.
"""

from __future__ import annotations

import httpx

from nexus_trio.errors import BackendError, BackendProtocolError, BackendTimeout, BackendUnreachable
from nexus_trio.registry import Backend

__all__ = ["backend_headers", "open_upstream_client", "translate_httpx_error"]


def open_upstream_client(connect_timeout_seconds: float) -> httpx.AsyncClient:
    """The one client every backend call goes through (keep-alive pools per host).

    Deadlines on reads are set by the callers with trio cancel scopes, per
    phase; httpx only bounds the connect.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=connect_timeout_seconds),
        limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=256, keepalive_expiry=30.0
        ),
        follow_redirects=False,
        trust_env=False,  # a proxy from the environment must not sit between us and the fleet
        headers={"user-agent": "nexus-trio"},
    )


def backend_headers(backend: Backend, request_id: str | None = None) -> dict[str, str]:
    headers = {"accept": "application/json, text/event-stream"}
    if backend.api_key:
        headers["authorization"] = f"Bearer {backend.api_key}"
    if request_id:
        headers["x-request-id"] = request_id
    return headers


def translate_httpx_error(backend: str, exc: httpx.HTTPError) -> BackendError:
    """Our error for an httpx failure talking to ``backend`` (the caller chains it)."""
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeout(backend, f"timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return BackendUnreachable(backend, f"cannot connect ({exc or type(exc).__name__})")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return BackendProtocolError(backend, f"broke the HTTP protocol ({exc})")
    if isinstance(exc, httpx.NetworkError):
        return BackendUnreachable(backend, f"connection lost ({exc or type(exc).__name__})")
    return BackendError(backend, f"{type(exc).__name__}: {exc}")
