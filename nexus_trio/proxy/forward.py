"""Send one chat request to its candidates in turn until one answers.

Before the first byte reaches the client, a failing backend is invisible: the
attempt raises ``BackendError``, the backend is demoted, and the next
candidate is tried (up to ``routing.max_attempts``). A streaming answer
commits at its first token: response headers go out only once a backend has
sent an event that carries part of the answer (the opening role-only chunk
does not count), so failover before it costs the client nothing but time. After
the commit, a failure is reported in-band as one SSE error event.

Every attempt runs inside its own cancel scopes (one per phase deadline), and
its bookkeeping (the backend's in-flight count, closing the upstream response)
happens in ``finally`` so that success, failure and a client that went away
all leave the counters as they found them.
"""

from __future__ import annotations

import json

import httpx
import trio

from nexus_trio.errors import (
    AllBackendsFailed,
    BackendError,
    BackendProtocolError,
    BackendStatus,
    BackendTimeout,
)
from nexus_trio.proxy.attempt import (
    Attempt,
    PassThrough,
    classify_status,
    nexus_headers,
)
from nexus_trio.proxy.streaming import attempt_stream
from nexus_trio.proxy.upstream import backend_headers, translate_httpx_error
from nexus_trio.routing.requirements import ChatRequest
from nexus_trio.routing.router import Candidate, RouteDecision

__all__ = ["forward_chat"]


async def attempt_json(attempt: Attempt, candidate: Candidate, body: bytes) -> None:
    """One try at ``candidate``; see `nexus_trio.proxy.attempt` for how it ends."""
    backend = candidate.backend
    timeouts, downstream, outcome = attempt.timeouts, attempt.downstream, attempt.outcome
    with trio.move_on_after(timeouts.request_seconds) as deadline:
        try:
            async with attempt.client.stream(
                "POST",
                backend.url + "/v1/chat/completions",
                content=body,
                headers={
                    **backend_headers(backend, attempt.request_id),
                    "content-type": "application/json",
                },
            ) as response:
                if response.status_code != 200:
                    raise await classify_status(response, candidate, attempt.registry)
                answer = await response.aread()
                content_type = response.headers.get("content-type", "application/json")
        except httpx.HTTPError as exc:
            raise translate_httpx_error(backend.name, exc) from exc
    if deadline.cancelled_caught:
        raise BackendTimeout(backend.name, f"no answer within {timeouts.request_seconds:g} s")
    try:
        parsed = json.loads(answer)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or "choices" not in parsed:
        raise BackendProtocolError(
            backend.name, "answered 200 with a body that is not a completion"
        )
    outcome.served(candidate, 200)
    await downstream.respond(
        200, nexus_headers(candidate, attempt.request_id, content_type), answer
    )


async def forward_chat(
    attempt: Attempt, chat: ChatRequest, decision: RouteDecision, *, max_attempts: int
) -> None:
    """Try the decision's candidates in order; the first that answers serves.

    Writes the answer (or the backend's own client error) to
    ``attempt.downstream``, and what happened to ``attempt.outcome`` as it
    happens (so a cancelled request still tells how far it got).

    Raises:
        AllBackendsFailed: every attempt failed before anything reached the client.
    """
    outcome = attempt.outcome
    try_one = attempt_stream if chat.needs.stream else attempt_json
    for candidate in decision.candidates[:max_attempts]:
        backend = candidate.backend
        outcome.attempts += 1
        backend.in_flight += 1
        try:
            await try_one(attempt, candidate, chat.body_for(candidate.model))
            return
        except PassThrough as answer:
            attempt.outcome.served(candidate, answer.status)
            await attempt.downstream.respond(
                answer.status,
                nexus_headers(candidate, attempt.request_id, answer.content_type),
                answer.body,
            )
            return
        except BackendError as failure:
            outcome.failures.append(failure)
            if not (isinstance(failure, BackendStatus) and failure.upstream_status == 404):
                attempt.registry.demote(backend, failure.reason)
        finally:
            backend.in_flight -= 1
    raise AllBackendsFailed(decision.model, outcome.failures)
