"""OpenAI embeddings (``POST /v1/embeddings``): validated, routed, sent as they came.

Every backend type serves this endpoint itself, so the request goes upstream as the
client's bytes (only ``model`` is rewritten, for an alias) and the backend's JSON
comes back untouched: ``encoding_format`` (``float``, or ``base64``, which the openai
SDK asks for by default), ``dimensions`` and ``user`` are the backend's business.
What is checked is what routing relies on, and the shapes a backend would refuse
less clearly: ``input`` is a string, a list of strings, a list of token ids, or a
list of lists of token ids, never empty.

The answer is read whole (``streamed_upstream=False``): a backend that fails before
answering (a 5xx, a refused connection) costs the client nothing, the next serves;
a 200 without ``data`` is a protocol error and fails over too. The writer is OpenAI
chat's JSON writer, which passes a backend's answer through with Nexus's headers and
renders Nexus's own errors in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any

from nexus_trio import jsonparse
from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.base import Dialect, Downstream, load_object
from nexus_trio.dialects.openai_chat import OpenAIJSONWriter
from nexus_trio.errors import RequestError
from nexus_trio.proxy.writer import Writer
from nexus_trio.routing.requirements import ChatRequest, Requirements

__all__ = ["EMBEDDINGS", "EMBEDDINGS_PATH", "embeddings_request", "parse_embeddings_request"]

EMBEDDINGS_PATH = "/v1/embeddings"
_FORMATS = ("float", "base64")


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_input(value: object, param: str = "input") -> None:
    """Raise `RequestError` unless ``value`` is an embeddings ``input`` OpenAI accepts."""
    shape = (
        f"'{param}' must be a non-empty string, an array of non-empty strings, an array of "
        "token ids, or an array of arrays of token ids"
    )
    if isinstance(value, str):
        if not value:
            raise RequestError(f"{shape}; got an empty string.", param=param)
        return
    if not isinstance(value, list) or not value:
        raise RequestError(f"{shape}; got {jsonparse.dumps(value)[:40]!r}.", param=param)
    for index, item in enumerate(value):
        where = f"{param}[{index}]"
        if isinstance(value[0], str):
            if not isinstance(item, str) or not item:
                raise RequestError(f"{shape}; {where} is not a non-empty string.", param=where)
        elif _is_token(value[0]):
            if not _is_token(item):
                raise RequestError(f"{shape}; {where} is not a token id.", param=where)
        elif not (isinstance(item, list) and item and all(_is_token(t) for t in item)):
            raise RequestError(
                f"{shape}; {where} is not a non-empty array of token ids.", param=where
            )


def embeddings_request(body: bytes, payload: dict[str, Any], model: str) -> ChatRequest:
    """The request that goes upstream to ``/v1/embeddings`` with ``body`` (``payload``
    parsed), for ``model``: routed to models that embed, answered whole."""
    return ChatRequest(
        body=body,
        payload=payload,
        needs=Requirements(model=model, embedding=True),
        streamed_upstream=False,
        client_wants_usage=False,
        path=EMBEDDINGS_PATH,
        answer_key="data",
    )


def check_model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError("'model' is required and must be a non-empty string.", param="model")
    return model


def check_dimensions(payload: dict[str, Any]) -> None:
    value = payload.get("dimensions")
    if value is not None and not (_is_token(value) and value > 0):
        raise RequestError(
            f"'dimensions' must be a positive integer, got {value!r:.40}.", param="dimensions"
        )


def parse_embeddings_request(body: bytes, routing: RoutingSettings) -> ChatRequest:
    """Validate a ``POST /v1/embeddings`` body; the request that goes upstream (the
    client's bytes).

    Raises:
        RequestError: the body is not a JSON object, or ``model``, ``input``,
            ``encoding_format``, ``dimensions`` or ``user`` is malformed (named).
    """
    payload = load_object(body, "'model' and 'input'")
    model = check_model(payload)
    if "input" not in payload:
        raise RequestError("'input' is required: the text (or texts) to embed.", param="input")
    check_input(payload["input"])
    encoding = payload.get("encoding_format")
    if encoding is not None and encoding not in _FORMATS:
        raise RequestError(
            f"'encoding_format' must be 'float' or 'base64', got {encoding!r:.40}.",
            param="encoding_format",
        )
    check_dimensions(payload)
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError("'user' must be a string.", param="user")
    return embeddings_request(body, payload, model)


def _writer(request: ChatRequest | None, downstream: Downstream, request_id: str) -> Writer:
    # The answer is the backend's own (pass_through); errors are OpenAI's.
    return OpenAIJSONWriter(downstream, request_id)


EMBEDDINGS = Dialect(api="embeddings", parse=parse_embeddings_request, writer=_writer)
