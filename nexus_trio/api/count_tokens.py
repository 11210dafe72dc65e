"""``POST /v1/messages/count_tokens``: Anthropic's token count of a Messages request.

The request is parsed as a Messages request (without ``max_tokens``) and routed as one
would be — the same model names, aliases and capabilities — to find the backend that
would serve it; that backend's own tokenizer counts the prompt where it has one
(llama.cpp, vLLM: `nexus_trio.backends.tokenize`), otherwise Nexus estimates it. The
answer is ``{"input_tokens": N}``; the ``X-Nexus-Token-Count`` header says which
(``backend`` or ``estimate``). Errors are in Anthropic's shape, as on ``/v1/messages``.
Claude Code calls this often (with ``?beta=true``, which is ignored).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from quart import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from nexus_trio import jsonparse
from nexus_trio.api.frame import CALLER_SCOPE_KEY, must_stay_local, sane_request_id
from nexus_trio.backends.tokenize import count_prompt_tokens, estimate_input_tokens
from nexus_trio.dialects.anthropic import parse_count_tokens_request
from nexus_trio.dialects.anthropic_writer import error_response
from nexus_trio.errors import BodyTooLarge, ModelNotAllowed, NexusError, NoHealthyBackend
from nexus_trio.gateway import Gateway
from nexus_trio.policy.keys import ANONYMOUS, Caller
from nexus_trio.routing.patience import plan_route_patiently

__all__ = ["make_count_tokens_blueprint"]


def _anthropic_error(error: NexusError, request_id: str) -> Response:
    status, headers, body = error_response(error.status, error.message, request_id, error.headers())
    response = Response(body, status=status)
    for name, value in headers:
        response.headers[name] = value
    return response


def make_count_tokens_blueprint(gateway: Gateway) -> Blueprint:
    """The blueprint serving ``POST /v1/messages/count_tokens``."""
    blueprint = Blueprint("count_tokens", __name__)
    settings = gateway.settings

    @blueprint.post("/v1/messages/count_tokens")
    async def count_tokens() -> Response:
        request_id = sane_request_id(request.headers.get("x-request-id"))
        try:
            try:
                body = await request.get_data(as_text=False)
            except RequestEntityTooLarge:
                raise BodyTooLarge(
                    "The request body is larger than the limit (server.max_body_bytes)."
                ) from None
            chat = parse_count_tokens_request(body if isinstance(body, bytes) else body.encode())
            # The prompt goes to a backend's tokenizer: the key's models and privacy hold.
            scope: dict[str, Any] = dict(request.scope)
            caller: Caller = scope.get(CALLER_SCOPE_KEY, ANONYMOUS)
            if caller.key is not None and not caller.key.may_use(chat.needs.model):
                raise ModelNotAllowed(
                    f"The key {caller.name!r} may not use the model {chat.needs.model!r}.",
                    param="model",
                )
            if must_stay_local(scope, caller):
                chat = replace(chat, needs=replace(chat.needs, local_only=True))
            counted: int | None = None
            served_by = None
            try:
                decision = await plan_route_patiently(
                    chat.needs, gateway.registry, settings.routing, wait_seconds=0
                )
            except NoHealthyBackend:
                decision = None  # a known model, nobody to ask now: estimate
            if decision is not None and decision.candidates:
                candidate = decision.candidates[0]
                counted = await count_prompt_tokens(
                    gateway.client, candidate.backend, candidate.model, chat.payload
                )
                served_by = candidate.backend.name
        except NexusError as error:
            return _anthropic_error(error, request_id)
        source = "backend" if counted is not None else "estimate"
        if counted is None:
            counted = estimate_input_tokens(chat.payload)
        response = Response(
            jsonparse.dumps({"input_tokens": counted}), content_type="application/json"
        )
        response.headers["x-nexus-token-count"] = source
        response.headers["request-id"] = response.headers["x-request-id"] = request_id
        if source == "backend" and served_by is not None:
            response.headers["x-nexus-backend"] = served_by
        return response

    return blueprint
