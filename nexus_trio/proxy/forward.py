"""Send one chat request to its candidates in turn until one answers.

Before the first byte reaches the client, a failing backend is invisible: the
attempt raises ``BackendError``, the backend is demoted, and the next
candidate is tried (up to ``routing.max_attempts``). A streaming answer
commits at its first token: response headers go out only once a backend has
sent an event that carries part of the answer (the opening role-only chunk
does not count), so failover before it costs the client nothing but time.

After the commit, a stream whose backend fails (connection lost, malformed
SSE, an in-band error, a stall) continues on the next candidate — same model
first — with the text relayed so far as an assistant prefill, and the client
receives only the new text, under the same id (`nexus_trio.proxy.tracker`).
What cannot be continued (a tool call in flight, ``routing.mid_stream =
"error"``, no candidate left, ``max_mid_stream_failovers`` used up) ends with
one SSE error event.

Hedging (``routing.hedge_after_ms``): when the backend trying to open a stream
has not produced its first token after that long, the next candidate starts
beside it; the first to produce one wins, and the other is cancelled at once.

Every attempt runs inside its own cancel scopes (one per phase deadline), and
its bookkeeping (the backend's in-flight count, closing the upstream response)
happens in ``finally`` so that success, failure and a client that went away
all leave the counters as they found them.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import httpx
import trio

from nexus_trio import jsonparse
from nexus_trio.config import MidStream, RoutingSettings
from nexus_trio.errors import (
    AllBackendsFailed,
    BackendError,
    BackendProtocolError,
    BackendStatus,
    BackendTimeout,
    NexusError,
)
from nexus_trio.proxy.attempt import (
    Attempt,
    PassThrough,
    classify_status,
    nexus_headers,
)
from nexus_trio.proxy.continuation import continuation_body, may_echo
from nexus_trio.proxy.streaming import OpenStream, open_stream, relay, sse_error_event
from nexus_trio.proxy.tracker import StreamTracker, add_usage, sse_comment
from nexus_trio.routing.patience import wait_for_rotation
from nexus_trio.routing.requirements import ChatRequest
from nexus_trio.routing.router import Candidate, RouteDecision, plan_route
from nexus_trio.upstream.client import translate_httpx_error
from nexus_trio.upstream.http1 import Http1Response

__all__ = ["forward_chat"]


async def attempt_json(attempt: Attempt, candidate: Candidate, body: bytes) -> None:
    """One try at ``candidate``; see `nexus_trio.proxy.attempt` for how it ends."""
    backend = candidate.backend
    timeouts, downstream, outcome = attempt.timeouts, attempt.downstream, attempt.outcome
    with trio.move_on_after(timeouts.request_seconds) as deadline:
        response: Http1Response | None = None
        try:
            response = await attempt.client.open_chat(backend, attempt.request_id, body)
            if response.status_code != 200:
                raise await classify_status(response, candidate, attempt.registry)
            answer = await response.aread()
            content_type = response.headers.get("content-type", "application/json")
        except httpx.HTTPError as exc:
            raise translate_httpx_error(backend.name, exc) from exc
        finally:
            if response is not None:
                with trio.move_on_after(1, shield=True):
                    await response.aclose()
    if deadline.cancelled_caught:
        raise BackendTimeout(backend.name, f"no answer within {timeouts.request_seconds:g} s")
    try:
        parsed = jsonparse.loads(answer)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or "choices" not in parsed:
        raise BackendProtocolError(
            backend.name, "answered 200 with a body that is not a completion"
        )
    outcome.served(candidate, 200)
    attempt.registry.record_success(backend)
    add_usage(outcome.usage, parsed.get("usage"))
    outcome.answer = _answer_text(parsed)
    await downstream.respond(
        200, nexus_headers(candidate, attempt.request_id, content_type), answer
    )


def _answer_text(completion: dict[str, Any]) -> str | None:
    """The first choice's message text, if the completion has one."""
    choices = completion.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    return None


async def forward_chat(
    attempt: Attempt, chat: ChatRequest, decision: RouteDecision, routing: RoutingSettings
) -> None:
    """Try the decision's candidates in order; the first that answers serves.

    Writes the answer (or the backend's own client error) to
    ``attempt.downstream``, and what happened to ``attempt.outcome`` as it
    happens (so a cancelled request still tells how far it got).

    Raises:
        AllBackendsFailed: every attempt failed before anything reached the client.
    """
    queue = CandidateQueue(
        decision.candidates,
        _replanner(attempt, chat, routing, lambda c: True),
        routing,
    )
    try:
        if chat.needs.stream:
            await _stream_chat(attempt, chat, decision, routing, queue)
        else:
            await _json_chat(attempt, chat, decision, queue)
    except PassThrough as answer:
        attempt.outcome.served(answer.candidate, answer.status)
        await attempt.downstream.respond(
            answer.status,
            nexus_headers(answer.candidate, attempt.request_id, answer.content_type),
            answer.body,
        )


