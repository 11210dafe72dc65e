"""The answers of ``/v1/responses`` Nexus keeps, for ``previous_response_id`` and
``GET /v1/responses/{id}``: the most recent ones, in memory, a bounded number
(``server.responses_kept``), the least recently used evicted first.

A kept response holds the Response object as the client received it and the whole
conversation it ended with, as chat messages: what was sent upstream (without the
``instructions``, which OpenAI does not carry over to the next response) and the
answer. A request naming it as ``previous_response_id`` continues that conversation.

Messages are shared, never copied: the conversation of a follow-up is a new tuple of
references to the same message objects, so a chain of turns costs memory for its
messages once, plus a pointer per message per kept response. Nothing here is written to
disk, and nothing survives a restart (a client then gets a 404 and sends the whole
conversation, as with an evicted response).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nexus_trio.errors import ResponseNotKept

__all__ = ["KeptResponse", "ResponseStore"]

# The setting that bounds the store, for the error that tells how to change it.


@dataclass(frozen=True, slots=True)
class KeptResponse:
    """One kept answer. Treat both as read-only: they are shared with later turns."""

    response: dict[str, Any]  # the Response object (``object: "response"``)
    conversation: tuple[dict[str, Any], ...]  # chat messages, the answer last


class ResponseStore:
    """The last ``capacity`` kept responses by id, least recently used evicted first.

    Example::

        store = ResponseStore(1000)
        store.keep("resp_1", KeptResponse(response, conversation))
        store.get("resp_1").conversation
    """

    __slots__ = ("_kept", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._kept: OrderedDict[str, KeptResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, response_id: str, kept: KeptResponse) -> None:
        """Keep ``kept`` under ``response_id``, evicting the least recently used beyond
        the capacity."""
        if self.capacity <= 0:
            return
        self._kept[response_id] = kept
        self._kept.move_to_end(response_id)
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)

    def get(self, response_id: str) -> KeptResponse | None:
        """The kept response (now the most recently used), or None."""
        kept = self._kept.get(response_id)
        if kept is not None:
            self._kept.move_to_end(response_id)
        return kept

    def require(self, response_id: str, *, param: str | None = None) -> KeptResponse:
        """`get`, or the 404 that says why there is none.

        Raises:
            ResponseNotKept: no response of that id is kept.
        """
        kept = self.get(response_id)
        if kept is None:
            raise ResponseNotKept(response_id, self.capacity, param=param)
        return kept

    def delete(self, response_id: str) -> bool:
        """Forget a response; whether it was kept."""
        return self._kept.pop(response_id, None) is not None
