"""What Nexus sees of its own traffic: per-request records, Prometheus metrics,
running stats, recent history, and the dashboard's live feed."""

from nexus_trio.observe.feed import Feed
from nexus_trio.observe.metrics import Metrics
from nexus_trio.observe.observer import UNKNOWN_MODEL, Observer
from nexus_trio.observe.record import (
    CLIENT_DISCONNECTED,
    CLIENT_GONE,
    STREAM_INCOMPLETE,
    RequestRecord,
)
from nexus_trio.observe.stats import Stats

__all__ = [
    "CLIENT_DISCONNECTED",
    "CLIENT_GONE",
    "STREAM_INCOMPLETE",
    "UNKNOWN_MODEL",
    "Feed",
    "Metrics",
    "Observer",
    "RequestRecord",
    "Stats",
]
