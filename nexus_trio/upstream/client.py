"""The edge where Nexus talks to backends: one client, translated errors.

Headers to a backend are built here and only here, so two rules hold by
construction: the client's ``Authorization`` never reaches a backend (nothing
of the client's headers is copied but ``X-Request-Id``), and a backend's own
key is sent to that backend only.
"""

from __future__ import annotations

from types import TracebackType

import httpx
import trio

from nexus_trio.errors import BackendError, BackendProtocolError, BackendTimeout, BackendUnreachable
from nexus_trio.instance import VIA_HEADER
from nexus_trio.registry import Backend
from nexus_trio.upstream.http1 import USER_AGENT, Http1Pool, Http1Response

__all__ = [
    "CHAT_PATH",
    "UpstreamClient",
    "backend_headers",
    "open_upstream_client",
    "translate_httpx_error",
]


CHAT_PATH = "/v1/chat/completions"  # a backend's OpenAI chat endpoint, under its base URL


class UpstreamClient(httpx.AsyncClient):
    """The client for every call to a backend.

    Health checks, listings and detection use it as any httpx client. Chat requests, the
    hot path, go through `open_chat` to `chat`, Nexus's own HTTP/1.1 client
    (`nexus_trio.upstream.http1`), which does per request and per streamed event only what
    relaying needs.
    """

    def __init__(self, connect_timeout_seconds: float, own_id: str | None = None) -> None:
        # This Nexus's X-Nexus-Via: an answer carrying it came back to us (see `open_chat`).
        self.own_id = own_id
        # One TLS context for both: each costs a read of the CA bundle (~15 ms).
        tls = httpx.create_ssl_context()
        self.chat = Http1Pool(connect_timeout_seconds, tls)
        super().__init__(
            timeout=httpx.Timeout(None, connect=connect_timeout_seconds),
            verify=tls,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not sit between us and the fleet
            headers={"user-agent": USER_AGENT},
        )

    async def open_chat(
        self, backend: Backend, request_id: str, body: bytes, path: str = CHAT_PATH
    ) -> Http1Response:
        """POST an inference ``body`` (a chat completion unless ``path`` says otherwise) to
        ``backend`` and return the response once its head is in; its body is read by the
        caller, who must ``aclose()`` it.

        Raises:
            httpx.TransportError: the request could not be sent or the head not read.
            BackendProtocolError: the answer is this Nexus's own (the backend routes back
                here): asking again would only loop.
        """
        headers = {**backend_headers(backend, request_id), "content-type": "application/json"}
        if self.own_id is not None:
            headers[VIA_HEADER] = self.own_id  # a Nexus that gets it back refuses it at once
        response = await self.chat.post(backend.url + path, headers, body)
        if self.own_id is not None and response.headers.get(VIA_HEADER) == self.own_id:
            with trio.move_on_after(1, shield=True):
                await response.aclose()
            raise BackendProtocolError(
                backend.name,
                "answers with this Nexus's own X-Nexus-Via: its URL leads back to this Nexus; "
                "point it at the inference server itself",
            )
        return response

    async def aclose(self) -> None:
        try:
            await self.chat.aclose()
        finally:
            await super().aclose()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        # httpx's own exit closes its transports, not through `aclose`.
        try:
            await self.chat.aclose()
        finally:
            await super().__aexit__(exc_type, exc_value, traceback)


def open_upstream_client(
    connect_timeout_seconds: float, own_id: str | None = None
) -> UpstreamClient:
    """The one client every backend call goes through (pooled keep-alive connections);
    ``own_id`` is this Nexus's ``X-Nexus-Via``, refused in an answer.

    Deadlines on reads are set by the callers with trio cancel scopes, per
    phase; httpx only bounds the connect.
    """
    return UpstreamClient(connect_timeout_seconds, own_id)


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
