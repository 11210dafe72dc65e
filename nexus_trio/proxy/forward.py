"""Send one chat request to its candidates in turn until one answers.

Every request is read from its backend as a stream (the dialect asked for one,
with usage, whatever the client asked; `nexus_trio.proxy.writer` explains who
turns it into the client's response). So every request gets the same guarantees:

Before the first token, a failing backend is invisible: the attempt raises
``BackendError``, the registry hears of it, and the next candidate is tried (up
to ``routing.max_attempts``). The answer commits at its first token: only then
does the writer learn who serves it, so failover before it costs the client
nothing but time.

After the commit, an answer whose backend fails (connection lost, malformed
SSE, an in-band error, a stall) continues on the next candidate — same model
first — with the text produced so far as an assistant prefill, and the client
receives only the new text, under the same id (`nexus_trio.proxy.tracker`).
What cannot be continued (a tool call in flight, ``routing.mid_stream =
"error"``, no candidate left, ``max_mid_stream_failovers`` used up) starts over on
another backend if the client has received nothing yet (a whole answer is written
only at its end), and otherwise ends with the writer's error.

Hedging (``routing.hedge_after_ms``): when the backend trying to open a stream
has not produced its first token after that long, the next candidate starts
beside it; the first to produce one wins, and the other is cancelled at once.

Requests whose answer cannot be assembled from a stream (``n > 1``, ``logprobs``;
or every non-streaming one with ``routing.stream_upstream = false``) are sent as
they came and answered in one piece, under ``timeouts.request_seconds``.

Every attempt runs inside its own cancel scopes (one per phase deadline), and
its bookkeeping (the backend's slot, closing the upstream response) happens in
``finally`` so that success, failure and a client that went away all leave the
counters as they found them. What the registry learns from an attempt — how fast
its first token came, that it failed, that it answered to the end — it learns here,
in `_committed`, `_failed` and `_succeeded`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx
import trio

from nexus_trio import jsonparse
from nexus_trio.config import MidStream, RoutingSettings
from nexus_trio.errors import (
    AllBackendsFailed,
    AnswerIncomplete,
    AnswerTimeout,
    BackendError,
    BackendProtocolError,
    BackendTimeout,
)
from nexus_trio.proxy.candidates import CandidateQueue, replanner
from nexus_trio.proxy.continuation import continuation_body, may_echo, tokens_left
from nexus_trio.proxy.exchange import Exchange
from nexus_trio.proxy.streaming import OpenStream, open_stream, read_refusal, relay
from nexus_trio.proxy.tracker import StreamTracker, add_usage
from nexus_trio.proxy.writer import WholeAnswer
from nexus_trio.routing.affinity import served_keys
from nexus_trio.routing.requirements import Asked, ChatRequest
from nexus_trio.routing.router import Candidate, RouteDecision
from nexus_trio.upstream.client import translate_httpx_error
from nexus_trio.upstream.http1 import Http1Response

__all__ = ["forward_chat"]


async def forward_chat(
    exchange: Exchange, chat: ChatRequest, decision: RouteDecision, routing: RoutingSettings
) -> None:
    """Try the decision's candidates in order; the first that answers serves.

    Writes the answer (or the backend's own refusal) through ``exchange.writer``, and
    what happened to ``exchange.outcome`` as it happens (so a cancelled request still
    tells how far it got).

    Raises:
        AllBackendsFailed: every attempt failed before the answer began.
        AnswerTimeout: a whole answer was not complete within ``timeouts.request_seconds``.
    """
    registry = exchange.registry
    queue = CandidateQueue(
        decision.candidates, replanner(chat.needs, registry, routing), routing, registry,
        exchange.tried, local_only=chat.needs.local_only,
    )  # fmt: skip
    if not chat.streamed_upstream:
        await _whole_chat(exchange, chat, decision, queue)
    elif chat.needs.stream:
        await _stream_chat(exchange, chat, decision, routing, queue)
    else:
        # A whole answer keeps its bound on the whole request, however it is read.
        seconds = exchange.timeouts.request_seconds
        with trio.move_on_after(seconds) as whole:
            await _stream_chat(exchange, chat, decision, routing, queue)
        if whole.cancelled_caught:
            raise AnswerTimeout(seconds)


def _failed(exchange: Exchange, candidate: Candidate, failure: BackendError) -> None:
    """An attempt at ``candidate`` failed: the outcome and the registry hear of it."""
    exchange.outcome.failed(candidate, failure)
    exchange.registry.request_failed(candidate.backend, candidate.model, failure)


def _committed(exchange: Exchange, stream: OpenStream) -> None:
    """The answer commits to ``stream``'s backend: the outcome and the registry hear how
    fast its first token came."""
    exchange.outcome.served(stream.candidate, 200)
    exchange.outcome.ttft_seconds = stream.ttft_seconds
    exchange.registry.record_ttft(stream.candidate.backend, stream.ttft_seconds)


def _succeeded(exchange: Exchange, candidate: Candidate, answer: str | None) -> None:
    """``candidate``'s backend answered to the end (with ``answer``, its text): the
    registry hears of it, and of the conversation its cache now holds."""
    exchange.registry.request_succeeded(candidate.backend)
    if exchange.conversation is not None:
        keys = served_keys(exchange.conversation, answer)
        exchange.registry.conversation_served(candidate.backend, exchange.model, keys)


async def _pass_through(exchange: Exchange, answer: WholeAnswer) -> None:
    """Hand a backend's own whole answer (or refusal) to the client."""
    exchange.outcome.served(answer.candidate, answer.status)
    if answer.status == 200:
        _succeeded(exchange, answer.candidate, exchange.outcome.answer)
    await exchange.writer.pass_through(answer)


def _context_length(candidate: Candidate) -> int | None:
    """How many tokens the candidate's model holds, if its backend said."""
    info = candidate.backend.models.get(candidate.model)
    return info.context_length if info is not None else None


def _body_for(chat: ChatRequest, candidate: Candidate) -> bytes:
    return chat.body_for(candidate.model, _context_length(candidate))


# -- answered in one piece -------------------------------------------------------------


async def _whole_chat(
    exchange: Exchange, chat: ChatRequest, decision: RouteDecision, queue: CandidateQueue
) -> None:
    while (candidate := await queue.next()) is not None:
        exchange.outcome.started(candidate)
        with exchange.registry.occupy(candidate.backend):
            try:
                answer = await _ask_whole(
                    exchange, candidate, _body_for(chat, candidate), chat.path, chat.answer_key
                )
            except BackendError as failure:
                _failed(exchange, candidate, failure)
                continue
        await _pass_through(exchange, answer)
        return
    raise AllBackendsFailed(decision.model, exchange.outcome.failures)


async def _ask_whole(
    exchange: Exchange, candidate: Candidate, body: bytes, path: str, answer_key: str = "choices"
) -> WholeAnswer:
    """One non-streaming try at ``candidate``: its answer (a JSON object with
    ``answer_key``: a completion's ``choices``, embeddings' ``data``), or its refusal.

    Raises:
        BackendError: it failed (the next candidate may serve).
    """
    backend = candidate.backend
    seconds = exchange.timeouts.request_seconds
    with trio.move_on_after(seconds):
        response: Http1Response | None = None
        try:
            response = await exchange.client.open_chat(backend, exchange.request_id, body, path)
            if response.status_code != 200:
                refusal = await read_refusal(response, candidate)
                if isinstance(refusal, BackendError):
                    raise refusal
                return refusal
            answer = await response.aread()
            content_type = response.headers.get("content-type", "application/json")
        except httpx.HTTPError as exc:
            raise translate_httpx_error(backend.name, exc) from exc
        finally:
            if response is not None:
                with trio.move_on_after(1, shield=True):
                    await response.aclose()
        try:
            parsed = jsonparse.loads(answer)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or answer_key not in parsed:
            raise BackendProtocolError(
                backend.name, f"answered 200 with a body that has no {answer_key!r}"
            )
        add_usage(exchange.outcome.usage, parsed.get("usage"))
        exchange.outcome.answer = _answer_text(parsed)
        return WholeAnswer(candidate, 200, content_type, answer)
    raise BackendTimeout(backend.name, f"no answer within {seconds:g} s")


def _answer_text(completion: dict[str, Any]) -> str | None:
    """The first choice's message text, if the completion has one."""
    choices = completion.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    return None


# -- streamed ------------------------------------------------------------------------

AskFor = Callable[[Candidate], Asked]


def _ask_for(chat: ChatRequest, candidate: Candidate) -> Asked:
    """What ``candidate`` is sent for ``chat``: its plan's request, or the chat body."""
    if chat.plan is not None:
        return chat.plan.ask(candidate.model, candidate.backend.type, _context_length(candidate))
    return Asked(chat.path, _body_for(chat, candidate))


def _resume_for(chat: ChatRequest, candidate: Candidate, prefill: str, produced: int) -> Asked:
    """What ``candidate`` is sent to continue ``chat``'s answer after ``prefill``."""
    context = _context_length(candidate)
    kind = candidate.backend.type
    if chat.plan is not None:
        return chat.plan.resume(candidate.model, kind, context, prefill, produced)
    body = continuation_body(chat.payload_for(context), kind, candidate.model, prefill, produced)
    return Asked(chat.path, body)


async def _stream_chat(
    exchange: Exchange,
    chat: ChatRequest,
    decision: RouteDecision,
    routing: RoutingSettings,
    queue: CandidateQueue,
) -> None:
    while True:  # once, unless an answer that reached nobody yet must start over
        opened = await _open_first(
            exchange, queue, lambda c: _ask_for(chat, c), routing.hedge_after_ms, decision.model
        )
        if isinstance(opened, WholeAnswer):
            await _pass_through(exchange, opened)
            return
        if await _relay_answer(exchange, chat, decision, routing, opened):
            return


async def _relay_answer(
    exchange: Exchange,
    chat: ChatRequest,
    decision: RouteDecision,
    routing: RoutingSettings,
    stream: OpenStream,
) -> bool:
    """Relay the answer ``stream`` begins to the writer, continuing it on another backend
    when one fails. False when it failed, could not be continued and nothing reached the
    client: the caller starts over."""
    outcome, writer = exchange.outcome, exchange.writer
    text_shape = chat.plan is not None and chat.plan.text
    tracker = StreamTracker(forward_usage=chat.client_wants_usage, text_shape=text_shape)
    try:
        # The commit point: from here on the writer knows this backend.
        _committed(exchange, stream)
        await writer.begin(stream.candidate)
        clean = True  # the last backend ended its stream itself
        while (failure := await relay(stream, tracker, exchange)) is not None:
            _failed(exchange, stream.candidate, failure)
            await stream.aclose()
            clean = False
            if tracker.finished:  # it failed after the finish: nothing is missing
                await writer.send([tracker.close()])
                break
            if tokens_left(chat.payload, tracker.content_chunks) == 0:
                await writer.send([tracker.finish("length")])  # nothing more may come
                break
            continued = await _continue(exchange, chat, decision, routing, tracker,
                                        stream.candidate, failure)  # fmt: skip
            if isinstance(continued, AnswerIncomplete):
                if not writer.sent:
                    return False
                outcome.error = f"{failure.message}; not continued: {continued.why_not}"
                await writer.fail(continued)
                return True
            stream, clean = continued, True
        if clean:
            _succeeded(exchange, stream.candidate, tracker.text)
        await writer.end(tracker.usage)
        if clean:
            await stream.drain()
        return True
    finally:
        add_usage(outcome.usage, tracker.usage)
        outcome.answer = tracker.text
        await stream.aclose()


async def _open(exchange: Exchange, candidate: Candidate, asked: Asked) -> OpenStream | WholeAnswer:
    return await open_stream(exchange, candidate, asked.body, asked.path, asked.parser)


async def _open_first(
    exchange: Exchange,
    queue: CandidateQueue,
    ask_for: AskFor,
    hedge_after_ms: int | None,
    model: str,
) -> OpenStream | WholeAnswer:
    """The first candidate from ``queue`` to produce a first token (failing over, maybe
    hedging), or the first backend's own whole answer; each is sent what ``ask_for`` it
    says.

    Raises:
        AllBackendsFailed: none did.
    """
    if hedge_after_ms is None:
        while (candidate := await queue.next()) is not None:
            exchange.outcome.started(candidate)
            try:
                return await _open(exchange, candidate, ask_for(candidate))
            except BackendError as failure:
                _failed(exchange, candidate, failure)
        raise AllBackendsFailed(model, exchange.outcome.failures)
    return await _race(exchange, queue, ask_for, hedge_after_ms / 1000, model)


async def _race(
    exchange: Exchange,
    queue: CandidateQueue,
    ask_for: AskFor,
    hedge_after: float,
    model: str,
) -> OpenStream | WholeAnswer:
    """`_open_first` with hedging: each runner is a sibling task in one nursery, and
    cancelling the nursery cancels every loser at once."""
    outcome = exchange.outcome
    winner: OpenStream | WholeAnswer | None = None
    running = 0
    more = True  # the queue may still have candidates
    failed_send, failed = trio.open_memory_channel[None](math.inf)

    async with trio.open_nursery() as nursery:

        async def run(candidate: Candidate, hedge: bool) -> None:
            nonlocal winner
            try:
                opened = await _open(exchange, candidate, ask_for(candidate))
            except BackendError as failure:
                _failed(exchange, candidate, failure)
                failed_send.send_nowait(None)
                return
            if winner is not None:
                if isinstance(opened, OpenStream):
                    await opened.aclose()  # a photo finish: the other one was first
                return
            winner = opened
            outcome.hedges_won += hedge and isinstance(opened, OpenStream)
            nursery.cancel_scope.cancel()  # the losers stop now

        async def launch(hedge: bool) -> None:
            nonlocal running, more
            candidate = await queue.next()
            if candidate is None:
                more = False
                return
            outcome.started(candidate)
            outcome.hedges_started += hedge
            running += 1
            nursery.start_soon(run, candidate, hedge)

        await launch(hedge=False)
        while running:
            with trio.move_on_after(hedge_after if more else math.inf) as timer:
                await failed.receive()
                running -= 1
                if not running:
                    await launch(hedge=False)  # plain failover: nothing else is trying
            if timer.cancelled_caught:
                await launch(hedge=True)  # the ones trying are slow: start the next beside them
    if winner is not None:
        return winner
    raise AllBackendsFailed(model, outcome.failures)


def _may_continue(current: Candidate, mode: MidStream) -> Callable[[Candidate], bool]:
    """Who may continue a stream: the same model; another only if allowed."""
    if mode is MidStream.CONTINUE_ANY:
        return lambda c: True
    return lambda c: c.model == current.model


async def _continue(
    exchange: Exchange,
    chat: ChatRequest,
    decision: RouteDecision,
    routing: RoutingSettings,
    tracker: StreamTracker,
    current: Candidate,
    failure: BackendError,
) -> OpenStream | AnswerIncomplete:
    """Open the stream that continues a failed one, or say why it cannot be."""
    outcome = exchange.outcome
    why_not = tracker.continuable
    if routing.mid_stream is MidStream.ERROR:
        why_not = 'mid-stream continuation is off (routing.mid_stream = "error")'
    elif outcome.mid_stream_failovers >= routing.max_mid_stream_failovers:
        why_not = f"it had already switched backends {outcome.mid_stream_failovers} times"
    elif chat.payload.get("n", 1) not in (1, None):
        why_not = "continuation supports one choice (n = 1) only"
    if why_not:
        return AnswerIncomplete(failure, why_not)
    # Same model first: the planned order already puts fallback models last.
    keep = _may_continue(current, routing.mid_stream)
    queue = CandidateQueue(
        [c for c in decision.candidates if keep(c)],
        replanner(chat.needs, exchange.registry, routing, keep),
        routing,
        exchange.registry,
        exchange.tried,
        local_only=chat.needs.local_only,
    )
    prefill, produced = tracker.text, tracker.content_chunks
    try:
        opened = await _open_first(
            exchange, queue, lambda c: _resume_for(chat, c, prefill, produced),
            routing.hedge_after_ms, decision.model,
        )  # fmt: skip
    except AllBackendsFailed:
        why_not = (
            "every backend that could continue it failed too"
            if queue.tried_here
            else "no other backend could continue it"
        )
        return AnswerIncomplete(failure, why_not)
    if isinstance(opened, WholeAnswer):
        return AnswerIncomplete(
            failure, f"the next backend refused to continue it (HTTP {opened.status})"
        )
    outcome.mid_stream_failovers += 1
    # A completion's continuation is asked with a longer prompt, which servers do not echo.
    echoes = chat.plan is None and may_echo(opened.candidate.backend.type)
    tracker.begin_continuation(may_echo=echoes)
    note = f"nexus failover from {current.backend.name} to {opened.candidate.backend.name}"
    if opened.candidate.model != current.model:
        note += f" (model {current.model} -> {opened.candidate.model})"
    await exchange.writer.note(note)
    return opened
