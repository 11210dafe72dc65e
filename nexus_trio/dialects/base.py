"""What every dialect provides to the request pipeline (`nexus_trio.api.frame`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nexus_trio import jsonparse
from nexus_trio.config import RoutingSettings
from nexus_trio.errors import RequestError
from nexus_trio.proxy.writer import Headers, Writer
from nexus_trio.routing.requirements import ChatRequest

__all__ = ["Dialect", "Downstream", "load_object"]


class Downstream(Protocol):
    """The client's side of one HTTP response, as writers write it."""

    @property
    def started(self) -> bool:
        """Whether the response head has been sent."""

    async def start(self, status: int, headers: Headers) -> None: ...
    async def send(self, data: bytes) -> None: ...
    async def end(self) -> None:
        """The response is complete; later calls do nothing."""

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response at once, with its Content-Length."""


@dataclass(frozen=True, slots=True)
class Dialect:
    """One API at the front door: how its request bodies become the canonical request,
    and who writes its responses.

    ``writer`` gets the parsed request, or None when there is none (the body did not
    parse, or Nexus refused it first) and only an error will be written. With
    ``keeps_alive``, the pipeline calls the writer's `Writer.keep_alive` while the
    request waits for its answer (an API whose clients expect signs of life); without,
    it spares every request that task.
    """

    api: str  # the API's short name: "chat" (the ``api`` of metrics, logs and history)
    parse: Callable[[bytes, RoutingSettings], ChatRequest]
    writer: Callable[[ChatRequest | None, Downstream, str], Writer]
    keeps_alive: bool = False


def load_object(body: bytes, wanted: str | None = None) -> dict[str, Any]:
    """A request ``body`` as a JSON object, or a `RequestError` that says what is wrong
    and, given ``wanted`` (its required fields, e.g. "'model' and 'messages'"), what to send.
    """
    wants = f" with {wanted}" if wanted else ""
    try:
        payload = jsonparse.loads(body)
    except RecursionError:
        raise RequestError("The request body nests JSON too deeply.") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        hint = f" Send a JSON object{wants}." if wanted else ""
        raise RequestError(f"The request body is not valid JSON ({exc}).{hint}") from None
    if not isinstance(payload, dict):
        raise RequestError(f"The request body must be a JSON object{wants}.")
    return payload
