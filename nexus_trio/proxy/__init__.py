"""The proxy: the attempt and failover loop, stream tracking and continuation, SSE
parsing, and the `Writer` seam the dialects plug into."""

from nexus_trio.proxy.exchange import Exchange, Outcome
from nexus_trio.proxy.forward import forward_chat
from nexus_trio.proxy.sse import SSEEvent, SSEParser
from nexus_trio.proxy.writer import WholeAnswer, Writer

__all__ = [
    "Exchange",
    "Outcome",
    "SSEEvent",
    "SSEParser",
    "WholeAnswer",
    "Writer",
    "forward_chat",
]
