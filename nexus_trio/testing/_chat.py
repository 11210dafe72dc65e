"""``POST /v1/chat/completions``: the answer on the wire, with the faults asked for."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ._completions import (
    FINGERPRINTS,
    Answer,
    ChatError,
    StreamEncoder,
    completion_body,
    error_payload,
    plan_chat,
)
from ._embeddings import refuse_chat
from ._http import PeerGone, Request, Responder
from ._types import Faults

if TYPE_CHECKING:
    from ._backend import SimulatedBackend

__all__ = ["handle_chat"]

_INVALID = object()


async def handle_chat(
    backend: SimulatedBackend,
    request: Request,
    responder: Responder,
    respond: Callable[[SimulatedBackend, Request, Responder], Awaitable[None]] | None = None,
) -> None:
    """Answer one chat request (with ``respond``: another kind of generation, counted
    alike), keeping the counters right however it ends."""
    stats = backend.stats
    stats.chat_requests += 1
    stats.chat_in_flight += 1
    gone = False
    try:
        await responder.run_watching_peer(partial(respond or _respond, backend, request, responder))
    except PeerGone:
        gone = True
    except BaseException as exc:
        gone = _cancelled(exc)  # the server is stopping, or refusing connections
        raise
    finally:
        stats.chat_in_flight -= 1
        if gone:
            stats.disconnects += 1
            stats.disconnected.set()


def _cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation, perhaps grouped by the nurseries it crossed."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split((trio.Cancelled, PeerGone))
        return rest is None
    return isinstance(exc, trio.Cancelled)


def _load(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:  # also UnicodeDecodeError
        return _INVALID


async def received(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> tuple[Faults, Any] | None:
    """An inference request taken in: its body recorded (parsed, or `_INVALID`) and the
    faults that act before the headers applied. The faults for its answer and its body, or
    None when a fault has answered it already."""
    faults = dataclasses.replace(backend.faults)  # later knob flips are for later requests
    body = _load(request.body)
    if isinstance(body, dict):
        backend.stats.last_chat_body = body
        if isinstance(body.get("model"), str):
            backend.stats.chat_by_model[body["model"]] += 1
    if faults.delay_before_headers_seconds > 0:
        await trio.sleep(faults.delay_before_headers_seconds)
    if faults.reset_before_headers:
        await responder.abort()
        return None
    if faults.status is not None:
        await _send_fault_status(backend, responder, faults.status)
        return None
    return faults, body


async def _respond(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    taken = await received(backend, request, responder)
    if taken is None:
        return
    faults, body = taken
    if body is _INVALID:
        message = "We could not parse the JSON body of your request: it is not valid JSON."
        await responder.send_json(400, error_payload(backend.flavor, 400, message))
        return
    name = body.get("model") if isinstance(body, dict) else None
    model = backend.models_by_id.get(name) if isinstance(name, str) else None
    if model is not None and model.embedding:
        await responder.send_json(*refuse_chat(backend.flavor, str(body["model"])))
        return
    try:
        answer = plan_chat(
            body,
            flavor=backend.flavor,
            models=backend.models_by_id,
            echo_prefill=bool(backend.echo_prefill),
            fixed_arguments=backend.tool_arguments,
            system_keeps_user_turn=backend.system_keeps_user_turn,
        )
    except ChatError as exc:
        await responder.send_json(exc.status, exc.payload)
        return
    await backend.load(answer.served)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    fingerprint = FINGERPRINTS[backend.flavor]
    if answer.stream:
        encoder = StreamEncoder(
            answer, completion_id=completion_id, created=created, fingerprint=fingerprint
        )
        await _stream(backend, responder, faults, answer, encoder)
    else:
        payload = completion_body(
            answer, completion_id=completion_id, created=created, fingerprint=fingerprint
        )
        await _send_whole(backend, responder, faults, payload)


async def _send_fault_status(backend: SimulatedBackend, responder: Responder, status: int) -> None:
    message = f"Simulated failure: {backend.name} answers HTTP {status} (fault injected)."
    headers = [("retry-after", "1")] if status in (429, 503) else []
    code = "rate_limit_exceeded" if status == 429 else None
    await responder.send_json(
        status, error_payload(backend.flavor, status, message, code=code), headers=headers
    )


async def _send_whole(
    backend: SimulatedBackend, responder: Responder, faults: Faults, payload: dict[str, Any]
) -> None:
    if faults.die_after_chunks is not None:
        await responder.abort()
        return
    if faults.stall_after_chunks is not None:
        await trio.sleep_forever()
    body = json.dumps(payload, separators=(",", ":")).encode()
    if faults.malformed:
        await responder.send(200, body[: len(body) // 2], content_type="application/json")
        return
    await responder.send(200, body, content_type="application/json")
    backend.stats.completed += 1


async def _stream(
    backend: SimulatedBackend,
    responder: Responder,
    faults: Faults,
    answer: Answer,
    encoder: StreamEncoder,
) -> None:
    await responder.start_stream(first=encoder.first())
    if faults.malformed:
        responder.close_after = True
        await responder.end_stream(encoder.broken())
        return
    pause = 1 / backend.tokens_per_second if backend.tokens_per_second > 0 else 0.0
    pieces = answer.pieces
    for sent in range(len(pieces) + 1):
        if sent == faults.die_after_chunks:
            await responder.abort()
            return
        if sent == faults.stall_after_chunks:
            await trio.sleep_forever()
        if sent == faults.error_event_after_chunks:
            message = f"Simulated in-band error after {sent} chunks (fault injected)."
            await responder.end_stream(encoder.error(message))
            return
        if sent == len(pieces):
            break
        if pause:
            await trio.sleep(pause)
        await responder.send_chunk(encoder.piece(pieces[sent]))
    await responder.end_stream(encoder.last())
    backend.stats.completed += 1
