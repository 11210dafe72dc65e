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

__all__ = [
    "ShardedTransport",
    "UpstreamClient",
    "backend_headers",
    "open_upstream_client",
    "translate_httpx_error",
]


# Keep-alive pools the upstream connections are spread over (see `ShardedTransport`).
POOL_SHARDS = 16
# Idle keep-alive connections kept, over all shards.
KEEPALIVE_CONNECTIONS = 512


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several httpx connection pools, used in turn.

    httpcore's pool re-examines every connection it holds on each request and on each
    response's end, and counts its idle ones once per idle connection — work that grows
    with the square of the pool's size. With hundreds of streams open it cost more than
    the relaying itself (a third of the CPU under load); over 16 pools, each stays small.
    Keep-alive works as before, within each pool.
    """

    def __init__(self, shards: int, limits: httpx.Limits) -> None:
        # One TLS context for all: each costs a read of the CA bundle (~15 ms).
        tls = httpx.create_ssl_context()
        self._shards = [
            httpx.AsyncHTTPTransport(verify=tls, limits=limits, trust_env=False)
            for _ in range(shards)
        ]
        self._turn = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._turn = (self._turn + 1) % len(self._shards)
        return await self._shards[self._turn].handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


_USER_AGENT = "nexus-trio"


class UpstreamClient(httpx.AsyncClient):
    """httpx's client for every call to a backend, with a short way for chat requests.

    Health checks, listings and detection use it as any httpx client. Chat requests,
    the hot path, go straight to the pooled transport with `open_post`, past the
    client's per-request layers — URL merging, cookie extraction, auth and redirect
    handling — which cost about a tenth of a request's CPU, and which a proxy does not
    want anyway (a backend's cookies are not Nexus's to keep).
    """

    def __init__(self, connect_timeout_seconds: float) -> None:
        limits = httpx.Limits(
            max_connections=None,
            max_keepalive_connections=KEEPALIVE_CONNECTIONS // POOL_SHARDS,
            keepalive_expiry=30.0,
        )
        self.pools = ShardedTransport(POOL_SHARDS, limits)
        super().__init__(
            timeout=httpx.Timeout(None, connect=connect_timeout_seconds),
            transport=self.pools,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not sit between us and the fleet
            headers={"user-agent": _USER_AGENT},
        )
        # Only the connect is bounded here: callers set every other deadline with trio.
        self._timeouts = {"connect": connect_timeout_seconds, "read": None, "write": None,
                          "pool": None}  # fmt: skip

    async def open_post(self, url: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        """POST ``body`` and return the response once its headers are in; its body is
        read by the caller, who must ``aclose()`` it.

        Raises:
            httpx.HTTPError: the request could not be sent or the headers not read.
        """
        request = httpx.Request(
            "POST",
            url,
            headers={**headers, "user-agent": _USER_AGENT},
            content=body,
            extensions={"timeout": self._timeouts},
        )
        response = await self.pools.handle_async_request(request)
        response.request = request
        return response


def open_upstream_client(connect_timeout_seconds: float) -> UpstreamClient:
    """The one client every backend call goes through (pooled keep-alive connections).

    Deadlines on reads are set by the callers with trio cancel scopes, per
    phase; httpx only bounds the connect.
    """
    return UpstreamClient(connect_timeout_seconds)


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
