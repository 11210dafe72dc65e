"""Every failure Nexus reports, as one rooted tree.

Each error that reaches a client maps to exactly one OpenAI error shape
(``{"error": {"message", "type", "param", "code"}}``) and one HTTP status, and
its message says what to do next::

    NexusError
    ├── ConfigError                 never reaches HTTP: `nexus` exits with code 2
    ├── RequestError                400  the client must change the request
    │   ├── BodyTooLarge            413
    │   ├── MethodNotAllowed        405  with Allow
    │   ├── ModelNotFound           404  model_not_found
    │   ├── ResponseNotKept         404  (previous_)response_not_found: /v1/responses ids
    │   ├── ModelCannotServe        400  no backend of the model has the capability
    │   ├── ContextLengthExceeded   400  context_length_exceeded
    │   ├── BackendNotFound         404  admin: no backend of that name
    │   ├── BackendExists           409  admin: that name or server is registered already
    │   └── NotAServer              422  admin/discovery: nothing LLM-like answers there
    ├── AdminForbidden              403  admin API from elsewhere without the token
    ├── Unauthorized                401  invalid_api_key: no key, an unknown or a revoked one
    ├── ModelNotAllowed             403  model_not_allowed: the key may not use that model
    ├── Refused                     429  with Retry-After: this caller, not the fleet
    │   ├── RateLimited             429  rate_limit_exceeded: rpm, tpm or concurrency
    │   ├── BudgetExceeded          429  insufficient_quota: the key's budget is spent
    │   └── QueueFull               429  queue_full: too many requests wait already
    ├── RequestLoop                 508  loop_detected: a request this Nexus sent itself
    ├── NoHealthyBackend            503  with Retry-After
    │   ├── BackendsBusy            503  backends_busy: all at max_concurrency
    │   ├── QueueTimeout            503  queue_timeout: waited [queue] max_wait_seconds
    │   ├── NoLocalBackend          503  no_local_backend: must stay local, none can serve
    │   └── ShuttingDown            503  shutting_down: Nexus is draining
    └── BackendError                502  one upstream attempt failed
        ├── BackendUnreachable      502  connect refused, reset, DNS
        ├── BackendTimeout          504  connect, first byte or stall deadline
        ├── BackendStatus           502  5xx, 429, or a 404 for a model it no longer has
        ├── BackendProtocolError    502  a body or SSE stream we cannot read
        └── AllBackendsFailed       502  (504 when every attempt timed out, 429 when every
                                         backend rate-limited, with Retry-After)
    AnswerIncomplete                502  a backend failed mid-answer and none could continue it
                                         (the failure's code; mid-stream: an error event)
    AnswerTimeout                   504  request_timeout: no whole answer within request_seconds

httpx errors are translated where they enter (`nexus_trio.upstream.client`),
chained ``from`` the original.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "AdminForbidden",
    "AllBackendsFailed",
    "AnswerIncomplete",
    "AnswerTimeout",
    "BackendError",
    "BackendExists",
    "BackendNotFound",
    "BackendProtocolError",
    "BackendStatus",
    "BackendTimeout",
    "BackendUnreachable",
    "BackendsBusy",
    "BodyTooLarge",
    "BudgetExceeded",
    "ConfigError",
    "ContextLengthExceeded",
    "MethodNotAllowed",
    "ModelCannotServe",
    "ModelNotAllowed",
    "ModelNotFound",
    "NexusError",
    "NoHealthyBackend",
    "NoLocalBackend",
    "NotAServer",
    "QueueFull",
    "QueueTimeout",
    "RateLimited",
    "Refused",
    "RequestError",
    "RequestLoop",
    "ResponseNotKept",
    "ShuttingDown",
    "Unauthorized",
    "error_body",
]


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object: what the official SDKs parse into ``APIError``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class NexusError(Exception):
    """Base of every error Nexus raises on purpose."""

    # Class defaults; an instance may narrow them (AllBackendsFailed → 504).
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()

    def headers(self) -> list[tuple[str, str]]:
        """Extra response headers this error carries (``Retry-After``)."""
        return []


class ConfigError(NexusError):
    """The settings cannot be used; the message is the one line `nexus` prints."""


class RequestError(NexusError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(RequestError):
    status = 413
    code = "request_too_large"


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, path: str, allowed: str = "POST") -> None:
        super().__init__(f"{path} only accepts {allowed}.")
        self.allowed = allowed

    def headers(self) -> list[tuple[str, str]]:
        return [("allow", self.allowed)]


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"

    def __init__(self, model: str, nearest: Sequence[str] = ()) -> None:
        hint = (
            f" Did you mean {', '.join(repr(m) for m in nearest)}?"
            if nearest
            else " GET /v1/models lists the models Nexus can serve."
        )
        super().__init__(f"The model {model!r} is not served by any backend.{hint}", param="model")
        self.model = model


class ResponseNotKept(RequestError):
    """A response id this Nexus does not keep (never made here, ``store: false``, or
    evicted): 404, as OpenAI answers an unknown id."""

    status = 404

    def __init__(self, response_id: str, capacity: int, *, param: str | None) -> None:
        super().__init__(
            f"No response with id {response_id!r} is kept by this Nexus: it was not made "
            f"here, was made with store: false, or was evicted, because only the last "
            f"{capacity} responses are kept in memory (and none across a restart). Send the "
            "whole conversation in 'input' instead, or keep more with server.responses_kept "
            "(NEXUS_RESPONSES_KEPT).",
            param=param,
        )
        self.code = "previous_response_not_found" if param else "response_not_found"


class ModelCannotServe(RequestError):
    code = "model_not_capable"


class ContextLengthExceeded(RequestError):
    code = "context_length_exceeded"


class BackendNotFound(RequestError):
    status = 404
    code = "backend_not_found"


class BackendExists(RequestError):
    status = 409
    code = "backend_exists"


class NotAServer(RequestError):
    """Nothing that speaks an LLM API answers at a URL (or its first check failed)."""

    status = 422
    code = "backend_not_detected"


class AdminForbidden(NexusError):
    status = 403
    type = "permission_error"
    code = "admin_forbidden"


class Unauthorized(NexusError):
    """No API key, or one Nexus does not know (never made, or revoked)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotAllowed(NexusError):
    """The key may use some models, not this one."""

    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class Refused(NexusError):
    """This caller must wait (its limits, its budget, a full queue): HTTP 429 with
    ``Retry-After``, where the fleet itself may be fine."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = max(1, retry_after_seconds)

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", str(self.retry_after_seconds))]


class RateLimited(Refused):
    """Over the key's requests per minute, tokens per minute or concurrent requests."""


