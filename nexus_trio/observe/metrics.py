"""Prometheus metrics (``GET /metrics``), via prometheus-client.

Request metrics are counted as each request ends; the fleet's gauges are read
from the registry when Prometheus scrapes, so they are never stale and cost
nothing between scrapes: up, in flight, latency, models available, and what each
server last reported of its own load (`nexus_trio.load_watch`): requests running
and waiting, KV cache in use, models held in memory. Each Nexus has its own
collector registry (several may run in one process: tests).

The queue of requests waiting for a backend with room (`nexus_trio.policy.queue`) is
watched too: its depth by priority is read at scrape time, and each request's
wait in it is observed as it leaves.

Label values are bounded: ``model`` is a name some backend serves or the
configuration names (an alias, a fallback), else ``"unknown"`` — never the
client's string — or, for ``nexus_backend_model_loaded``, a model the server
holds in memory; ``backend`` is a backend's name; ``status``, ``type``,
``phase``, ``outcome``, ``state`` and ``priority`` come from fixed sets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from nexus_trio.config.schema import Priority
from nexus_trio.observe.record import RequestRecord
from nexus_trio.policy.queue import PRIORITIES, FairQueue
from nexus_trio.registry import Registry

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
NO_BACKEND = "none"  # the backend label of a request nothing served

# LLM requests run from milliseconds (an error) to minutes (a long answer).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A queued request waits from an instant to [queue] max_wait_seconds (30 s by default).
_QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


class Metrics:
    """Every Nexus metric, and their exposition."""

    def __init__(self, registry: Registry) -> None:
        # The `*_created` series double the exposition and no dashboard reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "nexus_requests",
            "Requests answered, by API, model asked, backend, HTTP status, stream.",
            ["api", "model", "backend", "status", "stream"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "nexus_request_duration_seconds", "Time from request to the end of its answer.",
            ["api", "model", "backend"], buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "nexus_time_to_first_token_seconds", "Time from request to the first token relayed.",
            ["model", "backend"], buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "nexus_tokens", "Tokens the backends reported (type: prompt or completion).",
            ["model", "backend", "type"], registry=r,
        )  # fmt: skip
        self.failovers = Counter(
            "nexus_failovers", "Requests moved from a failed backend to another.",
            ["from_backend", "to_backend", "phase"], registry=r,
        )  # fmt: skip
        self.failed_attempts = Counter(
            "nexus_backend_failures", "Attempts at a backend that failed (any phase).",
            ["backend"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "nexus_fallbacks", "Requests served by a fallback model.",
            ["from_model", "to_model"], registry=r,
        )  # fmt: skip
        self.hedges = Counter(
            "nexus_hedges", "Hedged attempts, by whether the hedge won.", ["outcome"], registry=r
        )
        self.errors = Counter(
            "nexus_errors", "Requests that ended in an error, by its code.", ["type"], registry=r
        )
        self.affinity = Counter(
            "nexus_affinity",
            "Requests routed by conversation affinity: hit (to the backend that served the "
            "conversation), miss (none known), yielded (that backend was out or too loaded).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "nexus_queue_wait_seconds",
            "Time requests waited in the queue for a backend with room (served, timed out "
            "or gone), by priority.",
            ["priority"], buckets=_QUEUE_WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self._queue_collector = _QueueCollector()
        r.register(self._queue_collector)
        r.register(_FleetCollector(registry))
        ProcessCollector(registry=r)
        # Bounded like the labels: models served or configured, backends, a few statuses.
        self._children: dict[tuple[str, str, str, int, bool], _Children] = {}

    def observe(self, record: RequestRecord, model: str) -> None:
        """Count one finished request; ``model`` is its bounded model label."""
        backend = record.backend or NO_BACKEND
        api = record.api
        key = (api, model, backend, record.status, bool(record.stream))
        children = self._children.get(key)
        if children is None:
            # Looking children up by their labels takes a lock and a hash per metric;
            # the same few label sets come back on every request.
            stream = "true" if record.stream else "false"
            children = self._children[key] = _Children(
                self.requests.labels(api, model, backend, str(record.status), stream),
                self.duration.labels(api, model, backend),
                self.ttft.labels(model, backend),
                self.tokens.labels(model, backend, "prompt"),
                self.tokens.labels(model, backend, "completion"),
            )
        children.requests.inc()
        children.duration.observe(record.latency_seconds)
        if record.ttft_seconds is not None:
            children.ttft.observe(record.ttft_seconds)
        if record.prompt_tokens:
            children.prompt_tokens.inc(record.prompt_tokens)
        if record.completion_tokens:
            children.completion_tokens.inc(record.completion_tokens)
        for failover in record.failovers:
            if failover.to_backend is not None:
                self.failovers.labels(
                    failover.from_backend, failover.to_backend, failover.phase
                ).inc()
            self.failed_attempts.labels(failover.from_backend).inc()
        if record.fallback_from is not None and record.served_model is not None:
            self.fallbacks.labels(model, record.served_model).inc()
        if record.hedges_started:
            self.hedges.labels("won").inc(record.hedges_won)
            self.hedges.labels("lost").inc(record.hedges_started - record.hedges_won)
        if record.error is not None:
            self.errors.labels(record.error).inc()
        if record.affinity is not None:
            self.affinity.labels(record.affinity).inc()

    def watch_queue(self, queue: FairQueue) -> None:
        """Expose ``queue``'s depth (``nexus_queue_depth``) and observe each wait in it."""
        self._queue_collector.queue = queue
        queue.on_wait_done = self._queue_waited

    def _queue_waited(self, priority: Priority, seconds: float) -> None:
        self.queue_wait.labels(priority.value).observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric, as of now."""
        return generate_latest(self.registry)


class _Children(NamedTuple):
    """One request label set's metric children."""

    requests: Counter
    duration: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter


