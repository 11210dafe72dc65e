"""Conversation affinity: which backend most likely still holds a request's prefix.

An LLM server answers a follow-up turn much faster when its KV cache still holds
the conversation so far. So Nexus remembers, per model, which backend served
which prefix, and routing prefers that backend (while it has room; see
`nexus_trio.routing.router`).

A request's identity is a chain of hashes over its messages in order (the tool
definitions first, when there are any): link *i* hashes link *i-1* and message
*i*, so every prefix of a conversation has its own key and the longest one known
wins. When a backend serves a request, the key of its messages plus the answer it
gave is remembered: the next turn of that conversation (every message of this one,
the answer, then a new user message) finds it. An answer that is not text (tool
calls) remembers the request's own chain, which the next turn (the call, its
result) extends.

An explicit session key (``X-Session-Id``, OpenAI ``user`` / ``prompt_cache_key``,
Anthropic ``metadata.user_id``) wins over the prefix: it keeps a client's requests
together even when their messages differ.

Pure: the table (`nexus_trio.aging.AgingTable`) is the registry's, written as
requests are served (`served_keys`); routing reads it (`prefer`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any, NamedTuple

from nexus_trio.aging import AgingTable

__all__ = [
    "ConversationKey",
    "Preference",
    "chain",
    "conversation_key",
    "extend",
    "prefer",
    "served_keys",
]

# One key of the table: a prefix's hash, or a session id (marked so the two never meet).
Key = int | str
_SESSION = "session:"
_LONGEST_SESSION = 256  # a longer one is hashed: the table holds no client's essay


class ConversationKey(NamedTuple):
    """What a request is known by: its session (if the client named one) and the chain
    of its prefix's hashes, one link per message (a first for the tools, if any)."""

    session: str | None
    links: tuple[int, ...]
    skip: int  # links that are not messages (the tools' link): not counted as a prefix


class Preference(NamedTuple):
    """The backend affinity prefers, and why: ``session`` or ``prefix=N`` (N messages)."""

    backend: str
    label: str  # "session" or "prefix"
    messages: int  # messages of the matched prefix (0 for a session)

    @property
    def reason(self) -> str:
        """For ``X-Nexus-Route-Reason``: ``session:sticky;`` or ``affinity:prefix=N;``."""
        if self.label == "session":
            return "session:sticky;"
        return f"affinity:prefix={self.messages};"


def _text_of(content: object) -> object:
    """A message's content as clients send it back: a list of text parts reads as their
    text (OpenAI lets either stand for the same turn)."""
    if content is None:
        return ""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    return content


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _canonical(message: object) -> object:
    """What identifies a message: its role, its content, its tool calls (name and
    arguments; ids are the client's or the backend's and differ between the two) and the
    call a tool result answers. Fields clients add when they echo a message back (null
    ``refusal``, ``annotations``) do not count."""
    if not isinstance(message, Mapping):
        return _json(message)
    role = message.get("role")
    content = _text_of(message.get("content"))
    calls = message.get("tool_calls")
    answers = message.get("tool_call_id")
    if isinstance(role, str) and isinstance(content, str) and not calls and not answers:
        return role, content  # the common case, without JSON
    shown: list[Any] = [role, content]
    if calls:
        shown.append(
            [
                [c.get("function", {}).get("name"), c.get("function", {}).get("arguments")]
                if isinstance(c, dict) and isinstance(c.get("function"), dict)
                else c
                for c in calls
            ]
            if isinstance(calls, list)
            else calls
        )
    if answers:
        shown.append(answers)
    return _json(shown)


# Python's own hash: SipHash over strings, keyed at random per process (so no client can
# aim for a collision, and the table lives in one process anyway), cached on each string,
# and an order of magnitude faster than hashlib over a long system prompt.
def _link(previous: int, part: object) -> int:
    return hash((previous, part))


_ROOT = hash("nexus-affinity")


def chain(messages: Sequence[object], tools: object = None) -> tuple[tuple[int, ...], int]:
    """The chain of ``messages`` (after ``tools``, when given): one hash per message, each
    covering every message before it; and how many links come before the first message
    (1 with tools, else 0)."""
    links: list[int] = []
    previous = _ROOT
    if tools:
        previous = _link(previous, ("tools", _json(tools)))
        links.append(previous)
    for message in messages:
        previous = _link(previous, _canonical(message))
        links.append(previous)
    return tuple(links), 1 if tools else 0


def extend(links: Sequence[int], answer: str) -> int:
    """The link of ``links`` followed by the assistant message ``answer``: what the next
    turn's prefix hashes to."""
    return _link(links[-1] if links else _ROOT, ("assistant", answer))


def _session_of(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    if len(value) > _LONGEST_SESSION:
        return blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return value


def conversation_key(
    payload: Mapping[str, Any], header: str | None = None, session: str | None = None
) -> ConversationKey | None:
    """What a canonical chat request (``payload``) is known by for affinity; None for one
    without messages (an embedding, a legacy completion) and no session.

    The session is, first found: ``header`` (``X-Session-Id``, Claude Code's
    ``X-Claude-Code-Session-Id``), the payload's ``prompt_cache_key``, ``session`` (what
    the client's dialect read: Anthropic ``metadata.user_id``), the payload's ``user``.
    """
    named = (
        _session_of(header)
        or _session_of(payload.get("prompt_cache_key"))
        or _session_of(session)
        or _session_of(payload.get("user"))
    )
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return None if named is None else ConversationKey(named, (), 0)
    links, skip = chain(messages, payload.get("tools"))
    return ConversationKey(named, links, skip)


def served_keys(key: ConversationKey, answer: str | None) -> list[Key]:
    """What to remember of a request served with ``answer`` (its text; None or empty for
    an answer of tool calls): its session, and the prefix its next turn will have."""
    kept: list[Key] = []
    if key.session is not None:
        kept.append(_SESSION + key.session)
    if key.links:
        kept.append(extend(key.links, answer) if answer else key.links[-1])
    return kept


def prefer(table: AgingTable, model: str, key: ConversationKey, now: float) -> Preference | None:
    """The backend that served ``key``'s session, else the longest prefix of its messages
    (the last left out: the new turn no backend has seen), as ``table`` remembers them
    for ``model`` (`served_keys`); None when it holds neither."""
    if not table.has(model):
        return None
    if key.session is not None:
        backend = table.get(model, _SESSION + key.session, now)
        if backend is not None:
            return Preference(backend, "session", 0)
    links = key.links
    for i in range(len(links) - 2, -1, -1):
        backend = table.get(model, links[i], now)
        if backend is not None:
            return Preference(backend, "prefix", i + 1 - key.skip)
    return None
