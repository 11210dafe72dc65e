"""Ollama's response lines from the chat stream (pure).

`OllamaLines` turns each ``chat.completion.chunk`` into the NDJSON lines Ollama writes
(``/api/chat``: ``{"model", "created_at", "message": {"role": "assistant", "content",
"thinking"?, "tool_calls"?}, "done": false}``; ``/api/generate``: ``"response"`` and
``"thinking"`` at the top level), and the answer's end into the final line (``done``,
``done_reason``, token counts, durations in nanoseconds). `merge_lines` folds the lines
into the one object of a ``"stream": false`` answer.

Tool calls reach the client whole, as Ollama sends them: a call's streamed arguments are
kept until the answer's finish reason (or its end), then every call goes out in one line
as ``{"id", "function": {"index", "name", "arguments": {...}}}`` with the arguments a JSON
object. Calls are keyed by id as well as index, as Ollama's own OpenAI stream sends every
call at index 0. Arguments that are not a JSON object (a model's broken call) are written
as the text the model wrote, in ``content``, rather than lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nexus_trio.dialects.assembly import ToolCall, merge_call

__all__ = ["Durations", "OllamaLines", "created_at", "merge_lines"]

Json = dict[str, Any]


def created_at(ns: int) -> str:
    """An RFC 3339 UTC time with nanoseconds, as Go writes a ``time.Time`` (trailing zeros
    of the fraction dropped): ``2026-12-02T12:07:31.123456789Z``."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


@dataclass(frozen=True, slots=True)
class Durations:
    """What Nexus measured of one answer, in nanoseconds: from the request to its first
    token (Ollama's prompt evaluation, here queueing and the backend's reading of the
    prompt too), and from the first token to the end (generation)."""

    total: int = 0
    prompt: int = 0
    generation: int = 0


@dataclass(slots=True)
class OllamaLines:
    """Feed it chunks (`feed`); `finish` is the final line, `fail` an error line."""

    model: str
    shape: str = "chat"  # "chat" or "generate"
    think: bool = True
    clock: Callable[[], int] = lambda: 0  # Unix time in ns, for created_at
    _calls: list[ToolCall] = field(default_factory=list)
    _by_index: dict[int, ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None
    done: bool = False

    def _line(self, content: str = "", thinking: str = "", calls: list[Json] | None = None) -> Json:
        line: Json = {"model": self.model, "created_at": created_at(self.clock())}
        if self.shape == "chat":
            message: Json = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            line["message"] = message
        else:
            line["response"] = content
            if thinking:
                line["thinking"] = thinking
        line["done"] = False
        return line

    def feed(self, chunk: Mapping[str, Any]) -> list[Json]:
        """The lines one ``chat.completion.chunk`` (or ``text_completion`` chunk: its
        ``text`` is the content) makes (often one, often none)."""
        choices = chunk.get("choices")
        lines: list[Json] = []
        if not isinstance(choices, list):
            return lines
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if delta is None and isinstance(choice.get("text"), str):
                delta = {"content": choice["text"]}  # a text completion's chunk
            if isinstance(delta, dict):
                content = delta.get("content")
                content = content if isinstance(content, str) else ""
                thinking = ""
                if self.think:
                    for key in ("reasoning_content", "reasoning"):
                        if isinstance(delta.get(key), str):
                            thinking = delta[key]
                            break
                if content or thinking:
                    lines.append(self._line(content, thinking))
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    self._add_calls(calls)
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
                lines += self._flush()
        return lines

    def _add_calls(self, calls: list[Any]) -> None:
        for position, delta in enumerate(calls):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            slot = index if isinstance(index, int) else position
            call_id = delta.get("id") if isinstance(delta.get("id"), str) else None
            call = self._by_index.get(slot)
            # A new id at a known index is a new call (Ollama: every call at index 0).
            if call is None or (call_id and call.id and call_id != call.id):
                call = ToolCall()
                self._calls.append(call)
                self._by_index[slot] = call
            merge_call(call, delta)

    def _flush(self) -> list[Json]:
        """Every call kept so far, whole, in one line (and a line of text for a call whose
        arguments are not an object)."""
        if not self._calls:
            return []
        whole: list[Json] = []
        broken: list[str] = []
        for call in self._calls:
            text = "".join(call.arguments)
            try:
                arguments = json.loads(text) if text.strip() else {}
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                broken.append(text)
                continue
            function = {"index": len(whole), "name": call.name, "arguments": arguments}
            entry: Json = {"function": function}
            if call.id:
                entry = {"id": call.id, **entry}
            whole.append(entry)
        self._calls.clear()
        self._by_index.clear()
        lines = [self._line(calls=whole)] if whole else []
        lines += [self._line(content=text) for text in broken if text]
        if self.shape == "generate":
            lines = [line for line in lines if line.get("response")]
        return lines

    def finish(
        self, usage: Mapping[str, int], durations: Durations, reason: str = ""
    ) -> list[Json]:
        """The lines that end the answer: calls still kept, then the final line."""
        lines = self._flush()
        self.done = True
        final = self._line()
        final["done"] = True
        final["done_reason"] = reason or ("length" if self.finish_reason == "length" else "stop")
        final["total_duration"] = durations.total
        final["load_duration"] = 0
        final["prompt_eval_count"] = int(usage.get("prompt_tokens", 0) or 0)
        final["prompt_eval_duration"] = durations.prompt
        final["eval_count"] = int(usage.get("completion_tokens", 0) or 0)
        final["eval_duration"] = durations.generation
        return [*lines, final]

    def fail(self, message: str) -> Json:
        """The line that ends a stream that failed midway (the ollama client raises it)."""
        self.done = True
        return {"error": message}


def merge_lines(lines: Iterable[Json], shape: str = "chat") -> Json:
    """The one object of a ``"stream": false`` answer, from its lines (the last one the
    final line): the texts joined, the calls gathered, the final line's fields kept."""
    text_key = "content" if shape == "chat" else "response"
    texts: dict[str, list[str]] = {text_key: [], "thinking": []}
    calls: list[Json] = []
    last: Json = {}
    for line in lines:
        source = line.get("message") if shape == "chat" else line
        if isinstance(source, dict):
            for key, parts in texts.items():
                if isinstance(source.get(key), str):
                    parts.append(source[key])
            found = source.get("tool_calls")
            calls += found if isinstance(found, list) else []
        last = line
    out: Json = {"model": last.get("model"), "created_at": last.get("created_at")}
    body: Json = {text_key: "".join(texts[text_key])}
    if texts["thinking"]:
        body["thinking"] = "".join(texts["thinking"])
    if calls:
        body["tool_calls"] = [
            {**c, "function": {**c["function"], "index": i}} for i, c in enumerate(calls)
        ]
    if shape == "chat":
        out["message"] = {"role": "assistant", **body}
    else:
        out.update(body)
    skip = {"model", "created_at", "message", "response", "thinking"}
    out.update((k, v) for k, v in last.items() if k not in skip)
    return out
