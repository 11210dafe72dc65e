"""The registry: the one owner of what Nexus knows about its fleet.

Backends, the models each serves, their health and their load live here and
nowhere else. Only trio tasks mutate it (threads hand their findings over
through trio channels first), and every change is published as an event so the
dashboard, metrics and logs can follow without polling.

Reads are cheap on purpose: routing takes ``registry.backends`` (a tuple that
is replaced, never mutated in place, when the fleet changes) and reads each
backend's fields directly.

Two gates keep a backend out of rotation, and it is routable only when both are
open:

- its **health**, which active probes decide (`Registry.record_probe`, run by
  `nexus_trio.health`): ``failure_threshold`` failed probes in a row close it,
  ``recovery_threshold`` good ones open it again;
- its **ejection**, the passive breaker, which real requests decide: a request
  that fails ejects the backend (`Registry.eject`) for
  ``health_check.ejection_base_seconds``, doubled at each ejection in a row up
  to ``ejection_max_seconds``, whatever its probes say meanwhile; a run of
  `RESET_AFTER_SERVED` requests served (`Registry.request_succeeded`) starts the
  doubling over. `Registry.run_ejections` ends each ejection at its time.

Probes alone cannot tell a server whose health endpoint answers while its chat
fails; the doubling is what keeps such a backend from getting a request every
time its last ejection ends (the model is Envoy's outlier detection, whose
ejection time grows with each ejection in a row).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal
from urllib.parse import urlsplit

import trio

from nexus_trio.aging import AgingTable
from nexus_trio.config import (
    AffinitySettings,
    BackendSettings,
    BackendType,
    HealthCheckSettings,
    ModelOverride,
    Zone,
)
from nexus_trio.errors import BackendError, BackendStatus

__all__ = [
    "RESET_AFTER_SERVED",
    "SOURCE_PRECEDENCE",
    "Backend",
    "Capability",
    "Checkup",
    "EngineReport",
    "Health",
    "LoadedModel",
    "ModelInfo",
    "Registry",
    "RegistryEvent",
    "Roster",
    "Secret",
    "Slot",
    "Source",
    "default_zone",
    "endpoint_of",
]

# Where a backend is known from. Several sources may know the same server; the
# first of them in this order names it and sets its priority.
Source = Literal["config", "admin", "demo", "mdns", "probe"]
SOURCE_PRECEDENCE: tuple[Source, ...] = ("config", "admin", "demo", "mdns", "probe")

log = logging.getLogger("nexus.registry")

# Smoothing factor for the time-to-first-token average: a new sample moves it
# a fifth of the way, so one slow answer does not bury a fast backend.
EWMA_ALPHA = 0.2

# Requests served in a row after which a backend's past ejections are forgiven: its
# next ejection lasts the base time again. Long enough that a backend failing one
# request in two or three (flaky under load, or crashing on some prompts) keeps
# doubling its way out of rotation; short enough that one that has recovered is
# trusted again after a handful of answers, even at low traffic. A guess, not a
# measurement: Envoy instead takes one step off its multiplier per interval spent
# in rotation, which needs no traffic but trusts an idle backend just as well.
RESET_AFTER_SERVED = 5
# Beyond this many ejections in a row the doubling is past any sane cap; the exponent
# stops here so the arithmetic never overflows.
_MAX_DOUBLINGS = 64


class Health(StrEnum):
    UNKNOWN = "unknown"  # not checked yet: routable, so a fresh backend serves at once
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Capability(StrEnum):
    VISION = "vision"
    TOOLS = "tools"
    JSON = "json"
    INSERT = "insert"  # fill in the middle (Ollama's name)
    # Ollama's names too. A model whose known capabilities have EMBEDDING and not
    # COMPLETION is embedding-only (`ModelInfo.embeds_only`): it takes no chat.
    COMPLETION = "completion"
    EMBEDDING = "embedding"


class Secret(str):
    """A string whose repr never shows it (backend API keys)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('********')"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a backend told us about one model; ``None`` means it did not say."""

    id: str
    owned_by: str = "nexus"
    context_length: int | None = None
    capabilities: frozenset[Capability] | None = None

    def with_override(self, override: ModelOverride | None) -> ModelInfo:
        if override is None:
            return self
        caps = self.capabilities
        if override.capabilities is not None:
            caps = frozenset(Capability(c) for c in override.capabilities)
        return ModelInfo(
            self.id,
            self.owned_by,
            override.context_length or self.context_length,
            caps,
        )

    def supports(self, capability: Capability) -> bool:
        """Unknown capabilities count as supported: the backend will say no if not."""
        return self.capabilities is None or capability in self.capabilities

    @property
    def embeds_only(self) -> bool:
        """Known to be an embedding model that cannot generate (chat, completions)."""
        caps = self.capabilities
        return (
            caps is not None and Capability.EMBEDDING in caps and Capability.COMPLETION not in caps
        )


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model a server holds in memory now (Ollama ``/api/ps``, LM Studio
    ``/api/v0/models``): a request for it starts without loading it first."""

    name: str
    expires_at: float | None = None  # time.time() when the server unloads it if unused
    size_bytes: int | None = None  # the memory it holds


@dataclass(frozen=True, slots=True)
class EngineReport:
    """What a server said of its own load at one read (`nexus_trio.backends.engine`);
    None where it did not say."""

    running: int | None = None  # requests it is generating now
    waiting: int | None = None  # requests queued inside it, not yet started
    kv_cache_usage: float | None = None  # share of its KV cache in use, 0 to 1
    slots: int | None = None  # requests it runs at once (llama.cpp's slots)
    loaded: tuple[LoadedModel, ...] | None = None  # None: it does not tell

    @property
    def warm_models(self) -> frozenset[str] | None:
        return None if self.loaded is None else frozenset(m.name for m in self.loaded)


@dataclass(frozen=True, slots=True)
class Checkup:
    """What one health check of a backend found (`nexus_trio.backends.checkup`)."""

    models: list[ModelInfo]
    slots: int | None = None
    engine: EngineReport | None = None  # where the check read the load too (Ollama's models)


@dataclass(eq=False, slots=True)
class Backend:
    """One inference server and its live state.

    Fields after ``source`` change while Nexus runs; only the registry and the
    tasks it supervises write them.
    """

    name: str
    url: str  # API root without a trailing /v1
    type: BackendType
    priority: int = 1
    max_concurrency: int | None = None
    api_key: Secret | None = field(default=None, repr=False)
    model_overrides: Mapping[str, ModelOverride] = field(default_factory=dict, repr=False)
    sources: set[Source] = field(default_factory=lambda: {"config"})
    models: Mapping[str, ModelInfo] = field(default_factory=dict)
    warm_models: frozenset[str] | None = None  # loaded in memory now (Ollama /api/ps)
    slots: int | None = None  # parallel slots the server reports (llama.cpp /props)
    # What the server last said of its load (`Registry.record_engine_report`), and what
    # routing reads of it: requests it has that Nexus did not send (other clients'), and
    # how many it runs before it queues (inf: unknown, or no limit seen).
    engine: EngineReport | None = None
    engine_others: int = 0
    engine_capacity: float = math.inf
    # When each model was last seen loaded (time.monotonic()), and the memory the
    # loaded models hold: where a cold start goes (`Roster.of`).
    last_warm: dict[str, float] = field(default_factory=dict, repr=False)
    memory_in_use: int | None = None
    first_token_seconds: float | None = None  # overrides of routing.timeouts
    stream_idle_seconds: float | None = None
    zone: Zone = Zone.LOCAL  # cloud backends never serve work that must stay local
    price_input_per_mtok: float = 0.0  # USD per million prompt tokens
    price_output_per_mtok: float = 0.0  # USD per million completion tokens
    health: Health = Health.UNKNOWN
    health_detail: str = ""
    in_flight: int = 0  # requests sent and not yet over; changed by `Slot` only
    ttft_ewma_seconds: float | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    # Times a gate that kept it out opened again: its health recovered, or its ejection
    # ended. A request retries a backend that failed it only once this has grown.
    returns: int = 0
    last_checked: float | None = None  # time.time() of the last probe
    recovery_wanted: trio.Event = field(default_factory=trio.Event, repr=False)
    # The passive breaker (`Registry.eject`). While ``ejected_until`` is set (a
    # trio.current_time()), the backend is out of rotation whatever its probes say.
    ejected_until: float | None = None
    ejection_reason: str = ""
    ejections: int = 0  # in a row, not yet forgiven: the next lasts base * 2**ejections
    served_in_a_row: int = 0  # real requests served since one last failed
    ejection_began: trio.Event = field(default_factory=trio.Event, repr=False)

    @classmethod
    def from_settings(cls, settings: BackendSettings, environ: Mapping[str, str]) -> Backend:
        key = settings.read_api_key(environ)
        return cls(
            name=settings.name,
            url=api_root(settings.url),
            type=settings.type,
            priority=settings.priority,
            max_concurrency=settings.max_concurrency,
            api_key=Secret(key) if key else None,
            model_overrides=settings.models,
            first_token_seconds=settings.first_token_seconds,
            stream_idle_seconds=settings.stream_idle_seconds,
            zone=settings.zone or default_zone(settings.type),
            price_input_per_mtok=settings.price_input_per_mtok,
            price_output_per_mtok=settings.price_output_per_mtok,
        )

    @property
    def source(self) -> Source | None:
        """The source that names this backend (see `SOURCE_PRECEDENCE`); None once every
        source has said goodbye."""
        return next((s for s in SOURCE_PRECEDENCE if s in self.sources), None)

    @property
    def endpoint(self) -> tuple[str, int]:
        return endpoint_of(self.url)

    @property
    def routable(self) -> bool:
        """In rotation: `available`, and not ejected by the breaker."""
        return self.ejected_until is None and self.available

    @property
    def available(self) -> bool:
        """Could serve as far as its probes and its sources say, ejected or not (what
        routing falls back on when the breaker has ejected every backend of a model)."""
        # No source left means every one said goodbye: out until announced again.
        return self.health is not Health.UNHEALTHY and bool(self.sources)

    @property
    def status(self) -> str:
        """What operators are shown: ``"ejected"`` while the breaker keeps it out, else
        its health (``"healthy"``, ``"unhealthy"``, ``"unknown"``)."""
        return "ejected" if self.ejected_until is not None else self.health.value

    @property
    def status_detail(self) -> str:
        """Why it is in its `status`: the failure that ejected it, else the last probe's word."""
        return self.ejection_reason if self.ejected_until is not None else self.health_detail

    def ejected_seconds_left(self, now: float) -> float | None:
        """Seconds until its ejection ends, as of ``now`` (a trio.current_time()); None
        when it is not ejected."""
        if self.ejected_until is None:
            return None
        return max(0.0, self.ejected_until - now)

    @property
    def busy(self) -> int:
        """Requests the server has: those Nexus sent, and those of other clients that its
        last engine report counted."""
        return self.in_flight + self.engine_others

    @property
    def queueing(self) -> bool:
        """Whether a request sent now would wait inside the server for one to finish: it
        runs as many as it can at once (its slots, or what it ran while others waited)."""
        return self.busy >= self.engine_capacity

    @property
    def load(self) -> float:
        """`busy` relative to capacity: the configured limit, else the server's own slot
        count, else 1."""
        return self.busy / (self.max_concurrency or self.slots or 1)

    def is_warm(self, model: str) -> bool:
        """Whether the model is known to be loaded; unknown counts as warm."""
        return self.warm_models is None or model in self.warm_models

    @property
    def saturated(self) -> bool:
        return self.max_concurrency is not None and self.in_flight >= self.max_concurrency


