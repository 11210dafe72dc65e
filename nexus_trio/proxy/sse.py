"""Incremental Server-Sent Events parsing that keeps the upstream's bytes.

The proxy relays an upstream stream without re-framing it, yet must always
know where the stream stands: which bytes form whole events (only those may
reach the client, so a failure never leaves half an event on the wire), when
``data: [DONE]`` arrived, and whether an event is an in-band error.

Framing follows the WHATWG HTML standard, section 9.2.6 ("Interpreting an
event stream"): lines end in CRLF, LF or CR; an empty line ends an event;
lines starting with ``:`` are comments; ``data`` lines of one event are joined
with LF. Events can span reads and one read can hold many events.

The events Nexus writes itself (a rewritten chunk, the closing ``[DONE]``, a
comment, an error) are encoded here too, and only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nexus_trio import jsonparse

__all__ = [
    "DONE",
    "DONE_EVENT",
    "SSEEvent",
    "SSEParser",
    "comment_event",
    "data_event",
    "named_event",
]

DONE = "[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
_BOM = b"\xef\xbb\xbf"


def data_event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event carrying ``payload`` as JSON (UTF-8, one line)."""
    return b"data: " + jsonparse.dumps(payload) + b"\n\n"


def named_event(name: str, payload: dict[str, Any]) -> bytes:
    """One event with an ``event:`` line: APIs whose clients dispatch on the event's name
    (Anthropic's SDKs drop a ``data:``-only event)."""
    return b"event: " + name.encode() + b"\ndata: " + jsonparse.dumps(payload) + b"\n\n"


def comment_event(text: str) -> bytes:
    """An SSE comment: clients and SDKs skip it, people reading the wire see it."""
    return b": " + text.replace("\n", " ").replace("\r", " ").encode() + b"\n\n"


_UNPARSED: Any = object()


@dataclass(slots=True)
class SSEEvent:
    """One complete event, with the exact bytes it was framed in."""

    raw: bytes
    data: str | None  # None for an event with no data lines (comment-only, keep-alive)
    event: str | None = None
    _parsed: Any = field(default=_UNPARSED, repr=False, compare=False)

    @property
    def is_done(self) -> bool:
        return self.data == DONE

    def parsed(self) -> Any:
        """The data as JSON, parsed once however often it is asked for (the first-token
        check and the tracker both read it).

        Raises:
            ValueError: the data is not JSON.
        """
        if self._parsed is _UNPARSED:
            self._parsed = jsonparse.loads(self.data or "")
        return self._parsed


class SSEParser:
    """Feed it reads; it returns the events those reads completed.

    >>> parser = SSEParser()
    >>> parser.feed(b'data: {"a"')
    []
    >>> [e.data for e in parser.feed(b': 1}\\n\\ndata: [DONE]\\n\\n')]
    ['{"a": 1}', '[DONE]']
    """

    __slots__ = ("_buffer", "_data", "_event", "_event_start", "_scan", "_started")

    def __init__(self) -> None:
        self._started = False  # past a possible byte order mark
        self._buffer = bytearray()
        self._scan = 0  # where the next unread line starts in _buffer
        self._event_start = 0  # where the event being read starts in _buffer
        self._data: list[str] = []
        self._event: str | None = None

    @property
    def pending(self) -> bytes:
        """Bytes received that do not yet form a whole event."""
        return bytes(self._buffer[self._event_start :])

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Take one read; return every event it completed, in order."""
        buffer = self._buffer
        buffer += chunk
        if not self._started:
            # The standard says to ignore one leading UTF-8 byte order mark.
            if len(buffer) < 3 and _BOM.startswith(bytes(buffer)):
                return []
            if buffer.startswith(_BOM):
                del buffer[:3]
            self._started = True
        events: list[SSEEvent] = []
        scan = self._scan
        end = len(buffer)
        while scan < end:
            lf = buffer.find(b"\n", scan)
            cr = buffer.find(b"\r", scan, lf if lf >= 0 else end)
            if cr >= 0:
                if cr + 1 == end:
                    break  # a lone CR at the end may be the first half of CRLF
                line_end = cr
                next_line = cr + 2 if buffer[cr + 1] == 0x0A else cr + 1
            elif lf >= 0:
                line_end, next_line = lf, lf + 1
            else:
                break
            if line_end == scan:
                if self._data or self._event is not None or scan > self._event_start:
                    events.append(self._dispatch(bytes(buffer[self._event_start : next_line])))
                self._event_start = next_line
            else:
                self._field(bytes(buffer[scan:line_end]))
            scan = next_line
        # Drop what has been dispatched so the buffer never grows with the stream.
        if self._event_start:
            del buffer[: self._event_start]
            scan -= self._event_start
            self._event_start = 0
        self._scan = scan
        return events

    def _field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" starts a comment
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # "id" and "retry" are legal but nothing downstream needs them.

    def _dispatch(self, raw: bytes) -> SSEEvent:
        data = "\n".join(self._data) if self._data else None
        event = SSEEvent(raw=raw, data=data, event=self._event)
        self._data = []
        self._event = None
        return event
