"""The request pipeline every inference API shares, as a plain ASGI handler.

`serve_inference` takes one request of any dialect (`nexus_trio.dialects`) from
the first byte of its body to its record: the body limit, the request id, refusal
while draining, the disconnect watcher, parsing, routing, the proxy, and the
request record in ``finally``. What is API-specific — how the body parses, how
the answer and errors are written — is the dialect's.

These routes bypass Quart's response model on purpose. Quart sends the response
headers as soon as a handler returns, and a body generator that has not started
yet never runs its ``finally``; the proxy needs the opposite: hold the headers
until a backend has produced its first event (the commit point), and own every
deadline and counter inside one task so a client disconnect cancels all of it and
leaves nothing behind. Everything else is served by the Quart app
(`nexus_trio.api.app`).

The task layout per request: a nursery holding the proxy (in the handler's
own task) and a watcher that cancels the nursery when ASGI reports
``http.disconnect``; around it, a cancel scope registered with the gateway's
`Drain`, which a shutdown cuts at its grace deadline (the writer then ends the
response with one error of its own).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import Any

import trio

from nexus_trio.config import Priority, Privacy, Strategy
from nexus_trio.dialects import Dialect
from nexus_trio.errors import BodyTooLarge, NexusError, RequestLoop, ShuttingDown
from nexus_trio.gatekeeper import Admission
from nexus_trio.gateway import Gateway
from nexus_trio.instance import VIA_HEADER
from nexus_trio.observe import (
    CLIENT_DISCONNECTED,
    CLIENT_GONE,
    STREAM_INCOMPLETE,
    RequestRecord,
)
from nexus_trio.policy.keys import ANONYMOUS, Caller
from nexus_trio.proxy.exchange import Exchange, Outcome
from nexus_trio.proxy.forward import forward_chat
from nexus_trio.proxy.writer import KEEP_ALIVE_SECONDS, Writer
from nexus_trio.routing.affinity import conversation_key
from nexus_trio.routing.patience import plan_route_patiently
from nexus_trio.routing.requirements import ChatRequest

__all__ = [
    "CALLER_SCOPE_KEY",
    "ASGIDownstream",
    "header_value",
    "must_stay_local",
    "request_id_of",
    "sane_request_id",
    "serve_inference",
]

log = logging.getLogger("nexus.api")

ASGIReceive = Any  # hypercorn.typing.ASGIReceiveCallable, untyped here to keep mypy simple
ASGISend = Any
Scope = dict[str, Any]

_MAX_REQUEST_ID = 128
# Where the app puts the caller it authenticated (`nexus_trio.gatekeeper`) in the scope.
CALLER_SCOPE_KEY = "nexus.caller"
VIA_HEADER_BYTES = VIA_HEADER.encode()
# How long a request the drain cut gets to write its last event and end.
_CUT_WRITE_SECONDS = 2.0
# ASGI sends shielded whole (see `serve_inference`): HTTP/1, where hypercorn shields the write.
_SHIELDED_SEND_VERSIONS = frozenset({"1.0", "1.1"})


def header_value(value: str) -> bytes:
    """A header value safe to send: no CR/LF (names from the network could inject
    headers), non-Latin-1 characters escaped."""
    cleaned = value.replace("\r", " ").replace("\n", " ")
    return cleaned.encode("latin-1", "backslashreplace")


def sane_request_id(text: str | None) -> str:
    """``text`` (a client's ``X-Request-Id``) if it is a sane id, else a fresh one."""
    text = (text or "").strip()
    if 0 < len(text) <= _MAX_REQUEST_ID and text.isprintable():
        return text
    return uuid.uuid4().hex


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-Id`` when it sent a sane one, else a fresh one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return sane_request_id(value.decode("latin-1"))
    return uuid.uuid4().hex


class ASGIDownstream:
    """Writes one response through ASGI ``send``; remembers whether it has begun.
    ``extra_headers`` go on whatever response it starts (the caller's rate limits)."""

    __slots__ = ("_send", "ended", "extra_headers", "started", "status")

    started: bool  # the response head has been sent

    def __init__(self, send: ASGISend) -> None:
        self._send = send
        self.started = False
        self.ended = False
        self.status = 0
        self.extra_headers: list[tuple[str, str]] = []

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.started = True
        self.status = status
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (k.encode(), header_value(v)) for k, v in (*headers, *self.extra_headers)
                ],
            }
        )

    async def send(self, data: bytes) -> None:
        if data:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        if not self.ended:
            self.ended = True
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        await self.start(status, [*headers, ("content-length", str(len(body)))])
        self.ended = True
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(scope: Scope, receive: ASGIReceive, limit: int) -> bytes | None:
    """The whole request body, or None if the client left before sending it."""
    too_large = BodyTooLarge(
        f"The request body is larger than the {limit}-byte limit (server.max_body_bytes)."
    )
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise too_large
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise too_large
        if not message.get("more_body", False):
            return bytes(body)


