"""A prototype relay: h11 on raw trio streams at both ends, doing Nexus's per-event work.

``python benchmarks/_h11_relay.py --port P --upstream URL`` serves ``POST
/v1/chat/completions`` by forwarding the body to the upstream over pooled keep-alive
connections and relaying the answer: a JSON answer whole, a stream event by event through
Nexus's own `SSEParser` and `StreamTracker` (the parsing and accounting Nexus does per
event). It has none of the rest of Nexus (routing, failover, limits, errors, metrics, any
other route) and is not part of Nexus: it exists to measure what the HTTP layers under
Nexus (hypercorn on the client side, httpx/httpcore on the upstream side) cost, against h11
alone on the same event loop (`bench_stack.py`). It trusts its input: benchmark traffic only.
"""

from __future__ import annotations

import argparse
from functools import partial
from urllib.parse import urlsplit

import h11
import trio

from nexus_trio import jsonparse
from nexus_trio.proxy.sse import SSEParser
from nexus_trio.proxy.tracker import StreamTracker

RECEIVE_BYTES = 65_536


class Upstream:
    """Keep-alive connections to one server, each with its h11 client state."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: list[tuple[trio.SocketStream, h11.Connection]] = []

    async def take(self) -> tuple[trio.SocketStream, h11.Connection]:
        if self.idle:
            return self.idle.pop()
        stream = await trio.open_tcp_stream(self.host, self.port)
        return stream, h11.Connection(h11.CLIENT)

    def give_back(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.idle.append((stream, conn))


async def next_event(stream: trio.SocketStream, conn: h11.Connection) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(RECEIVE_BYTES))


async def relay_one(
    client: trio.SocketStream, server: h11.Connection, upstream: Upstream, body: bytes
) -> None:
    up, conn = await upstream.take()
    try:
        await _exchange(client, server, up, conn, upstream.host, body)
    except BaseException:
        await trio.aclose_forcefully(up)  # mid-answer: the connection cannot be reused
        raise
    upstream.give_back(up, conn)


async def _exchange(
    client: trio.SocketStream,
    server: h11.Connection,
    up: trio.SocketStream,
    conn: h11.Connection,
    host: str,
    body: bytes,
) -> None:
    request = h11.Request(
        method="POST",
        target="/v1/chat/completions",
        headers=[("host", host), ("content-type", "application/json"),
                 ("content-length", str(len(body)))],
    )  # fmt: skip
    events = (request, h11.Data(data=body), h11.EndOfMessage())
    await up.send_all(b"".join(_bytes(conn, e) for e in events))
    response = await next_event(up, conn)
    assert isinstance(response, h11.Response)
    if jsonparse.loads(body).get("stream") is not True:
        parts = []
        while isinstance(event := await next_event(up, conn), h11.Data):
            parts.append(event.data)
        answer = b"".join(parts)
        headers = [("content-type", "application/json"), ("content-length", str(len(answer)))]
        head = h11.Response(status_code=response.status_code, headers=headers)
        whole = (head, h11.Data(data=answer), h11.EndOfMessage())
        await client.send_all(b"".join(_bytes(server, e) for e in whole))
        return
    head = h11.Response(status_code=200, headers=[("content-type", "text/event-stream")])
    await client.send_all(_bytes(server, head))
    parser, tracker = SSEParser(), StreamTracker()
    while isinstance(event := await next_event(up, conn), h11.Data):
        out = [tracker.admit(e, "upstream").relay for e in parser.feed(event.data)]
        await client.send_all(_bytes(server, h11.Data(data=b"".join(out))))
    await client.send_all(_bytes(server, h11.EndOfMessage()))


def _bytes(conn: h11.Connection, event: h11.Event) -> bytes:
    data = conn.send(event)
    assert data is not None  # None only for ConnectionClosed
    return data


async def serve_connection(upstream: Upstream, client: trio.SocketStream) -> None:
    server = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await next_event(client, server)
            if not isinstance(request, h11.Request):
                return  # the client closed the connection
            parts = []
            while isinstance(event := await next_event(client, server), h11.Data):
                parts.append(event.data)
            await relay_one(client, server, upstream, b"".join(parts))
            if server.our_state is not h11.DONE or server.their_state is not h11.DONE:
                return
            server.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    upstream = Upstream(args.upstream)
    trio.run(partial(trio.serve_tcp, partial(serve_connection, upstream), args.port,
                     host="127.0.0.1"))  # fmt: skip


if __name__ == "__main__":
    main()
