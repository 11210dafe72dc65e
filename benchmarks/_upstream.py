"""The benchmark's upstream: a minimal OpenAI-compatible server on asyncio, as fast as we can
make one in the standard library.

Every contender (direct, nginx, Nexus, LiteLLM) talks to this same server. It is
deliberately not ``nexus_trio.testing.SimulatedBackend``: that one parses HTTP with h11 and
builds every answer word by word so that faults and continuations can be checked, which
costs far more CPU per request than a proxy in front of it; as a floor it would cap nginx
and make every proxy look alike. Here every answer is a precomputed byte string.

What it answers (HTTP/1.1, keep-alive, ``Content-Length`` request bodies):

- ``GET /v1/models`` (and ``/health``, ``/version``): the models below.
- ``POST /v1/chat/completions``, by model id:

  ========================  ===========================================================
  ``bench``                 not streamed: one fixed ``chat.completion`` (about 400 bytes)
  ``bench-whole``           the same; streamed, the same answer as one burst of events
                            (role and text, finish, usage, ``[DONE]``): an answer that took
                            no time to generate, in either shape (the latency and
                            throughput tests: Nexus asks every backend for a stream)
  ``bench`` streamed        a role chunk and the first content chunk at once, then
                            ``chunks - 1`` more content chunks, one every ``period``
                            seconds (drift-free), then the finish chunk and ``[DONE]``
  ``bench-short`` streamed  the same with ``short_chunks`` content chunks (latency tests)
  ``bench-hold`` streamed   the role chunk and one content chunk, then nothing until
                            the client goes away (open, idle streams for the memory test)
  ========================  ===========================================================

The first content chunk goes out with the role chunk because Nexus holds its response
headers until the first token: a first token that waited for the next tick would add up
to a whole period of noise to every time-to-first-token sample.

    python benchmarks/_upstream.py [--port 0] [--chunks 200] [--short-chunks 10] [--period 0.01]

prints ``http://127.0.0.1:<port>`` on its first line once it listens, and serves until
SIGTERM/SIGINT. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any, Final

MODEL: Final = "bench"
WHOLE_MODEL: Final = "bench-whole"
SHORT_MODEL: Final = "bench-short"
HOLD_MODEL: Final = "bench-hold"
CREATED: Final = 1_700_000_000
_CHUNK_ID: Final = "chatcmpl-bench"
_MAX_HEAD: Final = 16_384
_MAX_BODY: Final = 1_048_576


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


def _event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    """One SSE event, framed as one HTTP/1.1 chunk."""
    payload = {
        "id": _CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    data = b"data: " + _json(payload) + b"\n\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


_USAGE: Final = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
_MODELS: Final = _response(
    "200 OK",
    _json(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "bench"}
                for m in (MODEL, WHOLE_MODEL, SHORT_MODEL, HOLD_MODEL)
            ],
        }
    ),
)
_COMPLETION: Final = _response(
    "200 OK",
    _json(
        {
            "id": _CHUNK_ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "A short, fixed answer."},
                    "finish_reason": "stop",
                }
            ],
            "usage": _USAGE,
        }
    ),
)
_STREAM_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_ROLE: Final = _event({"role": "assistant", "content": ""})
_TOKEN: Final = _event({"content": " tok"})
_DONE: Final = b"data: [DONE]\n\n"
_TAIL: Final = _event({}, "stop") + f"{len(_DONE):x}\r\n".encode() + _DONE + b"\r\n0\r\n\r\n"


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


_USAGE_CHUNK: Final = {
    "id": _CHUNK_ID,
    "object": "chat.completion.chunk",
    "created": CREATED,
    "model": MODEL,
    "choices": [],
    "usage": _USAGE,
}
_WHOLE_STREAM: Final = (
    _STREAM_HEAD
    + _event({"role": "assistant", "content": "A short, fixed answer."})
    + _event({}, "stop")
    + _chunked(b"data: " + _json(_USAGE_CHUNK) + b"\n\n")
    + _chunked(_DONE)
    + b"0\r\n\r\n"
)
_NOT_FOUND: Final = _response("404 Not Found", b'{"error":{"message":"not found"}}')
_BAD: Final = _response("400 Bad Request", b'{"error":{"message":"bad request"}}')


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed in order; a stream owns it until it ends."""

    def __init__(self, chunks: int, short_chunks: int, period: float) -> None:
        self.chunks = chunks
        self.short_chunks = short_chunks
        self.total = chunks  # of the stream being sent
        self.period = period
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.TimerHandle | None = None
        self.holding = False
        self.close_after = False  # the request said "Connection: close"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        # Pipelined requests behind a stream wait for it to end (HTTP/1.1 order).
        while self.streaming is None and not self.holding and self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self._fail()
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, *_ = head[0].split(" ")
            length = 0
            self.close_after = False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection":
                    self.close_after = value.strip().lower() == "close"
                elif name == "transfer-encoding":
                    self._fail()  # every contender sends Content-Length; say so if not
                    return
            if length > _MAX_BODY:
                self._fail()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(method, path.split("?")[0], body)
            if self.close_after and self.streaming is None and not self.holding:
                self.transport.close()  # the whole answer has been written

    def _fail(self) -> None:
        assert self.transport is not None
        self.transport.write(_BAD)
        self.transport.close()

    def _answer(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        if method == "GET" and path in ("/v1/models", "/models", "/health", "/version"):
            self.transport.write(_MODELS)
            return
        if method != "POST" or path not in ("/v1/chat/completions", "/chat/completions"):
            self.transport.write(_NOT_FOUND)
            return
        try:
            request = json.loads(body)
        except ValueError:
            self.transport.write(_BAD)
            return
        if not isinstance(request, dict) or not request.get("stream"):
            self.transport.write(_COMPLETION)
            return
        if request.get("model") == WHOLE_MODEL:
            self.transport.write(_WHOLE_STREAM)
            return
        self.transport.write(_STREAM_HEAD + _ROLE + _TOKEN)
        if request.get("model") == HOLD_MODEL:
            self.holding = True  # until the client closes
            return
        self.total = self.short_chunks if request.get("model") == SHORT_MODEL else self.chunks
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._tick(loop, start, 1)

    def _tick(self, loop: asyncio.AbstractEventLoop, start: float, sent: int) -> None:
        self.streaming = None
        if self.transport is None:
            return
        if sent >= self.total:
            self.transport.write(_TAIL)
            if self.close_after:
                self.transport.close()
                return
            if self.buffer:
                self.data_received(b"")
            return
        # Drift-free: chunk k is due at start + (k - 1) * period, however late this tick ran.
        due = start + sent * self.period
        self.streaming = loop.call_at(due, self._send_token, loop, start, sent)

    def _send_token(self, loop: asyncio.AbstractEventLoop, start: float, sent: int) -> None:
        if self.transport is None:
            return
        self.transport.write(_TOKEN)
        self._tick(loop, start, sent + 1)


async def serve(port: int, chunks: int, short_chunks: int, period: float) -> None:
    """Listen on 127.0.0.1:``port`` (0: any free port), print the URL, serve until a signal."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(chunks, short_chunks, period), "127.0.0.1", port, backlog=4096
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{bound}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=200, help="content chunks per stream")
    parser.add_argument("--short-chunks", type=int, default=10, help="... of bench-short")
    parser.add_argument("--period", type=float, default=0.01, help="seconds between chunks")
    args = parser.parse_args()
    asyncio.run(serve(args.port, max(1, args.chunks), max(1, args.short_chunks), args.period))


if __name__ == "__main__":
    main()