class _QueueCollector(Collector):
    """The queue's depth by priority, read at scrape time (0 until a queue is watched)."""

    def __init__(self) -> None:
        self.queue: FairQueue | None = None

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "nexus_queue_depth",
            "Requests waiting in the queue for a backend with room, by priority.",
            labels=["priority"],
        )
        for priority in PRIORITIES:
            waiting = 0 if self.queue is None else self.queue.depth(priority)
            depth.add_metric([priority.value], waiting)
        yield depth


class _FleetCollector(Collector):
    """Gauges read from the registry at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "nexus_backend_up", "1 if the backend is in rotation, else 0.", labels=["backend"]
        )
        in_flight = GaugeMetricFamily(
            "nexus_backend_in_flight", "Requests in flight at the backend.", labels=["backend"]
        )
        latency = GaugeMetricFamily(
            "nexus_backend_latency_seconds",
            "The backend's recent time to first token (moving average).",
            labels=["backend"],
        )
        engine_requests = GaugeMetricFamily(
            "nexus_backend_engine_requests",
            "Requests the backend's server says it has, any client's: state=running (being "
            "generated) or waiting (queued inside it). Only for servers that report it.",
            labels=["backend", "state"],
        )
        kv_cache = GaugeMetricFamily(
            "nexus_backend_kv_cache_usage_ratio",
            "Share of its KV cache the backend's server says is in use, 0 to 1. Only for "
            "servers that report it.",
            labels=["backend"],
        )
        model_loaded = GaugeMetricFamily(
            "nexus_backend_model_loaded",
            "1 for each model the backend's server says it holds in memory (a request for "
            "it starts without loading it). Only for servers that tell.",
            labels=["backend", "model"],
        )
        available: set[str] = set()
        for backend in self._registry:
            up.add_metric([backend.name], 1.0 if backend.routable else 0.0)
            in_flight.add_metric([backend.name], backend.in_flight)
            if backend.ttft_ewma_seconds is not None:
                latency.add_metric([backend.name], backend.ttft_ewma_seconds)
            if backend.routable:
                available.update(backend.models)
            report = backend.engine
            if report is None:
                continue
            if report.running is not None:
                engine_requests.add_metric([backend.name, "running"], report.running)
            if report.waiting is not None:
                engine_requests.add_metric([backend.name, "waiting"], report.waiting)
            if report.kv_cache_usage is not None:
                kv_cache.add_metric([backend.name], report.kv_cache_usage)
            # A server's loaded models are among those it lists, so the label set stays
            # as bounded as the models' own.
            for name in sorted(report.warm_models or ()):
                model_loaded.add_metric([backend.name, name], 1.0)
        yield up
        yield in_flight
        yield latency
        yield engine_requests
        yield kv_cache
        yield model_loaded
        yield GaugeMetricFamily(
            "nexus_models_available", "Models at least one backend in rotation serves.",
            value=len(available),
        )  # fmt: skip
