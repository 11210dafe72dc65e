"""Tool-call ids between a backend and an Anthropic client, reversibly and statelessly (pure).

Anthropic accepts only ids matching ``^[a-zA-Z0-9_-]+$`` (a client such as Claude Code
replays them, and a stricter server rejects the rest), while backends emit ids such as
``functions.Bash:0`` (Kimi K2 through vLLM or SGLang). Rewriting them one way
(``functions_Bash_0``) broke models whose chat templates parse their own ids
(LiteLLM #32214), and Mistral's tokenizer rejects ids it did not produce (vLLM
#38738): the backend must get back exactly the id it gave.

So the id a client sees is a pure function of the backend's id, and the backend's id a
pure function of the client's: no table to keep, so it holds across requests, restarts
and instances. An id that is already safe passes unchanged (the common case: ``call_…``,
``toolu_…``, Ollama's and llama.cpp's ids); any other is written as `ESCAPE` followed by
its UTF-8 bytes in unpadded base64url, whose alphabet is exactly Anthropic's. A safe id
that happens to begin with `ESCAPE` is escaped too, so that decoding is never ambiguous.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid

__all__ = ["ESCAPE", "client_tool_id", "generated_tool_id", "upstream_tool_id"]

ESCAPE = "nxid-"
_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def client_tool_id(upstream: str) -> str:
    """The id to show an Anthropic client for the backend's tool-call id ``upstream``.

    Example::

        client_tool_id("call_1") == "call_1"
        client_tool_id("functions.Bash:0") == "nxid-ZnVuY3Rpb25zLkJhc2g6MA"
    """
    if _SAFE.fullmatch(upstream) and not upstream.startswith(ESCAPE):
        return upstream
    # surrogatepass: a lone surrogate that came through JSON survives the round trip.
    raw = upstream.encode("utf-8", "surrogatepass")
    return ESCAPE + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def upstream_tool_id(client: str) -> str:
    """The backend's own id for an id a client sends back (`client_tool_id` undone).

    An id Nexus did not escape (a client's own, or a generated one) goes as it came.
    """
    if not client.startswith(ESCAPE):
        return client
    encoded = client[len(ESCAPE) :]
    if encoded and not _SAFE.fullmatch(encoded):
        return client
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        return raw.decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):  # not one of ours after all
        return client


def generated_tool_id() -> str:
    """An id for a tool call whose backend gave none (Anthropic's own ``toolu_`` form)."""
    return "toolu_" + uuid.uuid4().hex[:24]
