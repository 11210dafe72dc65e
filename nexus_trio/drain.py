"""The requests in flight, and how a shutdown drains them.

On a shutdown Nexus refuses new chat requests (503, ``Retry-After``, code
``shutting_down``), gives those in flight ``server.shutdown_grace_seconds`` to
finish, then cuts the rest; a cut request ends its own response with one
error, never mid-event.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import trio

__all__ = ["Drain", "InFlight"]


class InFlight:
    """One request's work, as a context manager: a cancel scope the drain may cut.

    Entering registers it with its `Drain`, leaving unregisters it. ``cut`` is
    the shutdown marker: set when the drain cancelled it, so the handler can
    tell "Nexus is shutting down" from "the client went away".
    """

    __slots__ = ("_drain", "cut", "finished", "scope")

    def __init__(self, drain: Drain) -> None:
        self._drain = drain
        self.scope = trio.CancelScope()
        self.cut = False
        self.finished = trio.Event()

    def __enter__(self) -> Self:
        self._drain._requests.add(self)
        self.scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        try:
            return self.scope.__exit__(exc_type, exc_value, traceback)
        finally:
            self._drain._requests.discard(self)
            self.finished.set()


class Drain:
    """The requests in flight, and the graceful drain of them on shutdown.

    A request handler runs its work inside ``with drain.track() as work:`` and
    refuses new work once `draining` is set. If ``work.cut`` is set afterwards
    (or in a ``finally``, when a second signal cancels everything around it), the
    shutdown cancelled it, and the handler ends its response with an error of
    its own.

    Example::

        work = gateway.drain.track()
        try:
            with work:
                await serve_one_request()
        finally:
            if work.cut:
                with trio.move_on_after(2, shield=True):
                    await send_shutdown_error()
    """

    # How long cut requests get to write their last event and end (each bounds its
    # own write; this also covers closing its upstream response).
    CUT_SECONDS = 5.0

    def __init__(self) -> None:
        self._requests: set[InFlight] = set()
        # Set when the drain begins: long-lived connections (the dashboard's
        # WebSockets) close then, rather than hold the shutdown up.
        self.began = trio.Event()

    @property
    def draining(self) -> bool:
        """New requests get a 503."""
        return self.began.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._requests)

    def track(self) -> InFlight:
        """One request's work; registered while its ``with`` block runs."""
        return InFlight(self)

    def cut(self) -> int:
        """Refuse new requests and cancel those in flight, now; how many were cut."""
        self.began.set()
        cut = 0
        for work in self._requests:
            if not work.cut:
                # The flag is the shutdown marker (``cancel(reason=...)`` needs trio 0.31;
                # pyproject allows 0.27).
                work.cut = True
                work.scope.cancel()
                cut += 1
        return cut

    async def drain(self, grace_seconds: float) -> int:
        """Refuse new requests; give those in flight ``grace_seconds``; cut the rest.

        Waits for the requests in flight when it starts (those that arrive later
        are refused at once), then cuts whatever is still running and waits up to
        `CUT_SECONDS` for those to end their responses. Returns how many it cut.
        """
        self.began.set()
        with trio.move_on_after(grace_seconds):
            for work in list(self._requests):
                await work.finished.wait()
        remaining = list(self._requests)
        cut = self.cut()
        with trio.move_on_after(self.CUT_SECONDS):
            for work in remaining:
                await work.finished.wait()
        return cut
