"""The queue of requests waiting for a backend with room, in a fair order.

When every backend that could serve a request is at its ``max_concurrency``, the
request waits here instead of being refused at once. The order is fair in three
ways (`FairOrder`, pure):

- by priority: every ``high`` waiter comes before every ``normal`` one, and those
  before every ``low`` one (a key's priority, `nexus_trio.policy.keys.Caller`);
- round robin between the keys of one priority: the key that had a turn goes to the
  back of its level, so one key's burst of fifty cannot starve another key's single
  request (each key waits for at most one turn of every other key);
- first come, first served within a key.

Waking is driven by slots, never by polling: the registry calls `FairQueue.slot_freed`
synchronously from `nexus_trio.registry.Slot.release`, and the queue wakes the first
waiter in fair order whose request that backend could serve (it lists the waiter's
model). The woken waiter plans its route again; if someone else took the slot in the
meantime (a race), it keeps its place at the head of its key and its key's turn.

Lost wake-ups: a wake is a free slot that one waiter was told about. Until that
waiter has used it, the free slot belongs to its wake (`_Wake`); when the waiter does
not take that backend — it left (cancelled, timed out), its route went elsewhere, or
it found no room — and the backend still has room, the wake passes on to the next
waiter in fair order that has not had it yet. Each wake visits each waiter at most
once, so passing on always ends. Everything here is synchronous apart from the
waiting itself, so between a waiter's planning and its joining the queue no slot can
be freed unseen (trio switches tasks only at checkpoints).

Known gap: only freed slots wake waiters; a busy backend that leaves rotation and
comes back idle (its slots freed while it was out) wakes them at the next freed slot
of any backend serving their model, or they time out.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import trio

from nexus_trio.config import QueueSettings
from nexus_trio.config.schema import Priority
from nexus_trio.errors import QueueFull
from nexus_trio.registry import Backend

__all__ = ["PRIORITIES", "FairOrder", "FairQueue", "Place"]

T = TypeVar("T")

# Served first to last.
PRIORITIES: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)

_GAP = object()  # fills a key's column in `FairOrder.__iter__` once its items run out


class FairOrder(Generic[T]):
    """Waiting items by priority, round robin between keys of a priority, FIFO within a
    key (pure: no time, no trio).

    The fair order (`__iter__`) is: priority by priority, the first item of each key in
    the order of the keys' turns, then the second of each, and so on. Who is served is
    decided by the caller (the first item a freed backend can serve); the caller says
    so with `turn_taken`, which sends the item's key to the back of its priority.

        >>> order = FairOrder[str]()
        >>> for item, key in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")]:
        ...     order.push(item, key, Priority.NORMAL)
        >>> order.push("h1", "h", Priority.HIGH)
        >>> list(order)
        ['h1', 'a1', 'b1', 'a2', 'a3']
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        # Each priority's keys in the order of their turns, each with its items, oldest first.
        self._levels: dict[Priority, OrderedDict[str, deque[T]]] = {
            p: OrderedDict() for p in PRIORITIES
        }
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def depth(self, priority: Priority) -> int:
        """How many items wait at ``priority``."""
        return sum(len(items) for items in self._levels[priority].values())

    def push(self, item: T, key: str, priority: Priority) -> None:
        """Add ``item`` after every other item of ``key``; a key new to its priority
        takes the last turn there."""
        level = self._levels[priority]
        items = level.get(key)
        if items is None:
            items = level[key] = deque()
        items.append(item)
        self._size += 1

    def remove(self, item: T, key: str, priority: Priority) -> None:
        """Take ``item`` out (it was served, or left); a key with no items left gives
        up its place in the turns. Nothing happens if it is not here."""
        level = self._levels[priority]
        items = level.get(key)
        if items is None:
            return
        try:
            items.remove(item)
        except ValueError:
            return
        self._size -= 1
        if not items:
            del level[key]

    def turn_taken(self, key: str, priority: Priority) -> None:
        """``key`` had its turn: it goes to the back of its priority's turns."""
        level = self._levels[priority]
        if key in level:
            level.move_to_end(key)

    def turn_given_back(self, key: str, priority: Priority) -> None:
        """``key``'s turn came to nothing (its item found no room after all): it goes
        back to the front of its priority's turns."""
        level = self._levels[priority]
        if key in level:
            level.move_to_end(key, last=False)

    def __iter__(self) -> Iterator[T]:
        for priority in PRIORITIES:
            level = self._levels[priority]
            if not level:
                continue
            for column in itertools.zip_longest(*level.values(), fillvalue=_GAP):
                for item in column:
                    if item is not _GAP:
                        yield item  # type: ignore[misc]

    def first(self, accept: Callable[[T], bool]) -> T | None:
        """The first item in the fair order that ``accept`` accepts, or None."""
        return next((item for item in self if accept(item)), None)


class _Wake:
    """One freed slot of ``backend``, told to one waiter at a time; ``tried`` are the
    waiters it has been told to (each once), so passing it on ends."""

    __slots__ = ("backend", "tried")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.tried: set[Place] = set()