def default_zone(kind: BackendType) -> Zone:
    """A backend's zone unless configured: hosted APIs (type openai) are cloud; every
    self-hosted server type is local."""
    return Zone.CLOUD if kind is BackendType.OPENAI else Zone.LOCAL


_LOOPBACK = "loopback"


def endpoint_of(url: str) -> tuple[str, int]:
    """(host, port) that identifies a server across sources.

    Loopback addresses (127.0.0.0/8, ::1, localhost) are one host, since they
    reach the same server; names are compared lower-case. Resolving other
    names is the caller's job (it is I/O).
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if host == "localhost":
        return _LOOPBACK, port
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host, port
    if address.is_loopback:
        return _LOOPBACK, port
    return address.compressed, port


def api_root(url: str) -> str:
    """The server's root URL, so that joining ``/v1/...`` never doubles ``/v1``."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


# One backend as routing sees it for one model: the backend, what it said about the model,
# its priority, its coldness (0: the model is loaded, or not known not to be; else its
# place among the cold ones, see `Roster.of`), its capacity (what its load is relative
# to) and its max_concurrency (inf when unlimited). A plain tuple: routing unpacks one for
# every eligible backend of every request.
RosterEntry = tuple[Backend, ModelInfo, int, int, int, float]


def _coldness(serving: list[Backend], model: str) -> dict[str, int]:
    """Each backend's place for a cold start of ``model``: 0 where the model is loaded (or
    not known not to be); among the others, 1 for the best: the one that held the model
    most recently (its files are likely still in the page cache), then the one whose
    loaded models hold the least memory (the most left for this one, on like machines)."""
    cold = [b for b in serving if not b.is_warm(model)]
    cold.sort(
        key=lambda b: (
            -b.last_warm.get(model, -math.inf),
            math.inf if b.memory_in_use is None else b.memory_in_use,
        )
    )
    return {b.name: place for place, b in enumerate(cold, 1)}


