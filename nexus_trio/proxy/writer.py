"""The seam between the proxy and the client's API: a `Writer` per request.

The proxy always reads the answer as an OpenAI chat stream (`nexus_trio.proxy.tracker`
admits each event); what the client receives is the writer's business. The OpenAI
stream writer passes the backend's bytes through; the OpenAI JSON writer assembles
one completion; a writer for another API translates the same events into its own.
Errors are rendered by the writer too, in its API's shape, before the commit (a
status and a body) or after it (what that API sends mid-answer).

The proxy calls, in order: `Writer.begin` once, at the commit point (a backend has
produced its first token and serves the answer); `Writer.send` per batch of admitted
events; `Writer.note` when a continuation takes over; then exactly one of
`Writer.end`, `Writer.fail` or `Writer.pass_through`. Beside them, from another task, the
request pipeline calls `Writer.keep_alive` every `KEEP_ALIVE_SECONDS` until the request
ends: an API whose clients expect a sign of life
while the answer is prepared (Anthropic's ``ping``) may start its response there; a
writer that writes from both tasks orders its writes itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from nexus_trio.errors import NexusError
from nexus_trio.proxy.tracker import Admitted
from nexus_trio.routing.router import Candidate

__all__ = ["KEEP_ALIVE_SECONDS", "Headers", "WholeAnswer", "Writer", "nexus_headers"]

Headers = list[tuple[str, str]]

# How often a request that no backend has begun to answer yet asks its writer for a sign
# of life (Anthropic's stream sends ``ping`` "while waiting"; clients time out on silence).
KEEP_ALIVE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class WholeAnswer:
    """A backend's own answer, to hand to the client as it is: its refusal of the request
    (a 4xx the next backend would repeat), or a whole JSON body where a stream was asked."""

    candidate: Candidate
    status: int
    content_type: str
    body: bytes


class Writer(Protocol):
    """Writes one client's response in its API's shape (see the module docstring)."""

    @property
    def sent(self) -> bool:
        """Whether any byte of the response has reached the client (after which the
        status can no longer change)."""

    async def begin(self, candidate: Candidate) -> None:
        """The commit point: ``candidate`` serves the answer."""

    async def send(self, batch: Sequence[Admitted]) -> None:
        """More of the answer (events that carry nothing are passed too)."""

    async def keep_alive(self) -> None:
        """Another `KEEP_ALIVE_SECONDS` have passed (writers that have begun, or whose
        API has no sign of life, do nothing)."""

    async def note(self, text: str) -> None:
        """Something people reading the wire may want to know (a continuation began);
        writers whose API has no place for it drop it."""

    async def end(self, usage: Mapping[str, int]) -> None:
        """The answer is complete; ``usage`` sums what every backend reported."""

    async def fail(self, error: NexusError) -> None:
        """The request failed: an error response, or the API's mid-answer error and the
        end of the response once something has been sent."""

    async def pass_through(self, answer: WholeAnswer) -> None:
        """Hand a backend's own answer to the client."""


def nexus_headers(candidate: Candidate, request_id: str, content_type: str) -> Headers:
    """The response headers that say who served: backend, type, why, fallback, request id."""
    headers = [
        ("content-type", content_type),
        ("x-nexus-backend", candidate.backend.name),
        ("x-nexus-backend-type", candidate.backend.type.value),
        ("x-nexus-route-reason", candidate.reason),
        ("x-request-id", request_id),
    ]
    if candidate.fallback_from is not None:
        headers.append(("x-nexus-fallback-model", candidate.model))
    return headers
