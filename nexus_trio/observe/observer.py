"""Where every finished request goes: log line, metrics, stats, history, live feed.

One call per request (`Observer.request_done`, from the request's ``finally``),
synchronous and cheap, so bookkeeping can never be lost to a cancellation or
hold a request up.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio

from nexus_trio.config import Settings, matching_pattern
from nexus_trio.logs import log_request, request_logger
from nexus_trio.observe.feed import BACKEND_STATUS, REQUEST_COMPLETE, Feed
from nexus_trio.observe.metrics import Metrics
from nexus_trio.observe.record import RequestRecord
from nexus_trio.observe.stats import Stats
from nexus_trio.observe.views import backend_view
from nexus_trio.registry import Registry

__all__ = ["UNKNOWN_MODEL", "Observer"]

UNKNOWN_MODEL = "unknown"


class Observer:
    """The gateway's view of its own traffic."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self._registry = registry
        self._routing = settings.routing
        self.metrics = Metrics(registry)
        self.stats = Stats()
        self.history: deque[RequestRecord] = deque(maxlen=settings.logging.history_size)
        self.feed = Feed()
        self.log_content = settings.logging.content

    def model_label(self, record: RequestRecord) -> str:
        """The model the client asked for if some backend serves it or the configuration
        names it, else `UNKNOWN_MODEL`: what metrics and stats count, so that no client
        can grow their label sets by sending made-up names."""
        model = record.model
        if model is None:
            return UNKNOWN_MODEL
        routing = self._routing
        if model in routing.aliases or model in routing.fallbacks:
            return model
        if routing.alias_patterns and not any(model in b.models for b in self._registry):
            # Counted under the pattern: every name it matches is served, so its names
            # would otherwise grow the label sets without bound.
            pattern = matching_pattern(routing.alias_patterns, model)
            if pattern is not None:
                return pattern.key
        if record.backend is not None:
            return model  # it was served, so it is known (a model or a fallback)
        if any(model in b.models for b in self._registry):
            return model
        return UNKNOWN_MODEL

    def request_done(self, record: RequestRecord) -> None:
        """Count, log, keep and announce one finished request."""
        label = self.model_label(record)
        self.stats.add(record, label)
        self.metrics.observe(record, label)
        self.history.append(record)
        if request_logger.isEnabledFor(logging.INFO):
            log_request(record.log_fields())
        feed = self.feed
        if feed.subscribers:
            feed.publish(REQUEST_COMPLETE, record.to_json())
            # Its backends' load and latency just changed.
            involved = {record.backend, *(f.from_backend for f in record.failovers)}
            for name in sorted(n for n in involved if n is not None and n in self._registry):
                feed.publish(
                    BACKEND_STATUS, backend_view(self._registry.get(name), trio.current_time())
                )

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last ``limit`` requests (all kept, if None), oldest first."""
        records = list(self.history)
        if limit is not None:
            records = records[-limit:] if limit > 0 else []
        return [r.to_json() for r in records]