class _DisconnectWatch:
    """Cancels the request's scope when ASGI reports the client gone."""

    __slots__ = ("gone",)

    def __init__(self) -> None:
        self.gone = False

    async def run(self, receive: ASGIReceive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        scope.cancel()


async def serve_inference(
    gateway: Gateway, dialect: Dialect, scope: Scope, receive: ASGIReceive, send: ASGISend
) -> None:
    """Serve one request of ``dialect``'s API end to end (ASGI).

    The work runs inside the gateway's `Drain`: once Nexus is draining, a new
    request gets a 503 (``Retry-After``, code ``shutting_down``); one the drain
    cuts at its grace deadline ends with one error (an error event once a stream
    has begun, else a 503), never mid-event and never silently.
    """
    request_id = request_id_of(scope)
    if scope.get("http_version") in _SHIELDED_SEND_VERSIONS:

        async def send_whole(message: dict[str, Any]) -> None:
            # hypercorn shields its HTTP/1 socket write but not its bookkeeping just
            # before it: a cancellation (the drain's cut, a client leaving) landing
            # there would drop response headers h11 counts as sent. Shielded, each
            # message goes out whole or not at all; the write itself could not be
            # interrupted anyway.
            with trio.CancelScope(shield=True):
                await send(message)

        downstream = ASGIDownstream(send_whole)
    else:
        # HTTP/2: hypercorn buffers each message whole before it may wait on the
        # client's flow-control window, and that wait must stay cancellable.
        downstream = ASGIDownstream(send)
    outcome = Outcome()
    settings = gateway.settings
    started = trio.current_time()
    writer: Writer | None = None
    requested: str | None = None
    stream: bool | None = None
    messages: object = None
    error: NexusError | None = None
    watch = _DisconnectWatch()
    caller: Caller = scope.get(CALLER_SCOPE_KEY, ANONYMOUS)
    admission: Admission | None = None
    work = gateway.drain.track()
    try:
        with work:
            async with trio.open_nursery() as nursery:
                try:
                    body = await _read_body(scope, receive, settings.server.max_body_bytes)
                    if body is None:
                        watch.gone = True
                        return
                    nursery.start_soon(watch.run, receive, nursery.cancel_scope)
                    if gateway.draining:
                        raise ShuttingDown(
                            "Nexus is shutting down and takes no new requests; retry in a few "
                            "seconds (another instance, or this one once it has restarted)."
                        )
                    if _header(scope, VIA_HEADER_BYTES) == gateway.instance_id.encode():
                        raise RequestLoop(
                            "This request came from this Nexus itself: one of its backends "
                            "leads back to it. Point that backend at the inference server."
                        )
                    chat = dialect.parse(body, settings.routing)
                    writer = dialect.writer(chat, downstream, request_id)
                    requested, stream = chat.needs.model, chat.needs.stream
                    # The prompt as logged: chat messages, a legacy completion's prompt,
                    # embeddings' input.
                    payload = chat.payload
                    messages = payload.get("messages", payload.get("prompt", payload.get("input")))
                    admission = await gateway.gatekeeper.admit(
                        caller, chat.needs.model, downstream.extra_headers
                    )
                    beats = trio.CancelScope()
                    if dialect.keeps_alive:
                        nursery.start_soon(_keep_alive, writer, beats)
                    caller = _with_priority_asked(scope, caller)
                    if must_stay_local(scope, caller):
                        chat = replace(chat, needs=replace(chat.needs, local_only=True))
                    try:
                        await _route_and_forward(
                            gateway, chat, request_id, writer, outcome, caller,
                            _session_header(scope),
                        )  # fmt: skip
                    finally:
                        beats.cancel()
                except NexusError as exc:
                    error = exc
                except Exception:
                    # A bug of ours: log it, and still answer in the API's own shape.
                    log.exception("request %s failed inside Nexus", request_id)
                    error = NexusError(
                        "Nexus failed to handle this request; this is a bug, please report it "
                        "with the request id."
                    )
                if error is not None:
                    writer = writer or dialect.writer(None, downstream, request_id)
                    await writer.fail(error)
                await downstream.end()
                nursery.cancel_scope.cancel()
    finally:
        try:
            if work.cut and not (downstream.ended or watch.gone):
                # The drain cut it (the grace ran out, or a second signal): end the
                # response properly, as a shutdown.
                writer = writer or dialect.writer(None, downstream, request_id)
                error = await _end_as_shutdown(writer, downstream)
        finally:
            outcome.settle()
            status = downstream.status or (CLIENT_GONE if watch.gone else 0)
            if admission is not None:
                admission.finish(requested, outcome.backend, outcome.usage, status)
            code: str | None
            detail: str | None
            if error is not None:
                code, detail = error.code or "internal_error", error.message
            elif outcome.error is not None:
                code, detail = STREAM_INCOMPLETE, outcome.error
            elif watch.gone and not downstream.ended:
                code, detail = CLIENT_DISCONNECTED, None
            else:
                code = detail = None
            content = None
            if settings.logging.content and messages is not None:
                content = {"messages": messages, "answer": outcome.answer}
            gateway.observer.request_done(
                RequestRecord.of(
                    request_id, dialect.api, requested, stream, outcome, status,
                    trio.current_time() - started, code, detail, content,
                )
            )  # fmt: skip


_SESSION_HEADERS = (b"x-session-id", b"x-claude-code-session-id")
PRIVACY_HEADER = b"x-nexus-privacy"
PRIORITY_HEADER = b"x-nexus-priority"


def _with_priority_asked(scope: Scope, caller: Caller) -> Caller:
    """``caller`` with the priority the request asks for (``X-Nexus-Priority``: high,
    normal or low), which may lower the key's, never raise it; unknown values are
    ignored."""
    asked = _header(scope, PRIORITY_HEADER)
    if asked is None:
        return caller
    try:
        priority = Priority(asked.decode("latin-1").strip().lower())
    except ValueError:
        return caller
    return replace(caller, lowered=priority)


def must_stay_local(scope: Scope, caller: Caller) -> bool:
    """Whether the request may reach local backends only: its key says so, or the client
    asks with ``X-Nexus-Privacy: local``. A header can narrow what a key may do, never
    widen it (``any`` on a local-only key changes nothing)."""
    if caller.privacy is Privacy.LOCAL:
        return True
    asked = _header(scope, PRIVACY_HEADER)
    return asked is not None and asked.strip().lower() == b"local"


def _session_header(scope: Scope) -> str | None:
    """The session the client named in a header (``X-Session-Id``, Claude Code's
    ``X-Claude-Code-Session-Id``), if any."""
    for name in _SESSION_HEADERS:
        value = _header(scope, name)
        if value:
            return value.decode("latin-1")
    return None


async def _route_and_forward(
    gateway: Gateway,
    chat: ChatRequest,
    request_id: str,
    writer: Writer,
    outcome: Outcome,
    caller: Caller = ANONYMOUS,
    session: str | None = None,
) -> None:
    """Route ``chat`` for ``caller`` (waiting for a backend if none can take it yet, or
    in the gateway's queue if all are busy) and forward it."""
    routing = gateway.settings.routing
    conversation = None
    if routing.affinity.enabled and routing.strategy is Strategy.SMART and not chat.needs.embedding:
        conversation = conversation_key(chat.payload, session, chat.session)
    decision = await plan_route_patiently(
        chat.needs, gateway.registry, routing,
        conversation=conversation, caller=caller, queue=gateway.queue,
    )  # fmt: skip
    outcome.affinity = decision.affinity
    exchange = Exchange(
        gateway.client, gateway.registry, routing.timeouts, request_id, writer, outcome,
        conversation=conversation, model=chat.needs.model,
    )  # fmt: skip
    await forward_chat(exchange, chat, decision, routing)


async def _keep_alive(writer: Writer, scope: trio.CancelScope) -> None:
    """Ask ``writer`` for a sign of life every `KEEP_ALIVE_SECONDS` until ``scope`` is
    cancelled (the answer is written, or the request ended)."""
    with scope:
        while True:
            await trio.sleep(KEEP_ALIVE_SECONDS)
            try:
                await writer.keep_alive()
            except Exception:  # the client is gone: the disconnect watcher ends the request
                log.debug("a keep-alive could not be written", exc_info=True)
                return


async def _end_as_shutdown(writer: Writer, downstream: ASGIDownstream) -> NexusError:
    """One last error for a request the drain cut: after the last whole event if the
    response has begun, else a 503. Shielded (a second signal cancels everything around
    the handler) and bounded."""
    if downstream.started:
        error = ShuttingDown(
            "Nexus is shutting down and could not finish this answer in time; it is "
            "incomplete. Retry the request."
        )
    else:
        error = ShuttingDown(
            "Nexus is shutting down and could not answer this request in time; retry in a "
            "few seconds (another instance, or this one once it has restarted)."
        )
    with trio.move_on_after(_CUT_WRITE_SECONDS, shield=True):
        await writer.fail(error)
        await downstream.end()
    return error
