"""What the client has seen of a stream, and how a continuation joins it (pure).

`StreamTracker` reads every upstream event before it reaches the client. For
the first backend it changes nothing (the bytes go through as they came) but
remembers: the ``id``, ``model`` and ``created`` the client saw, the text
relayed so far, whether a tool call was being streamed, whether a choice
finished, and the ``usage`` the backend reported.

When the stream continues on another backend (mid-stream failover), the
tracker makes the new backend's events look like more of the same stream:
same ``id``/``model``/``created``, no second role chunk, no echo of the prefill
(llama.cpp repeats the prefilled text before continuing it), exactly one
finish and one ``[DONE]``, and one ``usage`` chunk adding up what every
backend reported.

Legacy completions (``text_completion`` chunks, ``choices[].text``) are tracked alike
with ``text_shape``: their text is read as the content, and the chunks Nexus writes
itself take that shape.

Each admitted event comes out twice, for the two kinds of writer: as the OpenAI
stream's bytes (``relay``, passed through untouched where nothing changed) and
as the parsed chunks those bytes carry (``chunks``), which writers that speak
another shape (a whole JSON completion, another API's events) read instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nexus_trio.errors import BackendError, BackendProtocolError
from nexus_trio.proxy.sse import DONE_EVENT, SSEEvent, data_event

__all__ = ["Admitted", "Chunk", "StreamTracker", "add_usage", "carries_answer"]

Chunk = dict[str, Any]  # one ``chat.completion.chunk`` object
_ANSWER_KEYS = ("content", "tool_calls", "function_call", "refusal", "reasoning_content",
                "reasoning")  # fmt: skip
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _says_something(choice: object) -> bool:
    """Whether a streamed choice carries part of the answer (not just the role): a delta
    with content, or a completion's ``text``."""
    if not isinstance(choice, dict):
        return False
    if choice.get("finish_reason"):
        return True
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return any(delta.get(key) for key in _ANSWER_KEYS)
    return bool(choice.get("text"))


def carries_answer(event: SSEEvent, backend: str) -> bool:
    """Whether an upstream event carries part of the answer, so that a stream may commit on
    it: what `StreamTracker.admit` says of it, without keeping anything.

    Raises:
        BackendError: an in-band error event, or data that is not a JSON object.
    """
    if event.data is None:
        return False
    if event.is_done:
        return True
    choices = _parse(event, backend).get("choices")
    # A chunk without choices is the usage, which comes only after the answer.
    return not (isinstance(choices, list) and choices) or any(map(_says_something, choices))


@dataclass(slots=True)
class Admitted:
    """What one upstream event means for the client."""

    relay: bytes = b""  # the OpenAI stream's bytes to send the client now (maybe nothing)
    chunks: tuple[Chunk, ...] = ()  # the chunks ``relay`` carries, parsed
    says: bool = False  # carries part of the answer: a stream may commit on it
    done: bool = False  # the stream is complete (after relaying ``relay``)


@dataclass(slots=True)
class _Continuation:
    prefill: str  # the text relayed before the switch
    undecided: str = ""  # continuation text held while it may still be an echo of prefill
    decided: bool = False