# Plans the route again: the candidates that pass the filter, waiting up to the given
# seconds for one to come into rotation.
Replan = Callable[[Callable[[Candidate], bool], float], Awaitable[Sequence[Candidate]]]


class CandidateQueue:
    """The candidates of one request, in order, within its attempt budget.

    Each backend is tried at most once per stay in rotation: one that failed
    (and was taken out) is tried again only after a health probe has brought it
    back, and only once the planned candidates have run out. Then the route is
    planned again from the registry as it is now — waiting a moment
    (``routing.wait_for_backend_seconds``) if nothing is in rotation — untried
    backends first. Two limits end it: ``routing.max_attempts`` attempts, and
    no new attempt after ``routing.failover_timeout_seconds`` (0: no limit).
    """

    def __init__(
        self, planned: Sequence[Candidate], replan: Replan, routing: RoutingSettings
    ) -> None:
        self._queue: Iterator[Candidate] = iter(planned)  # read as needed (see `Candidates`)
        self._replan = replan
        self.budget = routing.max_attempts
        self._wait_seconds = routing.wait_for_backend_seconds
        timeout = routing.failover_timeout_seconds
        self._deadline = trio.current_time() + timeout if timeout > 0 else math.inf
        # Backend name -> its `Backend.returns` when this request last tried it.
        self.tried: dict[str, int] = {}

    def _may_try(self, candidate: Candidate) -> bool:
        backend = candidate.backend
        seen = self.tried.get(backend.name)
        return backend.routable and (seen is None or backend.returns > seen)

    async def next(self) -> Candidate | None:
        """The next candidate to try, or None when none is left or the budget is spent."""
        while self.budget > 0 and trio.current_time() < self._deadline:
            for candidate in self._queue:
                if self._may_try(candidate):
                    self.tried[candidate.backend.name] = candidate.backend.returns
                    self.budget -= 1
                    return candidate
            wait = min(self._wait_seconds, self._deadline - trio.current_time())
            fresh = await self._replan(self._may_try, wait)
            if not fresh:
                return None
            # Backends this request has not tried yet go first (the sort is stable).
            self._queue = iter(sorted(fresh, key=lambda c: c.backend.name in self.tried))
        return None


def _replanner(
    attempt: Attempt, chat: ChatRequest, routing: RoutingSettings, keep: Callable[[Candidate], bool]
) -> Replan:
    registry = attempt.registry

    def candidates(may_try: Callable[[Candidate], bool]) -> list[Candidate]:
        try:
            decision = plan_route(
                chat.needs, registry.backends, routing,
                turn=registry.next_turn(), rosters=registry.roster,
            )  # fmt: skip
        except NexusError:
            return []
        return [c for c in decision.candidates if keep(c) and may_try(c)]

    async def replan(may_try: Callable[[Candidate], bool], wait: float) -> Sequence[Candidate]:
        def look() -> list[Candidate] | None:
            return candidates(may_try) or None

        return await wait_for_rotation(registry, look, wait) or []

    return replan


def _failed(attempt: Attempt, candidate: Candidate, failure: BackendError) -> None:
    """Note a failed attempt; take its backend out of rotation unless it only lost the model."""
    attempt.outcome.failed(candidate, failure)
    if not (isinstance(failure, BackendStatus) and failure.upstream_status == 404):
        attempt.registry.eject(candidate.backend, failure.reason)


async def _json_chat(
    attempt: Attempt, chat: ChatRequest, decision: RouteDecision, queue: CandidateQueue
) -> None:
    while (candidate := await queue.next()) is not None:
        backend = candidate.backend
        attempt.outcome.started(candidate)
        backend.in_flight += 1
        try:
            await attempt_json(attempt, candidate, chat.body_for(candidate.model))
            return
        except BackendError as failure:
            _failed(attempt, candidate, failure)
        finally:
            backend.in_flight -= 1
    raise AllBackendsFailed(decision.model, attempt.outcome.failures)


BodyFor = Callable[[Candidate], bytes]


async def _open_first(
    attempt: Attempt,
    queue: CandidateQueue,
    body_for: BodyFor,
    hedge_after_ms: int | None,
    model: str,
) -> OpenStream:
    """The first candidate from ``queue`` to produce a first token (failing over, maybe
    hedging).

    Raises:
        AllBackendsFailed: none did.
        PassThrough: one refused the request itself.
    """
    if hedge_after_ms is None:
        while (candidate := await queue.next()) is not None:
            attempt.outcome.started(candidate)
            try:
                return await open_stream(attempt, candidate, body_for(candidate))
            except BackendError as failure:
                _failed(attempt, candidate, failure)
        raise AllBackendsFailed(model, attempt.outcome.failures)
    return await _race(attempt, queue, body_for, hedge_after_ms / 1000, model)


