"""The official Anthropic SDK against Nexus: Messages API, streamed and not.

Run `nexus serve --demo` first, then `python examples/anthropic_sdk.py`. Any model name a
backend serves works, or a Claude model id mapped by an alias:
`[routing.aliases] "claude-*" = "llama3:8b"`.
"""

import anthropic

client = anthropic.Anthropic(base_url="http://localhost:8000", api_key="not-needed")

message = client.messages.create(
    model="llama3:8b",
    max_tokens=200,
    system="You are terse.",
    messages=[{"role": "user", "content": "Say hello."}],
)
print(message.content[0].text if message.content else "", message.usage)

with client.messages.stream(
    model="llama3:8b", max_tokens=200, messages=[{"role": "user", "content": "Count to five."}]
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
print()
