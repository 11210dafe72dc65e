"""SSE parsing: however the network cuts a stream into reads, the proxy sees the same
events, each with the exact bytes it came in, and never half an event."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_trio.proxy.sse import SSEEvent, SSEParser

PROPERTY = settings(max_examples=200, deadline=None)


@dataclass(frozen=True)
class Expected:
    raw: bytes
    data: str | None
    event: str | None
    end: int  # offset in the stream just after the event's blank line


@dataclass(frozen=True)
class Stream:
    body: bytes
    newline: bytes
    events: tuple[Expected, ...]

    def completed_by(self, offset: int) -> list[Expected]:
        """The events a parser that has read ``body[:offset]`` can know are whole.

        After a CR the parser must see the next byte, which may be the LF of a CRLF
        belonging to the same line break, before it can frame what came before.
        """
        lag = 1 if self.newline == b"\r" else 0
        return [e for e in self.events if e.end + lag <= offset]


# -- streams ------------------------------------------------------------------------------------

line_text = st.text(st.characters(exclude_characters="\r\n", codec="utf-8"), max_size=20)
values = line_text | st.just("[DONE]") | st.just('{"choices":[{"delta":{"content":"hé 🦙"}}]}')
# (kind, value the parser should read, the line as sent)
field_lines = st.one_of(
    values.map(lambda v: ("data", v, "data: " + v)),
    values.filter(lambda v: not v.startswith(" ")).map(lambda v: ("data", v, "data:" + v)),
    st.just(("data", "", "data")),  # a field name alone: an empty value
    line_text.map(lambda v: ("event", v, "event: " + v)),
    line_text.map(lambda v: ("comment", v, ":" + v)),
    st.just(("id", "7", "id: 7")),
    st.just(("retry", "1000", "retry: 1000")),
)
events = st.tuples(st.integers(0, 2), st.lists(field_lines, min_size=1, max_size=4))


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    body = b""
    expected = []
    for padding, lines in draw(st.lists(events, max_size=5)):
        body += newline * padding  # blank lines between events dispatch nothing
        raw = b"".join(line.encode() + newline for _, _, line in lines) + newline
        body += raw
        data = [value for kind, value, _ in lines if kind == "data"]
        names = [value for kind, value, _ in lines if kind == "event"]
        expected.append(
            Expected(raw, "\n".join(data) if data else None, names[-1] if names else None,
                     len(body))
        )  # fmt: skip
    body += newline * draw(st.integers(0, 2))
    return Stream(body, newline, tuple(expected))


@st.composite
def cuts(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """``body`` split at random points into reads (some of them empty)."""
    points = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
    bounds = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


def seen(events: list[SSEEvent]) -> list[tuple[bytes, str | None, str | None]]:
    return [(e.raw, e.data, e.event) for e in events]


def wanted(expected: list[Expected]) -> list[tuple[bytes, str | None, str | None]]:
    return [(e.raw, e.data, e.event) for e in expected]


# -- properties ---------------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), stream=streams())
def test_any_split_into_reads_gives_the_same_events(data: st.DataObject, stream: Stream) -> None:
    whole = SSEParser()
    at_once = whole.feed(stream.body)
    assert seen(at_once) == wanted(stream.completed_by(len(stream.body)))

    parser = SSEParser()
    got: list[SSEEvent] = []
    for read in data.draw(cuts(stream.body)):
        got += parser.feed(read)
    assert seen(got) == seen(at_once)
    assert parser.pending == whole.pending


@PROPERTY
@given(data=st.data(), stream=streams())
def test_only_whole_events_come_out_and_pending_holds_the_rest(
    data: st.DataObject, stream: Stream
) -> None:
    parser = SSEParser()
    got: list[SSEEvent] = []
    offset = 0
    for read in data.draw(cuts(stream.body)):
        got += parser.feed(read)
        offset += len(read)
        done = stream.completed_by(offset)
        assert seen(got) == wanted(done)
        # What is pending is the read tail after the last whole event, less blank lines.
        tail = stream.body[done[-1].end if done else 0 : offset]
        assert tail.endswith(parser.pending)
        assert tail[: len(tail) - len(parser.pending)].strip(b"\r\n") == b""
    # Whole events are the stream byte for byte, less only the blank lines between them.
    padding_free = b"".join(e.raw for e in stream.completed_by(len(stream.body)))
    assert b"".join(e.raw for e in got) == padding_free


# -- examples -----------------------------------------------------------------------------------


def test_a_partial_event_waits_in_pending() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a"') == []
    assert parser.pending == b'data: {"a"'
    assert parser.feed(b": 1}\n") == []
    assert parser.pending == b'data: {"a": 1}\n'
    (event,) = parser.feed(b"\ndata: [DO")
    assert event.data == '{"a": 1}'
    assert event.raw == b'data: {"a": 1}\n\n'
    assert not event.is_done
    assert parser.pending == b"data: [DO"
    (done,) = parser.feed(b"NE]\n\n")
    assert done.is_done
    assert parser.pending == b""


def test_many_events_in_one_read() -> None:
    body = b"data: 1\n\n: keep-alive\n\nevent: ping\ndata: 2\ndata: 3\n\ndata: [DONE]\n\n"
    events = SSEParser().feed(body)
    assert [(e.data, e.event) for e in events] == [
        ("1", None),
        (None, None),  # a comment alone: relayed, but carries no data
        ("2\n3", "ping"),
        ("[DONE]", None),
    ]
    assert [e.is_done for e in events] == [False, False, False, True]
    assert b"".join(e.raw for e in events) == body


def test_done_needs_exactly_done() -> None:
    (event,) = SSEParser().feed(b"data:[DONE]\n\n")
    assert event.is_done
    for body in (b"data: [DONE] \n\n", b"data: done\n\n", b": [DONE]\n\n"):
        (event,) = SSEParser().feed(body)
        assert not event.is_done, body


def test_crlf_split_between_reads_is_one_line_break() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == []
    (event,) = parser.feed(b"\ndata: b\r\n\r\n")[:1]
    assert event.raw == b"data: a\r\n\r\n"
    assert event.data == "a"
    assert parser.pending == b""


def test_a_cr_alone_ends_a_line_once_the_next_byte_shows_it() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == []  # the second CR may yet be half of a CRLF
    (event,) = parser.feed(b"data: b\r")
    assert event.raw == b"data: a\r\r"
    assert parser.pending == b"data: b\r"


def test_multibyte_characters_split_across_reads() -> None:
    body = "data: naïve 日本語 🦙\n\n".encode()
    parser = SSEParser()
    events = [e for i in range(len(body)) for e in parser.feed(body[i : i + 1])]
    assert [e.data for e in events] == ["naïve 日本語 🦙"]


def test_dispatched_bytes_are_not_kept() -> None:
    parser = SSEParser()
    for _ in range(1000):
        parser.feed(b"data: " + b"x" * 100 + b"\n\n")
    assert parser.pending == b""
    parser.feed(b"data: partial")
    assert parser.pending == b"data: partial"


def test_a_leading_byte_order_mark_is_ignored() -> None:
    (event,) = SSEParser().feed(b"\xef\xbb\xbfdata: hello\n\n")
    assert event.data == "hello"
