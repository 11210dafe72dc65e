"""The edge where Nexus talks to backends: the HTTP clients, the headers sent, and the
translation of transport failures into Nexus's errors. Below `nexus_trio.proxy` and
`nexus_trio.backends`; above only the registry, settings and errors."""

from nexus_trio.upstream.client import (
    UpstreamClient,
    backend_headers,
    open_upstream_client,
    translate_httpx_error,
)
from nexus_trio.upstream.http1 import Http1Pool, Http1Response

__all__ = [
    "Http1Pool",
    "Http1Response",
    "UpstreamClient",
    "backend_headers",
    "open_upstream_client",
    "translate_httpx_error",
]