@dataclass(frozen=True, slots=True)
class Roster:
    """The backends that list one model, and the facts routing reads about each that
    change only when the fleet does (health, sources, models, what is loaded, slots).

    ``Registry.roster`` keeps one per model until the next such change, so a routing
    decision reads only the load and TTFT of the backends in rotation for the model,
    never the rest of the fleet.
    """

    model: str
    listing: tuple[Backend, ...]  # every backend listing the model, in rotation or not
    # Those in rotation, in fleet order; when the breaker has ejected every one that is
    # available, those (the breaker yields rather than leave the model with nobody).
    ready: tuple[RosterEntry, ...]
    shortest_context: int | None  # the least context length known among ``ready``
    capabilities_known: bool  # some backend in ``ready`` said what the model can do
    # Some backend in ``ready`` has a known point where it queues (`Backend.queueing`);
    # routing skips that test when none has (`Registry` rebuilds rosters when it changes).
    bounded: bool = True

    @classmethod
    def of(cls, backends: Iterable[Backend], model: str) -> Roster:
        listing = tuple(b for b in backends if model in b.models)
        serving = [b for b in listing if b.routable] or [b for b in listing if b.available]
        coldness = _coldness(serving, model)
        ready = tuple(
            (
                b,
                b.models[model],
                b.priority,
                coldness.get(b.name, 0),
                b.max_concurrency or b.slots or 1,
                math.inf if b.max_concurrency is None else b.max_concurrency,
            )
            for b in serving
        )
        contexts = [e[1].context_length for e in ready if e[1].context_length is not None]
        return cls(
            model,
            listing,
            ready,
            min(contexts, default=None),
            any(e[1].capabilities is not None for e in ready),
            any(math.isfinite(b.engine_capacity) for b in serving),
        )


