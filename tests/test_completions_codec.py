"""Legacy completions without sockets (properties): any upstream ``text_completion`` stream,
continued or not, reaches the client well formed with exactly its text; llama.cpp's
``/infill`` stream, however it is cut into reads, becomes OpenAI completion chunks; no
request body makes the parser fail other than with a 400."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nexus_trio.config import BackendType, RoutingSettings
from nexus_trio.dialects.completions import parse_completion_request
from nexus_trio.dialects.completions_writer import CompletionAssembler
from nexus_trio.dialects.infill import INFILL_PATH, InfillParser
from nexus_trio.errors import RequestError
from nexus_trio.proxy.sse import SSEParser
from nexus_trio.proxy.tracker import StreamTracker

pieces = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12)


def chunk(text: str, finish: str | None = None, cid: str = "cmpl-1") -> dict[str, Any]:
    return {"id": cid, "object": "text_completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "text": text, "logprobs": None,
                         "finish_reason": finish}]}  # fmt: skip


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def upstream(texts: list[str], cid: str, usage: bool) -> bytes:
    out = b"".join(sse(chunk(t, cid=cid)) for t in texts) + sse(chunk("", "stop", cid))
    if usage:
        counts = {"prompt_tokens": 3, "completion_tokens": len(texts), "total_tokens": 3}
        out += sse({"id": cid, "object": "text_completion", "created": 7, "model": "m",
                    "choices": [], "usage": counts})  # fmt: skip
    return out + b"data: [DONE]\n\n"


def client_view(wire: bytes) -> tuple[str, list[str], int, set[str]]:
    """(text, finishes, [DONE]s, ids) of the bytes a client receives; asserts each event
    is a text completion chunk."""
    text, finishes, dones, ids = "", [], 0, set()
    for event in SSEParser().feed(wire):
        assert event.data is not None
        if event.is_done:
            dones += 1
            continue
        assert dones == 0, "nothing after [DONE]"
        parsed = json.loads(event.data)
        assert parsed["object"] == "text_completion"
        ids.add(parsed["id"])
        for choice in parsed["choices"]:
            text += choice["text"]
            if choice["finish_reason"]:
                finishes.append(choice["finish_reason"])
    return text, finishes, dones, ids


@given(pieces, st.integers(min_value=1, max_value=12), st.booleans(), st.booleans())
def test_any_completion_stream_reaches_the_client_whole(
    texts: list[str], cut: int, usage: bool, forward: bool
) -> None:
    """Relayed as it came, or cut after ``cut`` pieces and continued by another backend
    (with its own id): one id, the whole text once, one finish, one [DONE]."""
    tracker = StreamTracker(forward_usage=forward, text_shape=True)
    wire = b""
    assembler = CompletionAssembler()
    cut = min(cut, len(texts))
    first = upstream(texts, "cmpl-a", usage)
    events = SSEParser().feed(first)
    if cut < len(texts):
        events = events[:cut]
    for event in events:
        admitted = tracker.admit(event, "a")
        wire += admitted.relay
        for c in admitted.chunks:
            assembler.add(c)
        if admitted.done:
            break
    if cut < len(texts):
        assert tracker.continuable is None
        tracker.begin_continuation(may_echo=False)
        for event in SSEParser().feed(upstream(texts[cut:], "cmpl-b", usage)):
            admitted = tracker.admit(event, "b")
            wire += admitted.relay
            for c in admitted.chunks:
                assembler.add(c)
            if admitted.done:
                break
    text, finishes, dones, ids = client_view(wire)
    assert text == "".join(texts) == tracker.text
    assert finishes == ["stop"]
    assert dones == 1
    assert ids == {"cmpl-a"}
    whole = assembler.completion(tracker.usage)
    assert whole["choices"][0]["text"] == "".join(texts)
    assert whole["object"] == "text_completion"


@given(
    pieces,
    st.sampled_from(["eos", "word", "limit"]),
    st.lists(st.integers(min_value=1, max_value=40), max_size=30),
)
def test_infill_streams_become_completion_chunks(
    texts: list[str], stop_type: str, cuts: list[int]
) -> None:
    """llama.cpp's own stream, in reads of any size, reads as OpenAI's: the same text, the
    finish (``limit`` is ``length``), the usage, then [DONE]."""
    native = b"".join(
        sse({"index": 0, "content": t, "stop": False, "tokens_predicted": i + 1})
        for i, t in enumerate(texts)
    )
    native += sse({"index": 0, "content": "", "stop": True, "stop_type": stop_type,
                   "tokens_predicted": len(texts), "tokens_evaluated": 5,
                   "timings": {}})  # fmt: skip
    parser = InfillParser("coder")
    events = []
    start = 0
    for size in cuts:
        events += parser.feed(native[start : start + size])
        start += size
    events += parser.feed(native[start:])
    assert events[-1].is_done
    wire = b"".join(e.raw for e in events)
    text, finishes, dones, ids = client_view(wire)
    assert text == "".join(texts)
    assert finishes == ["length" if stop_type == "limit" else "stop"]
    assert dones == 1
    assert len(ids) == 1
    usage = json.loads(events[-2].data or "")["usage"]
    assert usage == {"prompt_tokens": 5, "completion_tokens": len(texts),
                     "total_tokens": 5 + len(texts)}  # fmt: skip
    # What the proxy reads is what goes on the wire.
    assert all(e.parsed() == json.loads(e.data or "") for e in events if not e.is_done)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "model",
                "prompt",
                "suffix",
                "stream",
                "max_tokens",
                "n",
                "echo",
                "stop",
                "stream_options",
                "best_of",
            ]
        ),
        json_values,
    )
)
def test_no_body_breaks_the_parser(body: dict[str, Any]) -> None:
    try:
        request = parse_completion_request(json.dumps(body).encode(), RoutingSettings())
    except RequestError:
        return
    assert request.plan is not None
    assert request.needs.fim == bool(body.get("suffix"))
    for kind in BackendType:
        asked = request.plan.ask("m", kind, None)
        sent = json.loads(asked.body)
        if asked.path == INFILL_PATH:
            assert kind is BackendType.LLAMACPP
            assert sent["input_suffix"] == body["suffix"]
        else:
            assert sent["stream"] is True
            assert "echo" not in sent
            assert ("suffix" in sent) == request.needs.fim