class Place:
    """A request's place in the queue, from `FairQueue.enter` until its block ends.

    Its owner waits with `wait_woken`, plans its route, and then says how that went:
    `served` (it found room) or `lost_race` (it found none: it waits on, keeping its
    place)."""

    __slots__ = ("_consumed", "_queue", "_woken", "entered_at", "key", "priority", "wake", "wants")

    def __init__(
        self,
        queue: FairQueue,
        key: str,
        priority: Priority,
        wants: Callable[[Backend], bool],
        entered_at: float,
    ) -> None:
        self._queue = queue
        self.key = key
        self.priority = priority
        self.wants = wants
        self.entered_at = entered_at
        self.wake: _Wake | None = None  # the freed slot it was told about, until used
        self._woken = trio.Event()
        self._consumed = False

    async def wait_woken(self) -> None:
        """Block until a backend this request may use frees a slot for it."""
        await self._woken.wait()

    def served(self, backend: Backend) -> None:
        """Its route found room, first on ``backend``: the slot it was woken for is used
        if that is the backend that freed it (else the slot passes on when it leaves)."""
        if self.wake is not None and self.wake.backend is backend:
            self._consumed = True

    def lost_race(self) -> None:
        """Woken, it found no room after all: it waits for the next slot at the head of
        its key, with its key's turn given back; the slot, if still free, passes on."""
        wake, self.wake = self.wake, None
        self._woken = trio.Event()
        self._queue._order.turn_given_back(self.key, self.priority)
        if wake is not None:
            self._queue._pass_on(wake)


class FairQueue:
    """Requests waiting for a backend with room (see the module's docstring).

    ``max_size`` waiters at most (0: no queue at all; callers refuse at once), each for
    at most ``max_wait_seconds`` (the caller's deadline; kept here to be read).
    ``on_depth`` (called with the new depth) and ``on_wait_done`` (with a waiter's
    priority and the seconds it waited) let observers follow it.
    """

    def __init__(self, max_size: int = 1000, max_wait_seconds: float = 30.0) -> None:
        self.max_size = max_size
        self.max_wait_seconds = max_wait_seconds
        self._order: FairOrder[Place] = FairOrder()
        self.on_depth: Callable[[int], None] | None = None
        self.on_wait_done: Callable[[Priority, float], None] | None = None

    @classmethod
    def from_settings(cls, settings: QueueSettings) -> FairQueue:
        return cls(settings.max_size, settings.max_wait_seconds)

    @property
    def enabled(self) -> bool:
        return self.max_size > 0

    def __len__(self) -> int:
        return len(self._order)

    def depth(self, priority: Priority) -> int:
        """Waiters at ``priority``."""
        return self._order.depth(priority)

    def waiting(self) -> list[Place]:
        """Every waiter, in fair order (for tests and views)."""
        return list(self._order)

    @contextmanager
    def enter(
        self, key: str, priority: Priority, wants: Callable[[Backend], bool]
    ) -> Iterator[Place]:
        """Join the queue as ``key`` at ``priority`` until the block ends (served, timed
        out, cancelled: it leaves at once, in ``finally``). ``wants(backend)`` says
        whether a slot freed on ``backend`` may serve this request.

        Synchronous up to the ``yield``: call it right after planning found every backend
        busy, with no checkpoint between, so no freed slot goes unseen.

        Raises:
            QueueFull: ``max_size`` requests wait already.
        """
        if len(self._order) >= self.max_size:
            raise QueueFull(
                f"{len(self._order)} requests are waiting for a backend already (the "
                "queue's max_size); retry shortly.",
                retry_after_seconds=1,
            )
        place = Place(self, key, priority, wants, trio.current_time())
        self._order.push(place, key, priority)
        self._depth_changed()
        try:
            yield place
        finally:
            self._order.remove(place, key, priority)
            wake, place.wake = place.wake, None
            if wake is not None and not place._consumed:
                self._pass_on(wake)
            self._depth_changed()
            if self.on_wait_done is not None:
                self.on_wait_done(priority, trio.current_time() - place.entered_at)

    def slot_freed(self, backend: Backend) -> None:
        """The registry's hook (`nexus_trio.registry.Registry.slot_freed_hook`): a slot of
        ``backend`` is free; wake the first waiter in fair order that it could serve."""
        if self._order and backend.routable:
            self._wake(_Wake(backend))

    def _pass_on(self, wake: _Wake) -> None:
        """The waiter told of ``wake`` did not use it: tell the next one, if the backend
        still has room."""
        if not wake.backend.saturated and wake.backend.routable:
            self._wake(wake)

    def _wake(self, wake: _Wake) -> None:
        tried = wake.tried
        place = self._order.first(
            lambda p: p.wake is None and p not in tried and p.wants(wake.backend)
        )
        if place is None:
            return
        tried.add(place)
        place.wake = wake
        self._order.turn_taken(place.key, place.priority)
        place._woken.set()

    def _depth_changed(self) -> None:
        if self.on_depth is not None:
            self.on_depth(len(self._order))
