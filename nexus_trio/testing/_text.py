"""Deterministic answers: pure functions of (model id, conversation).

A simulated model always answers "greedily": the same model and the same
messages give the same words on every backend, every run, every process
(seeded with sha256, never with ``hash()``, which is salted per process). That
is what makes an interrupted stream checkable: continue it anywhere and the
words must join up exactly.

Tokens are words; every token but the first carries its leading space, so the
text is ``"".join(tokens)``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = [
    "VOCABULARY",
    "answer_tokens",
    "completion_tokens",
    "continuation",
    "estimate_prompt_tokens",
    "expected_answer",
    "expected_completion",
    "message_text",
    "split_pieces",
    "tool_arguments",
    "tool_call_id",
]

VOCABULARY: Final = (
    "the", "a", "river", "stone", "light", "quiet", "morning", "signal", "garden", "network",
    "simple", "bright", "engine", "thread", "window", "careful", "answer", "question", "moves",
    "holds", "returns", "carries", "under", "over", "between", "through", "slowly", "again",
    "model", "token", "stream", "backend", "route", "healthy", "cluster", "kernel", "socket",
    "packet", "orbit", "harbor", "lantern", "meadow", "copper", "silver", "paper", "winter",
    "summer", "north", "south", "small", "large", "early", "late", "open", "closed", "steady",
    "patient", "curious", "every", "other", "because", "while", "after", "before", "and",
)  # fmt: skip

MIN_WORDS: Final = 24
MAX_WORDS: Final = 48
INTEGER_ARGUMENT: Final = 42
PIECE_CHARS: Final = 8


def _seed(model_id: str, messages: Sequence[Any], salt: str = "") -> int:
    canonical = json.dumps(
        [model_id, salt, list(messages)], sort_keys=True, separators=(",", ":"), default=str
    )
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big")


def answer_tokens(model_id: str, messages: Sequence[Any]) -> list[str]:
    """The tokens of the whole answer of ``model_id`` to ``messages`` (no assistant prefill)."""
    rng = random.Random(_seed(model_id, messages))
    words = [rng.choice(VOCABULARY) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS))]
    words[0] = words[0].capitalize()
    words[-1] += "."
    return [words[0], *(" " + word for word in words[1:])]


def expected_answer(model_id: str, messages: Sequence[Any]) -> str:
    """The text a simulated backend answers ``messages`` with, for tests to compare against.

    ``messages`` is the conversation without any trailing assistant prefill; the
    answer does not depend on the flavour, the backend, or sampling parameters.

    Example::

        text = expected_answer("llama3:8b", [{"role": "user", "content": "hi"}])
    """
    return "".join(answer_tokens(model_id, messages))


def continuation(model_id: str, messages: Sequence[Any], prefix: str) -> list[str]:
    """The tokens that follow ``prefix`` when it is the assistant's partial answer.

    If ``prefix`` is a prefix of the full answer, the rest of it, split where the
    full answer's tokens split (so a prefix that ends inside a token continues
    with the rest of that token). Otherwise, as a real model would, something
    else deterministic: a fresh answer seeded by the prefix too.
    """
    tokens = answer_tokens(model_id, messages)
    full = "".join(tokens)
    if not full.startswith(prefix):
        fresh = answer_tokens(model_id, [*messages, {"role": "assistant", "content": prefix}])
        return [" " + fresh[0], *fresh[1:]]
    offset = 0
    for index, token in enumerate(tokens):
        end = offset + len(token)
        if end > len(prefix):
            rest = token[len(prefix) - offset :]
            return [rest, *tokens[index + 1 :]]
        offset = end
    return []


def _document(prompt: str, suffix: str) -> list[dict[str, str]]:
    return [{"role": "prompt", "content": prompt}, {"role": "suffix", "content": suffix}]


def completion_tokens(model_id: str, prompt: str, suffix: str = "") -> list[str]:
    """The tokens a text completion of ``prompt`` (before ``suffix``, when filling in the
    middle) goes on with.

    A prompt that is an earlier prompt plus the start of its completion (a continuation:
    the prompt and the text relayed so far) goes on with the rest of that completion,
    split where it splits, so a continued completion joins up exactly.
    """
    for cut in range(len(prompt)):
        head, written = prompt[:cut], prompt[cut:]
        document = _document(head, suffix)
        if "".join(answer_tokens(model_id, document)).startswith(written):
            return continuation(model_id, document, written)
    return answer_tokens(model_id, _document(prompt, suffix))


def expected_completion(model_id: str, prompt: str, suffix: str = "") -> str:
    """The text a simulated backend completes ``prompt`` (and fills in before ``suffix``)
    with, for tests to compare against: the same on ``/v1/completions`` and llama.cpp's
    ``/infill``, whatever the flavour."""
    return "".join(completion_tokens(model_id, prompt, suffix))


def message_text(content: object) -> str:
    """The text of a message ``content``: a string, or the ``text`` parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """A stable stand-in for a tokenizer: words of every message plus a few per message."""
    return sum(len(message_text(m.get("content")).split()) + 4 for m in messages)


def tool_call_id(model_id: str, messages: Sequence[Any]) -> str:
    """A deterministic ``call_…`` id for the tool call answering ``messages``."""
    return f"call_{_seed(model_id, messages, 'call'):016x}"


def tool_arguments(model_id: str, messages: Sequence[Any], tool: Mapping[str, Any]) -> str:
    """The JSON arguments for a call to ``tool``: each required parameter, typed.

    string → a word, integer and number → 42, boolean → true, an enum → its
    first value, anything else → null.
    """
    function = tool.get("function")
    function = function if isinstance(function, Mapping) else {}
    parameters = function.get("parameters")
    parameters = parameters if isinstance(parameters, Mapping) else {}
    properties = parameters.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = parameters.get("required")
    required = required if isinstance(required, list) else []
    rng = random.Random(_seed(model_id, messages, "arguments"))
    arguments: dict[str, Any] = {}
    for name in required:
        if isinstance(name, str):
            schema = properties.get(name)
            arguments[name] = _value_for(schema if isinstance(schema, Mapping) else {}, rng)
    return json.dumps(arguments, separators=(",", ":"))


def _value_for(schema: Mapping[str, Any], rng: random.Random) -> Any:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kind = next((k for k in kind if k != "null"), None)
    if kind == "string":
        return rng.choice(VOCABULARY)
    if kind in ("integer", "number"):
        return INTEGER_ARGUMENT
    if kind == "boolean":
        return True
    return None


def split_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """``text`` cut into pieces of ``size`` characters (at least one piece)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [text]
