"""Streams on raw trio sockets: relay capacity, and idle streams held open.

At tens of thousands of chunks per second httpx would spend more CPU per chunk than some
of the proxies being measured, on the same core as the upstream, and would become the
limit itself; this client parses only the status and the framing of each response and
counts the content events in the bytes it receives.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import trio
from _contenders import Contender
from _load import MESSAGES

TOKEN: Final = b'" tok"'  # each content event carries it once, however it is re-encoded
# The same streamed question in each API Nexus speaks: path and body.
APIS: Final[Mapping[str, tuple[str, Mapping[str, Any]]]] = {
    "chat": ("/v1/chat/completions", {"messages": MESSAGES, "stream": True}),
    "messages": ("/v1/messages", {"messages": MESSAGES, "max_tokens": 4096, "stream": True}),
    "responses": ("/v1/responses", {"input": MESSAGES, "stream": True}),
}


def _request(contender: Contender, model: str, *, keep_alive: bool, api: str = "chat") -> bytes:
    path, fields = APIS[api]
    body = json.dumps({"model": model, **fields}).encode()
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
        *([] if keep_alive else ["Connection: close"]),
        *(f"{k}: {v}" for k, v in contender.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _open(address: tuple[str, int], request: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(*address)
    await stream.send_all(request)
    return stream


def _address(contender: Contender) -> tuple[str, int]:
    host, port = contender.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@dataclass
class _Relay:
    window_start: float
    window_end: float
    chunks: int = 0
    streams_done: int = 0
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 3:
            self.error_examples.append(what)

    def count(self, data: bytes) -> None:
        if self.window_start <= trio.current_time() < self.window_end:
            self.chunks += data.count(TOKEN)


class _ResponseReader:
    """Reads one streamed HTTP/1.1 response off a connection, counting content events.

    Only what finding the end of the response takes: the status, then the body framed by
    ``Transfer-Encoding: chunked`` (ends at the zero-size chunk), ``Content-Length``, or
    the end of the connection.
    """

    def __init__(self, stream: trio.SocketStream, relay: _Relay) -> None:
        self.stream = stream
        self.relay = relay

    async def _receive(self) -> bytes:
        return await self.stream.receive_some(65536)

    async def read(self) -> bool:
        """Read one response to its end; whether the connection can carry another."""
        head = b""
        while b"\r\n\r\n" not in head:
            data = await self._receive()
            if not data:
                raise trio.BrokenResourceError("closed before the response headers")
            head += data
        head, _, body = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").lower().split("\r\n")
        if not lines[0].startswith("http/1.1 200"):
            raise RuntimeError(lines[0])
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        keep = headers.get("connection", "").strip() != "close"
        # The tails carry what a token or the last chunk may have left in the previous read.
        tail = end = b""
        if headers.get("transfer-encoding", "").strip() == "chunked":
            while True:
                self.relay.count(tail + body)
                seen = end + body
                if seen.endswith(b"\r\n0\r\n\r\n") or seen == b"0\r\n\r\n":
                    return keep
                tail = (tail + body)[-(len(TOKEN) - 1) :]
                end = seen[-6:]
                body = await self._receive()
                if not body:
                    raise trio.BrokenResourceError("closed inside a chunked body")
        if "content-length" in headers:
            left = int(headers["content-length"])
            while True:
                self.relay.count(tail + body)
                tail = (tail + body)[-(len(TOKEN) - 1) :]
                left -= len(body)
                if left <= 0:
                    return keep
                body = await self._receive()
                if not body:
                    raise trio.BrokenResourceError("closed inside the body")
        while body:  # delimited by the end of the connection
            self.relay.count(tail + body)
            tail = (tail + body)[-(len(TOKEN) - 1) :]
            body = await self._receive()
        return False


async def _relay_worker(
    contender: Contender, request: bytes, relay: _Relay, stream_seconds: float, seed: int
) -> None:
    # Staggered starts, so that streams do not begin and end in lockstep.
    await trio.sleep(random.Random(seed).uniform(0, stream_seconds))
    address = _address(contender)
    while True:
        try:
            stream = await trio.open_tcp_stream(*address)
        except OSError as exc:
            relay.error(f"connect: {exc}")
            await trio.sleep(0.1)
            continue
        async with stream:
            reader = _ResponseReader(stream, relay)
            keep = True
            while keep:  # one stream after another on a kept-alive connection
                try:
                    await stream.send_all(request)
                    keep = await reader.read()
                    relay.streams_done += 1
                except (trio.BrokenResourceError, RuntimeError) as exc:
                    relay.error(f"{type(exc).__name__}: {exc}")
                    await trio.sleep(0.1)
                    break


async def relay_capacity(
    contender: Contender, streams: int, seconds: float, stream_seconds: float, api: str = "chat"
) -> dict[str, Any]:
    """Content chunks per second relayed to ``streams`` concurrent streams, over ``seconds``,
    asked in ``api`` (a key of `APIS`).

    Counting starts once every stream has had time to start (one stream's length plus half
    a second) and stops ``seconds`` later; then every stream is cancelled.
    """
    now = trio.current_time()
    ramp = stream_seconds + 0.5
    relay = _Relay(now + ramp, now + ramp + seconds)
    request = _request(contender, "bench", keep_alive=True, api=api)
    with trio.move_on_after(ramp + seconds):
        async with trio.open_nursery() as nursery:
            for index in range(streams):
                nursery.start_soon(_relay_worker, contender, request, relay, stream_seconds, index)
    return {
        "chunks_per_s": relay.chunks / seconds,
        "streams_done": relay.streams_done,
        "errors": relay.errors,
        "error_examples": relay.error_examples,
    }


async def _hold_one(
    address: tuple[str, int],
    request: bytes,
    gate: trio.Semaphore,
    opened: list[int],
    failures: list[str],
    all_open: trio.Event,
    target: int,
) -> None:
    """One stream held open and idle after its first content chunk, until cancelled."""
    async with gate:  # a few connects at a time: listen backlogs are short
        try:
            stream = await _open(address, request)
        except OSError as exc:
            failures.append(f"connect: {exc}")
            return
        received = b""
        while TOKEN not in received:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError as exc:
                data = b""
                failures.append(f"read: {exc}")
            if not data:
                failures.append(f"closed after {received[:120]!r}")
                await stream.aclose()
                return
            received += data
    opened[0] += 1
    if opened[0] == target:
        all_open.set()
    async with stream:
        await trio.sleep_forever()


async def open_idle_streams(
    contender: Contender,
    count: int,
    seconds: float,
    measure: Callable[[], int],
    settle_seconds: float = 1.0,
    concurrency: int = 50,
) -> Mapping[str, Any]:
    """Open ``count`` streams that stay silent after their first chunk, then call ``measure()``.

    Waits up to ``seconds`` for all of them; ``measure`` runs with however many are open
    by then, after ``settle_seconds``. Every stream is closed before this returns.
    """
    address = _address(contender)
    request = _request(contender, "bench-hold", keep_alive=False)
    opened = [0]
    failures: list[str] = []
    all_open = trio.Event()
    gate = trio.Semaphore(concurrency)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(_hold_one, address, request, gate, opened, failures, all_open, count)
        with trio.move_on_after(seconds):
            await all_open.wait()
        open_seconds = trio.current_time() - started
        await trio.sleep(settle_seconds)
        measured = measure()
        nursery.cancel_scope.cancel()
    return {
        "open": opened[0],
        "open_seconds": open_seconds,
        "failures": len(failures),
        "failure_examples": failures[:3],
        "measured": measured,
    }
