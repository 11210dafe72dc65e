"""The Anthropic Messages and OpenAI Responses APIs through Nexus, in front of real
llama.cpp servers: each gives the text the same conversation gets over chat completions.

Nexus asks the backend in chat completions whatever the client spoke, so with greedy
decoding the words must be the same; the official SDKs are the clients.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from harness import ALIAS, LlamaServer, NexusProcess, config_for, sdk

SYSTEM = "You are a concise assistant."
QUESTION = "Name three colours of the sea, in one sentence."
MAX_TOKENS = 60


@pytest.fixture
def chat_answer(llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any) -> tuple[str, Any]:
    """The chat-completions answer through Nexus, and that Nexus."""
    nexus: NexusProcess = start_nexus(
        config_for(*llamas) + f'[routing.aliases]\n"claude-*" = "{ALIAS}"\n'
    )
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    with sdk(nexus.url) as client:
        completion = client.chat.completions.create(
            model=ALIAS, messages=messages, temperature=0, max_tokens=MAX_TOKENS
        )
    text = completion.choices[0].message.content or ""
    assert len(text.split()) > 3
    return text, nexus


def test_anthropic_messages_give_the_chat_answer(chat_answer: tuple[str, Any]) -> None:
    expected, nexus = chat_answer
    client = anthropic.Anthropic(base_url=nexus.url, api_key="any", max_retries=0, timeout=60)
    with client:
        request: dict[str, Any] = {
            "model": "claude-sonnet-4-5",  # served through the "claude-*" pattern alias
            "system": SYSTEM,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": MAX_TOKENS,
            # This SDK no longer offers temperature as an argument; the API still takes it.
            "extra_body": {"temperature": 0},
        }
        message = client.messages.create(**request)
        assert "".join(b.text for b in message.content if b.type == "text") == expected
        assert message.model == "claude-sonnet-4-5"
        assert message.usage.output_tokens > 0
        with client.messages.stream(**request) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert streamed == expected
        assert final.stop_reason in ("end_turn", "max_tokens")


def test_openai_responses_give_the_chat_answer(chat_answer: tuple[str, Any]) -> None:
    expected, nexus = chat_answer
    with sdk(nexus.url) as client:
        request: dict[str, Any] = {
            "model": ALIAS,
            "instructions": SYSTEM,
            "input": QUESTION,
            "max_output_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        response = client.responses.create(**request)
        assert response.output_text == expected
        usage = response.usage
        assert usage is not None
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
        streamed = ""
        with client.responses.stream(**request) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    streamed += event.delta
            final = stream.get_final_response()
        assert streamed == expected == final.output_text
