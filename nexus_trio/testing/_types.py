"""The plain data of the simulators: flavours, models, fault knobs, counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import trio

__all__ = ["Faults", "Flavor", "SimModel", "SimStats"]


class Flavor(StrEnum):
    """Which real server a simulated backend impersonates."""

    OLLAMA = "ollama"
    VLLM = "vllm"
    LLAMACPP = "llamacpp"
    GENERIC = "generic"
    LMSTUDIO = "lmstudio"
    EXO = "exo"
    LOCALAI = "localai"


@dataclass(frozen=True)
class SimModel:
    """One model a simulated backend serves, and what it can do."""

    id: str
    context_length: int = 8192
    vision: bool = False
    tools: bool = False
    # An embedding model: serves /v1/embeddings and refuses chat (Ollama lists its
    # capabilities as ["embedding"]). Every flavour but Ollama embeds with any model.
    embedding: bool = False
    insert: bool = False  # fills in the middle (Ollama's "insert"; llama.cpp's FIM tokens)


@dataclass
class Faults:
    """Fault knobs, read once at the start of each chat request.

    Chunk counts are content chunks: the first event of a stream (the role, or
    the head of a tool call) does not count, so ``die_after_chunks=0`` dies right
    after it, and a knob set past the end of the answer never fires.

    Attributes:
        status: answer ``/v1/chat/completions`` with this HTTP status and an
            OpenAI-shaped error body (with ``Retry-After: 1`` on 429 and 503).
        delay_before_headers_seconds: ``trio.sleep`` this long before any response
            to a chat request (so autojump clocks make it instant).
        die_after_chunks: stream: after K content chunks, close the TCP
            connection (no terminating chunk, no ``[DONE]``). Not streamed: close
            it without any response.
        stall_after_chunks: stream: after K content chunks, send nothing more but
            keep the connection open. Not streamed: never send the response.
        malformed: not streamed: a truncated JSON body with status 200. Streamed:
            after the role chunk, one ``data:`` event whose JSON is broken, then
            the body ends and the connection closes.
        reset_before_headers: close the connection as soon as a chat request has
            arrived, before any response (streamed or not).
        error_event_after_chunks: stream: after K content chunks, an in-band
            ``data: {"error": {...}}`` event then ``data: [DONE]``, as vLLM does.
            Ignored when not streamed.
    """

    status: int | None = None
    delay_before_headers_seconds: float = 0.0
    die_after_chunks: int | None = None
    stall_after_chunks: int | None = None
    malformed: bool = False
    error_event_after_chunks: int | None = None
    reset_before_headers: bool = False

    def clear(self) -> None:
        """Turn every fault off."""
        self.status = None
        self.delay_before_headers_seconds = 0.0
        self.die_after_chunks = None
        self.stall_after_chunks = None
        self.malformed = False
        self.error_event_after_chunks = None
        self.reset_before_headers = False


@dataclass
class SimStats:
    """What a simulated backend has seen; tests read it.

    Attributes:
        requests: every HTTP request, whatever its path.
        chat_requests: every ``POST /v1/chat/completions``, valid or not.
        chat_in_flight: chat requests being answered now.
        completed: chat answers (status 200) sent to the end.
        disconnects: chat requests whose client went away (or which were
            cancelled) before the answer was sent to the end.
        last_chat_body: the last chat request body, parsed, as received.
        last_headers: the last request's headers, lower-case names.
        chat_by_model: chat requests per requested model id.
        disconnected: set on each disconnect; :meth:`reset` replaces it.
    """

    requests: int = 0
    chat_requests: int = 0
    chat_in_flight: int = 0
    completed: int = 0
    disconnects: int = 0
    last_chat_body: dict[str, Any] | None = None
    last_headers: dict[str, str] = field(default_factory=dict)
    chat_by_model: Counter[str] = field(default_factory=Counter)
    disconnected: trio.Event = field(default_factory=trio.Event)
    embedding_requests: int = 0  # every POST /v1/embeddings
    last_embeddings_body: dict[str, Any] | None = None

    def reset(self) -> None:
        """Zero the counters (not ``chat_in_flight``) and arm a fresh ``disconnected``."""
        self.requests = 0
        self.chat_requests = 0
        self.completed = 0
        self.disconnects = 0
        self.last_chat_body = None
        self.last_headers = {}
        self.chat_by_model = Counter()
        self.disconnected = trio.Event()
        self.embedding_requests = 0
        self.last_embeddings_body = None