@dataclass(slots=True)
class StreamTracker:
    """See the module docstring. One per streamed request."""

    id: str | None = None
    model: str | None = None
    created: int | None = None
    text: str = ""  # choice 0's content relayed so far
    content_chunks: int = 0  # events that carried content: about one token each
    tool_call_in_flight: bool = False
    finished: bool = False
    usage: dict[str, int] = field(default_factory=dict)
    held_usage: bytes = b""  # the first backend's own usage event, relayed at the end as is
    switched: bool = False  # a continuation has begun: events are rewritten
    forward_usage: bool = True  # whether the client asked for the usage chunk
    text_shape: bool = False  # legacy completion chunks (``choices[].text``), not chat
    _continuation: _Continuation | None = None

    # -- the client's view --------------------------------------------------------------

    def admit(self, event: SSEEvent, backend: str) -> Admitted:
        """Read one upstream event; say what the client gets.

        Raises:
            BackendError: an in-band error event, or data that is not a JSON object.
        """
        if event.data is None:
            # Comments and keep-alives: harmless to pass on from the first backend.
            return Admitted(b"" if self.switched else event.raw)
        if event.is_done:
            return self.close()
        chunk = _parse(event, backend)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            self._add_usage(chunk.get("usage"))
            if not self.switched and not self.held_usage and self.forward_usage:
                self.held_usage = event.raw
            return Admitted(says=True)  # usage is held for the end
        if self.id is None:
            self.id, self.model, self.created = chunk.get("id"), chunk.get("model"), \
                chunk.get("created")  # fmt: skip
        says = any(_says_something(c) for c in choices)
        choice: dict[str, Any] = choices[0] if isinstance(choices[0], dict) else {}
        delta: dict[str, Any] = choice["delta"] if isinstance(choice.get("delta"), dict) else {}
        if self.text_shape:  # a completion's text reads as a chat delta's content
            delta = {"content": choice.get("text")}
        if delta.get("tool_calls") or delta.get("function_call"):
            self.tool_call_in_flight = True
        if choice.get("finish_reason"):
            self.finished = True
            self.tool_call_in_flight = False
            # Some servers (llama.cpp) report usage in the finishing chunk itself; others
            # repeat a running total in every chunk, which must not be added up.
            self._add_usage(chunk.get("usage"))
        if not self.switched:
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.text += content
                self.content_chunks += 1
            return Admitted(event.raw, (chunk,), says=says)
        return _encoded(self._rewrite(choice, delta), says=says)

    def close(self) -> Admitted:
        """What goes out with ``[DONE]``: held text, and the usage (summed if a continuation
        happened)."""
        chunks = self._flush_undecided()
        if self.switched:
            if self.usage and self.forward_usage:
                chunks.append(self._usage_chunk())
            return _encoded(chunks, says=True, done=True, tail=DONE_EVENT)
        return Admitted(self.held_usage + DONE_EVENT, says=True, done=True)

    def finish(self, reason: str) -> Admitted:
        """End the answer here with ``reason`` (no backend will say more): one finishing
        chunk, then what `close` sends."""
        ending = [*self._flush_undecided(), self._chunk({}, reason)]
        self.finished = True
        closing = self.close()
        relay = b"".join(data_event(c) for c in ending) + closing.relay
        return Admitted(relay, (*ending, *closing.chunks), says=True, done=True)

    def _usage_chunk(self) -> Chunk:
        kind = "text_completion" if self.text_shape else "chat.completion.chunk"
        return {"id": self.id, "object": kind, "created": self.created,
                "model": self.model, "choices": [], "usage": dict(self.usage)}  # fmt: skip

    def _add_usage(self, usage: object) -> None:
        add_usage(self.usage, usage)

    # -- continuation --------------------------------------------------------------------

    @property
    def continuable(self) -> str | None:
        """Why the stream cannot be continued, or None if it can."""
        if self.tool_call_in_flight:
            return "a tool call was being streamed, and its arguments cannot be continued"
        if self.finished:
            return "the answer had already finished"
        return None

    def begin_continuation(self, *, may_echo: bool) -> None:
        """The next events come from another backend, prefilled with `text`."""
        self.switched = True
        self._continuation = _Continuation(prefill=self.text if may_echo else "")
        if not may_echo:
            self._continuation.decided = True

    def _rewrite(self, choice: dict[str, Any], delta: dict[str, Any]) -> list[Chunk]:
        """A continuation event, made to look like more of the first stream."""
        cont = self._continuation
        assert cont is not None
        content = delta.get("content") if isinstance(delta.get("content"), str) else None
        rest = {k: v for k, v in delta.items() if k not in ("role", "content")}
        out: list[Chunk] = []
        if content:
            if not cont.decided:
                cont.undecided += content
                content = self._decide(cont)
            if content:
                self.text += content
                self.content_chunks += 1
                out.append(self._chunk({"content": content}, None))
        if rest or choice.get("finish_reason"):
            out = [*self._flush_undecided(), *out, self._chunk(rest, choice.get("finish_reason"))]
        return out

    def _decide(self, cont: _Continuation) -> str:
        """The part of the held text that is new, once it is clear whether it is an echo."""
        held, prefill = cont.undecided, cont.prefill
        if len(held) < len(prefill) and prefill.startswith(held):
            return ""  # still possibly the echo: hold on
        cont.decided = True
        cont.undecided = ""
        return held[len(prefill) :] if held.startswith(prefill) else held

    def _flush_undecided(self) -> list[Chunk]:
        """Held text that turned out to be all there is (a short answer): it is new text."""
        cont = self._continuation
        if cont is None or cont.decided or not cont.undecided:
            return []
        cont.decided = True
        text, cont.undecided = cont.undecided, ""
        self.text += text
        return [self._chunk({"content": text}, None)]

    def _chunk(self, delta: dict[str, Any], finish_reason: object) -> Chunk:
        if self.text_shape:
            return {
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": delta.get("content") or "", "logprobs": None,
                             "finish_reason": finish_reason}],
            }  # fmt: skip
        return {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}],
        }  # fmt: skip


def _encoded(chunks: list[Chunk], *, says: bool, done: bool = False,
             tail: bytes = b"") -> Admitted:  # fmt: skip
    """Chunks Nexus wrote itself, with their bytes."""
    relay = b"".join(data_event(c) for c in chunks) + tail
    return Admitted(relay, tuple(chunks), says=says, done=done)


def add_usage(totals: dict[str, int], usage: object) -> None:
    """Add a backend's ``usage`` object (if it is one) to ``totals``, key by key."""
    if not isinstance(usage, dict):
        return
    for key in _USAGE_KEYS:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            totals[key] = totals.get(key, 0) + value


def _parse(event: SSEEvent, backend: str) -> dict[str, Any]:
    try:
        chunk = event.parsed()
    except (ValueError, RecursionError):
        raise BackendProtocolError(backend, "sent an SSE event that is not JSON") from None
    if not isinstance(chunk, dict):
        raise BackendProtocolError(backend, "sent an SSE event that is not a JSON object")
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise BackendError(backend, f"reported an error in the stream: {message}")
    return chunk