async def _race(
    attempt: Attempt,
    queue: CandidateQueue,
    body_for: BodyFor,
    hedge_after: float,
    model: str,
) -> OpenStream:
    """`_open_first` with hedging: each runner is a sibling task in one nursery, and
    cancelling the nursery cancels every loser at once."""
    outcome = attempt.outcome
    winner: OpenStream | None = None
    refused: PassThrough | None = None
    running = 0
    more = True  # the queue may still have candidates
    failed_send, failed = trio.open_memory_channel[None](math.inf)

    async with trio.open_nursery() as nursery:

        async def run(candidate: Candidate, hedge: bool) -> None:
            nonlocal winner, refused
            try:
                stream = await open_stream(attempt, candidate, body_for(candidate))
            except BackendError as failure:
                _failed(attempt, candidate, failure)
                failed_send.send_nowait(None)
                return
            except PassThrough as answer:
                refused = refused or answer
                nursery.cancel_scope.cancel()
                return
            if winner is not None:
                await stream.aclose()  # a photo finish: the other one was first
                return
            winner = stream
            outcome.hedges_won += hedge
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
    if refused is not None:
        raise refused
    raise AllBackendsFailed(model, outcome.failures)


def _may_continue(current: Candidate, mode: MidStream) -> Callable[[Candidate], bool]:
    """Who may continue a stream: the same model; another only if allowed."""
    if mode is MidStream.CONTINUE_ANY:
        return lambda c: True
    return lambda c: c.model == current.model


async def _stream_chat(
    attempt: Attempt,
    chat: ChatRequest,
    decision: RouteDecision,
    routing: RoutingSettings,
    queue: CandidateQueue,
) -> None:
    outcome, downstream = attempt.outcome, attempt.downstream
    stream = await _open_first(
        attempt, queue, lambda c: chat.body_for(c.model), routing.hedge_after_ms, decision.model
    )
    tracker = StreamTracker(forward_usage=chat.client_wants_usage)
    try:
        # The commit point: from here on the client has seen this backend.
        candidate = stream.candidate
        outcome.served(candidate, 200)
        attempt.registry.record_success(candidate.backend)
        outcome.ttft_seconds = stream.ttft_seconds
        attempt.registry.record_ttft(candidate.backend, stream.ttft_seconds)
        await downstream.start(
            200,
            [*nexus_headers(candidate, attempt.request_id, "text/event-stream"),
             ("cache-control", "no-cache")],
        )  # fmt: skip
        while (failure := await relay(stream, tracker, attempt)) is not None:
            _failed(attempt, stream.candidate, failure)
            await stream.aclose()
            next_stream = await _continue(attempt, chat, decision, routing, tracker,
                                          stream.candidate, failure)  # fmt: skip
            if next_stream is None:
                return
            stream = next_stream
        await downstream.end()
        await stream.drain()
    finally:
        outcome.usage, outcome.answer = tracker.usage, tracker.text
        await stream.aclose()


async def _continue(
    attempt: Attempt,
    chat: ChatRequest,
    decision: RouteDecision,
    routing: RoutingSettings,
    tracker: StreamTracker,
    current: Candidate,
    failure: BackendError,
) -> OpenStream | None:
    """Open the stream that continues a failed one, or end it with an error event."""
    outcome = attempt.outcome
    why_not = tracker.continuable
    if routing.mid_stream is MidStream.ERROR:
        why_not = 'mid-stream continuation is off (routing.mid_stream = "error")'
    elif outcome.mid_stream_failovers >= routing.max_mid_stream_failovers:
        why_not = f"it had already switched backends {outcome.mid_stream_failovers} times"
    elif chat.payload.get("n", 1) not in (1, None):
        why_not = "continuation supports one choice (n = 1) only"
    stream = None
    if not why_not:
        # Same model first: the planned order already puts fallback models last.
        keep = _may_continue(current, routing.mid_stream)
        queue = CandidateQueue(
            [c for c in decision.candidates if keep(c)],
            _replanner(attempt, chat, routing, keep),
            routing,
        )
        payload, prefill, produced = chat.payload, tracker.text, tracker.content_chunks
        try:
            stream = await _open_first(
                attempt, queue,
                lambda c: continuation_body(payload, c.backend.type, c.model, prefill, produced),
                routing.hedge_after_ms, decision.model,
            )  # fmt: skip
        except AllBackendsFailed:
            why_not = (
                "every backend that could continue it failed too"
                if queue.tried
                else "no other backend could continue it"
            )
        except PassThrough as answer:
            why_not = f"the next backend refused to continue it (HTTP {answer.status})"
    if stream is None:
        outcome.error = f"{failure.message}; not continued: {why_not}"
        await attempt.downstream.send(sse_error_event(
            f"The backend failed mid-stream ({failure.message}) and the answer could not be "
            f"continued: {why_not}. The answer is incomplete; retry the request.",
            failure.code or "backend_error",
        ))  # fmt: skip
        await attempt.downstream.end()
        return None
    outcome.mid_stream_failovers += 1
    tracker.begin_continuation(may_echo=may_echo(stream.candidate.backend.type))
    note = f"nexus failover from {current.backend.name} to {stream.candidate.backend.name}"
    if stream.candidate.model != current.model:
        note += f" (model {current.model} -> {stream.candidate.model})"
    await attempt.downstream.send(sse_comment(note))
    return stream
