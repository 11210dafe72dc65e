"""The canonical request every dialect parses into, and what it needs from a backend.

A `ChatRequest` is an OpenAI chat completion request as it goes upstream (its
bytes, its JSON) with the `Requirements` routing reads. The dialects at the front
door (`nexus_trio.dialects`) build them; the router and the proxy read them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from nexus_trio.config import BackendType

__all__ = ["Asked", "ChatRequest", "Requirements", "UpstreamPlan"]


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a backend must offer to serve one request."""

    model: str
    stream: bool = False  # the client asked for a stream
    vision: bool = False
    tools: bool = False
    json: bool = False
    fim: bool = False  # fill in the middle (a completion with a suffix)
    embedding: bool = False  # an embeddings request: the model must embed, not generate
    context_tokens: int = 0  # estimated prompt tokens + requested completion tokens
    local_only: bool = False  # never a cloud backend (privacy: the key's, or the request's)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat completion request as it goes upstream: its bytes, its JSON, its
    needs."""

    body: bytes  # for the model the client named (aliases are resolved by `body_for`)
    payload: dict[str, Any]  # the JSON of ``body``
    needs: Requirements
    # The body asks the backend for a stream with usage (every request, unless its answer
    # could not be assembled from one); the client's own wish is ``needs.stream``.
    streamed_upstream: bool = False
    # A stream always asks its backend for usage (Nexus counts every request's tokens);
    # this says whether the client asked too, and so gets the usage chunk.
    client_wants_usage: bool = True
    # What the client's dialect needs again to write the answer in its own shape (the
    # Anthropic or Responses request as the client sent it, its tool-call ids); None for
    # OpenAI chat, whose answer is the backend's own. Opaque here: only its writer reads it.
    origin: Any = None
    # The client's ``max_tokens`` is the most it takes, not what it needs: Anthropic requires
    # one, and clients send what a Claude model may write (Claude Code: 32,000 and up). A
    # backend whose context cannot hold it would refuse the request (vLLM answers 400), so
    # such a backend is asked without a limit and stops where its context ends.
    limit_is_ceiling: bool = False
    # The backend endpoint the body goes to, under its base URL (chat completions unless a
    # dialect asks another: completions, embeddings).
    path: str = "/v1/chat/completions"
    # The key a backend's whole 200 answer must have to be one (a chat or text completion:
    # ``choices``; embeddings: ``data``); anything else is a protocol error, and fails over.
    answer_key: str = "choices"
    # How a request that is not a chat turn asks each backend (its endpoint and body differ
    # by backend type); None: a chat completion, sent to ``path``.
    plan: UpstreamPlan | None = None
    # The session the client named in its own API's way (Anthropic ``metadata.user_id``):
    # conversation affinity keeps its requests on one backend (`nexus_trio.routing.affinity`).
    session: str | None = None

    def payload_for(self, context_length: int | None) -> dict[str, Any]:
        """The request's JSON for a model with ``context_length`` (None: not known): the
        payload, without its limit when that is a ceiling the context cannot hold."""
        if not (self.limit_is_ceiling and context_length):
            return self.payload
        limit = max((v for k in _LIMITS if isinstance(v := self.payload.get(k), int)), default=0)
        # The prompt, counted generously (two bytes of the body a token, tools included):
        # dropping a limit that would have fitted costs nothing the context does not bound.
        if limit + len(self.body) // 2 <= context_length:
            return self.payload
        return {key: value for key, value in self.payload.items() if key not in _LIMITS}

    def body_for(self, model: str, context_length: int | None = None) -> bytes:
        """The body to send upstream for ``model`` (whose context holds ``context_length``
        tokens, if known): the client's bytes, unless the model name or the limit must
        change."""
        payload = self.payload_for(context_length)
        if model == self.needs.model and payload is self.payload:
            return self.body
        # ASCII escapes: the same JSON, and a lone surrogate the client sent survives.
        return json.dumps({**payload, "model": model}).encode()


_LIMITS = ("max_tokens", "max_completion_tokens")


class Asked(NamedTuple):
    """What one backend is sent: where, what, and how its stream reads as OpenAI's."""

    path: str
    body: bytes
    # Makes the `nexus_trio.proxy.sse.SSEParser` that reads the backend's own stream as
    # OpenAI chunks (llama.cpp's ``/infill``); None: the stream is OpenAI's already.
    parser: Callable[[], Any] | None = None


class UpstreamPlan(Protocol):
    """How a request that is not a chat turn goes upstream (legacy completions)."""

    @property
    def text(self) -> bool:
        """Whether the answers are text completions (``choices[].text``), not chat chunks."""

    def ask(self, model: str, kind: BackendType, context_length: int | None) -> Asked:
        """The request for a ``kind`` backend serving ``model``."""

    def resume(
        self, model: str, kind: BackendType, context_length: int | None, prefill: str,
        produced: int,
    ) -> Asked:  # fmt: skip
        """The request that continues an answer of which the client has ``prefill`` (about
        ``produced`` tokens)."""