class Slot:
    """One request's hold on a backend: counted in its ``in_flight`` from `Registry.occupy`
    until `release` (or the end of a ``with`` block), once, whatever happens between."""

    __slots__ = ("_backend", "_freed", "_held", "_hook")

    def __init__(
        self,
        backend: Backend,
        freed: trio.lowlevel.ParkingLot,
        hook: Callable[[Backend], None] | None = None,
    ) -> None:
        self._backend = backend
        self._freed = freed
        self._hook = hook
        self._held = True
        backend.in_flight += 1

    def release(self) -> None:
        """Give the slot back (later calls do nothing) and wake whoever waits for one."""
        if self._held:
            self._held = False
            self._backend.in_flight -= 1
            self._freed.unpark_all()
            if self._hook is not None:
                self._hook(self._backend)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


_EJECTED = "ejected"
_ENDED = "ended"


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """A change subscribers hear about: ``kind`` names it, ``backend`` is whose."""

    kind: Literal[
        "backend_added", "backend_removed", "health", "ejection", "models", "sources", "engine"
    ]
    backend: str
    # "health": the new health's value; "ejection": "ejected" or "ended"
    detail: str = ""

    @property
    def may_bring_back(self) -> bool:
        """Whether the change may have put the backend back in rotation: its health turned
        anything but unhealthy, or its ejection ended."""
        if self.kind == "health":
            return self.detail != Health.UNHEALTHY.value
        return self.kind == "ejection" and self.detail == _ENDED