class BudgetExceeded(Refused):
    """The key has spent its budget for the period (OpenAI's code for it)."""

    type = "insufficient_quota"
    code = "insufficient_quota"


class QueueFull(Refused):
    """The queue of requests waiting for a backend holds ``[queue] max_size`` already."""

    code = "queue_full"


class RequestLoop(NexusError):
    """A request that carries this Nexus's own ``X-Nexus-Via``: a backend's URL leads back
    here, and forwarding it again would only loop (HTTP 508, Loop Detected)."""

    status = 508
    code = "loop_detected"


class NoHealthyBackend(NexusError):
    status = 503
    type = "service_unavailable"
    code = "no_healthy_backend"

    def __init__(self, message: str, *, retry_after_seconds: int = 5) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", str(self.retry_after_seconds))]


class BackendsBusy(NoHealthyBackend):
    """Every backend that could serve the request is at its max_concurrency."""

    code = "backends_busy"

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_seconds=1)


class QueueTimeout(NoHealthyBackend):
    """The request waited ``[queue] max_wait_seconds`` for a backend with room."""

    code = "queue_timeout"


class NoLocalBackend(NoHealthyBackend):
    """The request must stay on local backends (its key's privacy, or X-Nexus-Privacy),
    and none of them can serve it; it is never sent to a cloud one instead."""

    code = "no_local_backend"


class ShuttingDown(NoHealthyBackend):
    """Nexus is draining: not here, not now (a 503 to a client, like no healthy backend)."""

    code = "shutting_down"


class BackendError(NexusError):
    """One attempt at one backend failed; routing may move on to the next."""

    status = 502
    type = "upstream_error"
    code = "backend_error"

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r}: {reason}")
        self.backend = backend
        self.reason = reason


class BackendUnreachable(BackendError):
    code = "backend_unreachable"


class BackendTimeout(BackendError):
    status = 504
    type = "timeout_error"
    code = "backend_timeout"


class BackendStatus(BackendError):
    code = "backend_status"

    def __init__(self, backend: str, status: int, detail: str = "") -> None:
        super().__init__(backend, f"answered HTTP {status}{': ' + detail if detail else ''}")
        self.upstream_status = status


class BackendProtocolError(BackendError):
    code = "backend_protocol_error"


class AllBackendsFailed(NexusError):
    """Every candidate was tried and none answered; says what each did."""

    status = 502
    type = "upstream_error"
    code = "all_backends_failed"

    def __init__(self, model: str, failures: Sequence[BackendError]) -> None:
        what = "; ".join(f.message for f in failures) or "no attempt was made"
        super().__init__(
            f"Every backend for {model!r} failed ({what}). Retry later, or check the backends "
            "with GET /health."
        )
        self.failures = tuple(failures)
        if failures and all(isinstance(f, BackendTimeout) for f in failures):
            self.status = 504
            self.type = "timeout_error"
        elif failures and all(
            isinstance(f, BackendStatus) and f.upstream_status == 429 for f in failures
        ):
            # Every backend is rate limiting: that is what the client should hear.
            self.status = 429
            self.type = "rate_limit_error"
            self.code = "rate_limited"

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", "1")] if self.status == 429 else []


class AnswerIncomplete(NexusError):
    """A backend failed after the answer had begun, and no other backend could continue it.

    On a stream the client has the answer so far and hears this as an error event; a
    client waiting for a whole answer gets it as the response.
    """

    status = 502
    type = "upstream_error"

    def __init__(self, failure: BackendError, why_not: str) -> None:
        super().__init__(
            f"The backend failed mid-stream ({failure.message}) and the answer could not be "
            f"continued: {why_not}. The answer is incomplete; retry the request."
        )
        self.code = failure.code or "backend_error"
        self.why_not = why_not


class AnswerTimeout(NexusError):
    """A client waiting for a whole answer did not get it within ``request_seconds``,
    however many backends worked on it."""

    status = 504
    type = "timeout_error"
    code = "request_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"No complete answer within {seconds:g} s (routing.timeouts.request_seconds); "
            "ask for fewer tokens, stream the answer, or raise the limit."
        )
