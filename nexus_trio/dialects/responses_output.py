"""A chat completion stream as a Responses stream (pure): `ResponseBuilder`.

Feed it the answer's ``chat.completion.chunk`` objects; it says which Responses events
they make (OpenAI's streaming reference,
https://platform.openai.com/docs/api-reference/responses-streaming, and
``shared/research/dialects.md`` §2.4) and keeps the Response object they build. Every
event has its ``type`` and a ``sequence_number`` counting from 0:

    response.created, response.in_progress
    per output item, in order (output_index from 0):
      response.output_item.added
      message:        response.content_part.added, response.output_text.delta … (or
                      response.refusal.delta …), response.output_text.done (.refusal.done),
                      response.content_part.done
      function_call:  response.function_call_arguments.delta …, …arguments.done
      reasoning:      response.content_part.added (reasoning_text),
                      response.reasoning_text.delta …, …reasoning_text.done,
                      response.content_part.done
      response.output_item.done (the whole item: clients take tool calls from here)
    exactly one of response.completed, response.incomplete (finish_reason length →
    max_output_tokens, content_filter), response.failed (the answer broke off)

One item is open at a time: a delta of another kind closes it and opens the next. A
model's thinking (``reasoning_content`` / ``reasoning`` deltas) becomes a ``reasoning``
item whose ``content`` holds the text as ``reasoning_text`` — it is the model's raw
reasoning, not a summary, as vLLM's Responses API has it — with an empty ``summary``.
A tool call opens a new ``function_call`` item when its delta has a new ``index`` or a new
``id``: Ollama streams every call at index 0, each whole in one delta with its own id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "ResponseBuilder", "response_usage"]

Event = dict[str, Any]  # one stream event: ``type``, ``sequence_number``, its fields

# finish_reason → incomplete_details.reason; other reasons complete the response.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_usage(usage: Mapping[str, int]) -> dict[str, Any]:
    """The Responses ``usage`` of summed chat usage, every count present (0 when no backend
    reported one; Codex refuses a usage that lacks any of the three)."""
    given = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    total = usage.get("total_tokens", given[0] + given[1])
    return {
        "input_tokens": given[0],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": given[1],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": total,
    }


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(slots=True)
class _Open:
    """The output item being streamed, and its content part being streamed (if any)."""

    item: dict[str, Any]
    index: int  # output_index
    part: str = ""  # output_text, refusal or reasoning_text; "" for a function call
    content_index: int = -1
    pieces: list[str] = field(default_factory=list)  # the text (or arguments) so far
    upstream_index: int | None = None  # a tool call's index in the chat stream
    named: bool = False  # the tool call's id is the backend's (not one made up here)


class ResponseBuilder:
    """One response: events out of chunks in, and the Response object they build.

    ``shell`` holds the Response object's fields that do not change while it is written
    (``id``, ``model``, the request's fields it repeats).

    Example::

        builder = ResponseBuilder({"id": "resp_1", "model": "m"})
        events = [*builder.start(), *builder.add(chunk), *builder.finish(usage)]
        builder.response()  # the final Response object
    """

    __slots__ = ("_open", "_sequence", "_shell", "error", "finish_reason", "output", "status",
                 "usage")  # fmt: skip

    def __init__(self, shell: Mapping[str, Any]) -> None:
        self._shell = {"object": "response", "created_at": int(time.time()), **shell}
        self._sequence = 0
        self._open: _Open | None = None
        self.output: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self.status = "in_progress"
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None

    # -- the Response object ---------------------------------------------------------------

    def response(self) -> dict[str, Any]:
        """The Response object as it stands (final after `finish` or `fail`)."""
        reason = _INCOMPLETE.get(self.finish_reason or "")
        done = self.status in ("completed", "incomplete")
        return {
            **self._shell,
            "status": self.status,
            "completed_at": int(time.time()) if self.status == "completed" else None,
            "error": self.error,
            "incomplete_details": {"reason": reason} if self.status == "incomplete" else None,
            "output": list(self.output) if done or self.status == "failed" else [],
            "usage": self.usage,
        }

    def chat_message(self) -> dict[str, Any]:
        """The answer as a chat ``assistant`` message (text, tool calls), for the next turn."""
        text = "".join(
            part.get("text") or part.get("refusal") or ""
            for item in self.output if item["type"] == "message" for part in item["content"]
        )  # fmt: skip
        calls = [
            {"id": item["call_id"], "type": "function",
             "function": {"name": item["name"], "arguments": item["arguments"]}}
            for item in self.output if item["type"] == "function_call"
        ]  # fmt: skip
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls
                                   else None}  # fmt: skip
        if calls:
            message["tool_calls"] = calls
        return message

    # -- events ----------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[Event]:
        """The opening events: ``response.created``, ``response.in_progress``."""
        snapshot = self.response()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def add(self, chunk: Mapping[str, Any]) -> list[Event]:
        """The events one upstream chunk makes (none for a usage chunk, or a role)."""
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return []
        choice = choices[0]
        if not isinstance(choice, dict):
            return []
        events: list[Event] = []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for key in ("reasoning_content", "reasoning"):
                if isinstance(text := delta.get(key), str) and text:
                    self._text("reasoning_text", text, events)
            if isinstance(text := delta.get("content"), str) and text:
                self._text("output_text", text, events)
            if isinstance(text := delta.get("refusal"), str) and text:
                self._text("refusal", text, events)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for position, call in enumerate(calls):
                    if isinstance(call, dict):
                        self._call(call, position, events)
            legacy = delta.get("function_call")
            if isinstance(legacy, dict):
                self._call({"index": 0, "function": legacy}, 0, events)
        if isinstance(reason := choice.get("finish_reason"), str) and reason:
            self.finish_reason = reason
        return events

    def finish(self, usage: Mapping[str, int]) -> list[Event]:
        """The answer is complete: close what is open, then the terminal event."""
        reason = _INCOMPLETE.get(self.finish_reason or "")
        events: list[Event] = []
        if self._open is None and not self.output:
            # An empty answer is still a message, as OpenAI's is.
            self._open_message("output_text", events)
        self._close(events, "incomplete" if reason else "completed")
        self.status = "incomplete" if reason else "completed"
        self.usage = response_usage(usage)
        kind = "response.incomplete" if reason else "response.completed"
        events.append(self._event(kind, response=self.response()))
        return events

    def fail(self, code: str, message: str) -> list[Event]:
        """The answer broke off: ``response.failed``, the item in progress left as it was
        (a tool call cut short must not reach a client as finished)."""
        if self._open is not None:
            self._settle(self._open, "incomplete")
            self._open = None
        self.status = "failed"
        self.error = {"code": code, "message": message}
        return [self._event("response.failed", response=self.response())]

    # -- items -----------------------------------------------------------------------------

    def _text(self, part: str, text: str, events: list[Event]) -> None:
        current = self._open
        item_type = "reasoning" if part == "reasoning_text" else "message"
        if current is None or current.item["type"] != item_type:
            self._close(events, "completed")
            current = self._open_message(part, events) if item_type == "message" else \
                self._open_reasoning(events)  # fmt: skip
        elif current.part != part:  # text after a refusal, or the other way round
            self._close_part(current, events)
            self._open_part(current, part, events)
        current.pieces.append(text)
        key = {"output_text": "response.output_text.delta", "refusal": "response.refusal.delta",
               "reasoning_text": "response.reasoning_text.delta"}[part]  # fmt: skip
        fields: dict[str, Any] = {
            "item_id": current.item["id"], "output_index": current.index,
            "content_index": current.content_index, "delta": text,
        }  # fmt: skip
        if part == "output_text":
            fields["logprobs"] = []
        events.append(self._event(key, **fields))

    def _open_message(self, part: str, events: list[Event]) -> _Open:
        item = {"id": _item_id("msg"), "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}  # fmt: skip
        current = self._add_item(item, events)
        self._open_part(current, part, events)
        return current

    def _open_reasoning(self, events: list[Event]) -> _Open:
        item = {"id": _item_id("rs"), "type": "reasoning", "status": "in_progress",
                "summary": [], "content": []}  # fmt: skip
        current = self._add_item(item, events)
        self._open_part(current, "reasoning_text", events)
        return current

    def _add_item(self, item: dict[str, Any], events: list[Event]) -> _Open:
        current = _Open(item, len(self.output))
        self.output.append(item)
        self._open = current
        events.append(self._event("response.output_item.added", output_index=current.index,
                                  item=_copy(item)))  # fmt: skip
        return current

    def _open_part(self, current: _Open, part: str, events: list[Event]) -> None:
        current.part, current.pieces = part, []
        current.content_index = len(current.item["content"])
        current.item["content"].append(_part(part, ""))
        events.append(self._event(
            "response.content_part.added", item_id=current.item["id"],
            output_index=current.index, content_index=current.content_index,
            part=_part(part, ""),
        ))  # fmt: skip

    def _close_part(self, current: _Open, events: list[Event]) -> None:
        text = "".join(current.pieces)
        part = _part(current.part, text)
        current.item["content"][current.content_index] = part
        where = {"item_id": current.item["id"], "output_index": current.index,
                 "content_index": current.content_index}  # fmt: skip
        if current.part == "output_text":
            events.append(self._event("response.output_text.done", **where, text=text,
                                      logprobs=[]))  # fmt: skip
        elif current.part == "refusal":
            events.append(self._event("response.refusal.done", **where, refusal=text))
        else:
            events.append(self._event("response.reasoning_text.done", **where, text=text))
        events.append(self._event("response.content_part.done", **where, part=_copy(part)))

    def _call(self, call: Mapping[str, Any], position: int, events: list[Event]) -> None:
        index = call.get("index")
        upstream_index = index if isinstance(index, int) else position
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"),
                                                                  dict) else {}  # fmt: skip
        current = self._open
        if (
            current is None
            or current.item["type"] != "function_call"
            or current.upstream_index != upstream_index
            or (call_id is not None and current.named and call_id != current.item["call_id"])
        ):
            self._close(events, "completed")
            item = {"id": _item_id("fc"), "type": "function_call", "status": "in_progress",
                    "arguments": "", "call_id": call_id, "name": ""}  # fmt: skip
            name = function.get("name")
            item["name"] = name if isinstance(name, str) else ""
            if call_id is None:  # a server that names no id: one the next turn can use
                item["call_id"] = _item_id("call")
            elif any(c.get("call_id") == call_id for c in self.output):
                # The id of an earlier call again: clients know calls by id (the SDK
                # refuses two alike), and the next turn must tell their outputs apart.
                item["call_id"] = f"{call_id}_{len(self.output)}"
            current = self._add_item(item, events)
            current.upstream_index, current.named = upstream_index, call_id is not None
        else:
            # An id first named after the item went out is not taken: clients know an item
            # by its call_id, so it keeps the one made up here (the next turn sends it).
            name = function.get("name")
            # A server that repeats the whole name in later deltas must not double it.
            if isinstance(name, str) and name and name != current.item["name"]:
                current.item["name"] += name
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            current.pieces.append(arguments)
            events.append(self._event(
                "response.function_call_arguments.delta", item_id=current.item["id"],
                output_index=current.index, delta=arguments,
            ))  # fmt: skip

    def _close(self, events: list[Event], status: str) -> None:
        """Close the open item (if any) with ``status``."""
        current = self._open
        if current is None:
            return
        self._open = None
        item = current.item
        if item["type"] == "function_call":
            arguments = "".join(current.pieces)
            events.append(self._event(
                "response.function_call_arguments.done", item_id=item["id"],
                output_index=current.index, arguments=arguments, name=item["name"],
            ))  # fmt: skip
        else:
            self._close_part(current, events)
        self._settle(current, status)
        events.append(self._event("response.output_item.done", output_index=current.index,
                                  item=_copy(item)))  # fmt: skip

    @staticmethod
    def _settle(current: _Open, status: str) -> None:
        """The item's final fields: joined text or arguments, and ``status``."""
        item = current.item
        if item["type"] == "function_call":
            item["arguments"] = "".join(current.pieces)
        elif current.content_index >= 0:
            item["content"][current.content_index] = _part(current.part, "".join(current.pieces))
        item["status"] = status


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "reasoning_text", "text": text}


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of an item as it is now (the builder goes on changing the original)."""
    copied = dict(item)
    if isinstance(item.get("content"), list):
        copied["content"] = [dict(part) for part in item["content"]]
    return copied
