"""The proxy: the attempt and failover loop, stream tracking and continuation, SSE parsing."""

from nexus_trio.proxy.attempt import Downstream, Outcome
from nexus_trio.proxy.forward import forward_chat
from nexus_trio.proxy.sse import SSEEvent, SSEParser

__all__ = ["Downstream", "Outcome", "SSEEvent", "SSEParser", "forward_chat"]