class Registry:
    """Backends by name, their models, health and load; publishes every change.

    ``health_check`` gives the breaker its times (``ejection_base_seconds``,
    ``ejection_max_seconds``); ``affinity`` the bounds of the conversation table
    (`affinity`, which `conversation_served` alone writes); the defaults when None.
    """

    def __init__(
        self,
        backends: Iterable[Backend] = (),
        health_check: HealthCheckSettings | None = None,
        affinity: AffinitySettings | None = None,
    ) -> None:
        breaker = health_check or HealthCheckSettings()
        bounds = affinity or AffinitySettings()
        # Which backend served which conversation, per model: routing reads it.
        self.affinity = AgingTable(bounds.max_entries, bounds.max_age_seconds)
        self._ejection_base = breaker.ejection_base_seconds
        self._ejection_max = breaker.ejection_max_seconds
        self._by_name: dict[str, Backend] = {}
        self.backends: tuple[Backend, ...] = ()
        self.started_at = time.monotonic()
        self.rotation = 0  # bumped per routing decision; rotates ties
        self._subscribers: list[trio.MemorySendChannel[RegistryEvent]] = []
        self._rosters: dict[str, Roster] = {}  # by model; emptied by every change
        self._slot_freed = trio.lowlevel.ParkingLot()
        # Told synchronously of every released slot (the queue of waiting requests, which
        # lives above the registry: it sets this, the registry never imports it).
        self.slot_freed_hook: Callable[[Backend], None] | None = None
        self._engine_read = trio.lowlevel.ParkingLot()
        for backend in backends:
            self.add(backend)

    # -- reading -----------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Backend]:
        return iter(self.backends)

    def __len__(self) -> int:
        return len(self.backends)

    def get(self, name: str) -> Backend:
        return self._by_name[name]

    def model_ids(self) -> list[str]:
        """Every model id any backend serves, healthy or not, sorted."""
        return sorted({m for b in self.backends for m in b.models})

    def roster(self, model: str) -> Roster:
        """The backends listing ``model`` as routing reads them; kept until the fleet changes."""
        roster = self._rosters.get(model)
        if roster is None:
            roster = self._rosters[model] = Roster.of(self.backends, model)
        return roster

    def next_turn(self) -> int:
        self.rotation += 1
        return self.rotation

    # -- changing ----------------------------------------------------------------

    def add(self, backend: Backend) -> None:
        if backend.name in self._by_name:
            raise ValueError(f"a backend named {backend.name!r} is already registered")
        self._by_name[backend.name] = backend
        self.backends = (*self.backends, backend)
        self._publish(RegistryEvent("backend_added", backend.name))

    def remove(self, name: str) -> None:
        backend = self._by_name.pop(name)
        self.backends = tuple(b for b in self.backends if b is not backend)
        self._publish(RegistryEvent("backend_removed", name))

    def set_models(self, backend: Backend, models: Iterable[ModelInfo]) -> None:
        listed = {m.id: m.with_override(backend.model_overrides.get(m.id)) for m in models}
        if listed != backend.models:
            backend.models = listed
            self._publish(RegistryEvent("models", backend.name, f"{len(listed)} models"))

    def record_checkup(self, backend: Backend, checkup: Checkup) -> None:
        """Take in what a health check found: models, slots, and the load where it read it."""
        self.set_models(backend, checkup.models)
        if checkup.slots != backend.slots:
            backend.slots = checkup.slots
            self._rosters.clear()  # they hold each backend's capacity
            self._set_engine_capacity(backend)
        if checkup.engine is not None:
            self.record_engine_report(backend, checkup.engine)

    def record_engine_report(
        self, backend: Backend, report: EngineReport | None, in_flight_before: int = 0
    ) -> None:
        """Take in what the server said of its load (None: the read failed, so the last
        report no longer holds); ``in_flight_before``: Nexus's requests in flight there
        when the read was sent. Published as an ``engine`` event when it differs from the
        last one; rosters are built again only when what is loaded changed."""
        was_queueing = backend.queueing
        previous, backend.engine = backend.engine, report
        if report is not None and report.slots is not None and report.slots != backend.slots:
            backend.slots = report.slots  # llama.cpp's /slots counts them as /props does
            self._rosters.clear()  # they hold each backend's capacity
        if report is None or report.running is None:
            backend.engine_others = 0
        else:
            # What it counts beyond Nexus's own requests: other clients' work. The server
            # counted at some moment of the read, so Nexus's own are taken at their most
            # over it: one of them that ended meanwhile is never taken for another client's
            # (which would keep a free server "busy" until the next read).
            outstanding = report.running + (report.waiting or 0)
            ours = max(in_flight_before, backend.in_flight)
            backend.engine_others = max(0, outstanding - ours)
        self._set_engine_capacity(backend)
        loaded = None if report is None else report.loaded
        warm = None if report is None else report.warm_models
        memory = None if loaded is None else sum(m.size_bytes or 0 for m in loaded)
        if warm:
            backend.last_warm.update(dict.fromkeys(warm, time.monotonic()))
        if (warm, memory) != (backend.warm_models, backend.memory_in_use):
            backend.warm_models, backend.memory_in_use = warm, memory
            self._rosters.clear()  # they order by what is loaded
        if report != previous:
            self._publish(RegistryEvent("engine", backend.name), rosters_stale=False)
        if was_queueing and not backend.queueing and self.slot_freed_hook is not None:
            # Its own queue drained (other clients' requests ended): room, as when a slot
            # of Nexus's frees, for whoever waits in Nexus's queue.
            self.slot_freed_hook(backend)
        self._engine_read.unpark_all()

    def _set_engine_capacity(self, backend: Backend) -> None:
        """How many requests the server runs before it queues: its slots (llama.cpp), or
        as many as it was running while others waited (vLLM); else no limit is known."""
        report = backend.engine
        was = backend.engine_capacity
        if backend.slots is not None:
            backend.engine_capacity = backend.slots
        elif report is not None and report.waiting and report.running is not None:
            backend.engine_capacity = report.running
        else:
            backend.engine_capacity = math.inf
        if math.isinf(was) != math.isinf(backend.engine_capacity):
            self._rosters.clear()  # whether they test for queueing at all

    async def wait_engine_read(self) -> None:
        """Block until the next engine report of any backend is taken in."""
        await self._engine_read.park()

    def forget_model(self, backend: Backend, model: str) -> None:
        """The backend said it no longer has this model (a 404 on chat)."""
        if model in backend.models:
            backend.models = {k: v for k, v in backend.models.items() if k != model}
            self._publish(RegistryEvent("models", backend.name, f"lost {model}"))

    def record_probe(
        self,
        backend: Backend,
        ok: bool,
        detail: str = "",
        *,
        failure_threshold: int = 1,
        recovery_threshold: int = 1,
    ) -> None:
        """Fold one active health probe into the backend's state.

        A healthy backend turns unhealthy after ``failure_threshold`` failed
        probes in a row; an unhealthy one recovers after ``recovery_threshold``
        good probes in a row. A backend never checked turns at the first probe.

        While the backend is ejected, one failed probe is enough: a real request
        has just failed and the probe agrees, so there is no flapping to smooth
        over. It then needs its ``recovery_threshold`` good probes as well as the
        end of its ejection to return, so a server that is really down gets no
        real request the moment its ejection ends. Good probes never shorten an
        ejection: a health endpoint that answers says nothing of the chat that
        failed.
        """
        backend.last_checked = time.time()
        if backend.ejected_until is not None:
            failure_threshold = 1
        if ok:
            backend.consecutive_failures = 0
            backend.consecutive_successes += 1
            if backend.health is Health.UNKNOWN or (
                backend.health is Health.UNHEALTHY
                and backend.consecutive_successes >= recovery_threshold
            ):
                self._set_health(backend, Health.HEALTHY, detail)
        else:
            backend.consecutive_successes = 0
            backend.consecutive_failures += 1
            if backend.health is Health.UNKNOWN or (
                backend.health is Health.HEALTHY
                and backend.consecutive_failures >= failure_threshold
            ):
                self._set_health(backend, Health.UNHEALTHY, detail)

    def mark_unhealthy(self, backend: Backend, reason: str) -> None:
        """Out of rotation until its probes bring it back (a source said it is gone):
        ``recovery_threshold`` good probes in a row, which its watcher starts at once.

        Not for failed requests: those `eject` it.
        """
        if backend.health is not Health.UNHEALTHY:
            log.warning("backend %s is out of rotation: %s", backend.name, reason)
        backend.consecutive_successes = 0
        self._set_health(backend, Health.UNHEALTHY, reason)
        backend.recovery_wanted.set()

    def eject(self, backend: Backend, reason: str) -> None:
        """A real request to this backend just failed: out of rotation for a while,
        longer each time.

        The first ejection lasts ``health_check.ejection_base_seconds``; each one after
        it doubles, up to ``ejection_max_seconds``, until `RESET_AFTER_SERVED` requests
        served in a row (`request_succeeded`) start the count over. Until its time is up
        the backend is not routable, whatever its probes say; its health watcher
        probes it meanwhile (see `record_probe`) and `run_ejections` ends it, which is
        published as an ``("ejection", name, "ended")`` event and counted in
        ``returns``.

        A failure while it is already ejected (a request that began before) breaks its
        run of successes but does not extend the ejection or double the next one:
        requests that failed together are one failure.

        Example::

            registry.eject(backend, "HTTP 500 from upstream")  # out for 5 s
            ...                                                # back, fails again
            registry.eject(backend, "HTTP 500 from upstream")  # out for 10 s
        """
        backend.served_in_a_row = 0
        if backend.ejected_until is not None:
            return
        seconds = self.ejection_seconds(backend.ejections)
        backend.ejections += 1
        backend.ejected_until = trio.current_time() + seconds
        backend.ejection_reason = reason
        log.warning(
            "backend %s is ejected for %g s (%d in a row): %s",
            backend.name, seconds, backend.ejections, reason,
        )  # fmt: skip
        self._publish(RegistryEvent("ejection", backend.name, _EJECTED))
        backend.ejection_began.set()
        backend.recovery_wanted.set()  # its watcher probes it on the half-open schedule

    def ejection_seconds(self, ejections: int) -> float:
        """How long an ejection lasts after ``ejections`` in a row not yet forgiven."""
        doubled = self._ejection_base * 2.0 ** min(ejections, _MAX_DOUBLINGS)
        return min(doubled, self._ejection_max)

    async def run_ejections(self, backend: Backend) -> None:
        """End each ejection of ``backend`` when its time is up, until cancelled.

        The backend's health watcher (`nexus_trio.health`) runs this beside its probe
        loop, so it lives exactly as long as the backend is watched.
        """
        while True:
            until = backend.ejected_until
            if until is None:
                await backend.ejection_began.wait()
                backend.ejection_began = trio.Event()
                continue
            await trio.sleep_until(until)
            if backend.ejected_until is not None and backend.ejected_until <= trio.current_time():
                self._end_ejection(backend)

    def _end_ejection(self, backend: Backend) -> None:
        backend.ejected_until = None
        backend.ejection_reason = ""
        backend.returns += 1
        if backend.routable:
            log.info("backend %s is back in rotation after its ejection", backend.name)
        else:
            log.info("backend %s: its ejection is over, yet it stays out", backend.name)
        self._publish(RegistryEvent("ejection", backend.name, _ENDED))

    def set_sources(self, backend: Backend, sources: set[Source]) -> None:
        """Which sources know the backend now (a new one found it, or one said goodbye)."""
        if sources != backend.sources:
            backend.sources = set(sources)
            self._publish(RegistryEvent("sources", backend.name, ",".join(sorted(sources))))

    def revive(self, backend: Backend) -> None:
        """Back in rotation untested (it was announced again); checked at once."""
        backend.consecutive_failures = 0
        self._set_health(backend, Health.UNKNOWN, "")
        backend.recovery_wanted.set()

    def occupy(self, backend: Backend) -> Slot:
        """Count one request in ``backend``'s load until the slot is released. The only
        writer of ``Backend.in_flight``."""
        return Slot(backend, self._slot_freed, self.slot_freed_hook)

    async def wait_slot_freed(self) -> None:
        """Block until some request releases its slot on any backend."""
        await self._slot_freed.park()

    def request_failed(self, backend: Backend, model: str, failure: BackendError) -> None:
        """A request to ``backend`` failed: a 404 means it no longer has the model (the route
        exists on every type Nexus speaks to); anything else ejects it (`eject`)."""
        if isinstance(failure, BackendStatus) and failure.upstream_status == 404:
            self.forget_model(backend, model)
        else:
            self.eject(backend, failure.reason)

    def request_succeeded(self, backend: Backend) -> None:
        """A real request to this backend got its answer to the end. `RESET_AFTER_SERVED`
        in a row forgive its past ejections: the next one lasts the base time again.

        Cheap and silent (no event): it runs for every request served.
        """
        backend.served_in_a_row += 1
        if backend.ejections and backend.served_in_a_row >= RESET_AFTER_SERVED:
            log.info(
                "backend %s served %d requests in a row: its %d ejections are forgiven",
                backend.name, backend.served_in_a_row, backend.ejections,
            )  # fmt: skip
            backend.ejections = 0

    def conversation_served(self, backend: Backend, model: str, keys: Iterable[Hashable]) -> None:
        """``backend`` answered a conversation of ``model`` (as the client named it), known
        by ``keys`` (`nexus_trio.routing.affinity.served_keys`): its next turn prefers this
        backend, whose cache now holds it."""
        self.affinity.set(model, keys, backend.name, trio.current_time())

    def record_ttft(self, backend: Backend, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            return
        previous = backend.ttft_ewma_seconds
        backend.ttft_ewma_seconds = (
            seconds if previous is None else previous + EWMA_ALPHA * (seconds - previous)
        )

    def _set_health(self, backend: Backend, health: Health, detail: str) -> None:
        backend.health_detail = detail
        if backend.health is not health:
            if backend.health is Health.UNHEALTHY:
                backend.returns += 1
            backend.health = health
            self._publish(RegistryEvent("health", backend.name, health.value))

    # -- events ------------------------------------------------------------------

    def subscribe(self, buffer: float = 256) -> trio.MemoryReceiveChannel[RegistryEvent]:
        """A channel of every later change. A subscriber that falls ``buffer``
        events behind is dropped (its channel closes) rather than slowing the
        registry down; ``math.inf`` for one that must see everything."""
        send, receive = trio.open_memory_channel[RegistryEvent](buffer)
        self._subscribers.append(send)
        return receive

    def _publish(self, event: RegistryEvent, *, rosters_stale: bool = True) -> None:
        # Nearly every event is a change rosters depend on; they are built again when read.
        if rosters_stale:
            self._rosters.clear()
        alive = []
        for channel in self._subscribers:
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                channel.close()
                continue
            alive.append(channel)
        self._subscribers = alive
