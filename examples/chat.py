"""Talk to Nexus with the official OpenAI SDK, streaming and not.

nexus serve --demo            # in one terminal
python examples/chat.py       # in another
"""

from __future__ import annotations

import sys

from openai import OpenAI

client = OpenAI(base_url="http://localhost:8000/v1", api_key="not-needed")

print("models:", ", ".join(m.id for m in client.models.list()))

raw = client.chat.completions.with_raw_response.create(
    model="llama3:8b", messages=[{"role": "user", "content": "Hello!"}]
)
print(f"answered by {raw.headers['x-nexus-backend']} ({raw.headers['x-nexus-route-reason']}):")
print(raw.parse().choices[0].message.content)

stream = client.chat.completions.create(
    model="llama3:8b", messages=[{"role": "user", "content": "Tell me more."}], stream=True
)
for chunk in stream:
    for choice in chunk.choices:
        sys.stdout.write(choice.delta.content or "")
        sys.stdout.flush()
print()
