"""The APIs at the front door, one codec per API.

A dialect turns a request of its API into the canonical request Nexus routes (an
OpenAI chat completion request, `nexus_trio.routing.requirements.ChatRequest`) and
the upstream answer back into its API's response, through its writers
(`nexus_trio.proxy.writer.Writer`). The pipeline around them is the same for every
API (`nexus_trio.api.frame`).
"""

from nexus_trio.dialects.anthropic import (
    ANTHROPIC,
    parse_count_tokens_request,
    parse_messages_request,
)
from nexus_trio.dialects.anthropic_writer import AnthropicJSONWriter, AnthropicStreamWriter
from nexus_trio.dialects.assembly import ChatAssembler
from nexus_trio.dialects.base import Dialect, Downstream
from nexus_trio.dialects.ollama import parse_ollama_chat, parse_ollama_generate, resolve_model_name
from nexus_trio.dialects.ollama_writer import (
    OllamaJSONWriter,
    OllamaStreamWriter,
    ollama_chat_dialect,
    ollama_generate_dialect,
)
from nexus_trio.dialects.openai_chat import (
    CHAT,
    OpenAIJSONWriter,
    OpenAIStreamWriter,
    parse_chat_request,
)
from nexus_trio.dialects.response_store import ResponseStore
from nexus_trio.dialects.responses import parse_responses_request
from nexus_trio.dialects.responses_writer import (
    ResponsesJSONWriter,
    ResponsesStreamWriter,
    responses_dialect,
)

__all__ = [
    "ANTHROPIC",
    "CHAT",
    "AnthropicJSONWriter",
    "AnthropicStreamWriter",
    "ChatAssembler",
    "Dialect",
    "Downstream",
    "OllamaJSONWriter",
    "OllamaStreamWriter",
    "OpenAIJSONWriter",
    "OpenAIStreamWriter",
    "ResponseStore",
    "ResponsesJSONWriter",
    "ResponsesStreamWriter",
    "ollama_chat_dialect",
    "ollama_generate_dialect",
    "parse_chat_request",
    "parse_count_tokens_request",
    "parse_messages_request",
    "parse_ollama_chat",
    "parse_ollama_generate",
    "parse_responses_request",
    "resolve_model_name",
    "responses_dialect",
]
