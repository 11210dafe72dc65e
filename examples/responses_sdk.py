"""The official OpenAI SDK's Responses API against Nexus, with a follow-up turn.

Run `nexus serve --demo` first, then `python examples/responses_sdk.py`.
"""

from openai import OpenAI

client = OpenAI(base_url="http://localhost:8000/v1", api_key="not-needed")

first = client.responses.create(model="llama3:8b", input="Name a river.")
print(first.output_text)

# Nexus keeps recent responses (server.responses_kept), so a follow-up can point at one.
second = client.responses.create(
    model="llama3:8b", input="And a mountain?", previous_response_id=first.id
)
print(second.output_text)

with client.responses.stream(model="llama3:8b", input="Count to five.") as stream:
    for event in stream:
        if event.type == "response.output_text.delta":
            print(event.delta, end="", flush=True)
print()
