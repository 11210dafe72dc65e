"""What a server says of its own load, read off its cheap native endpoints.

=========  =====================  ====================================================
vllm       ``GET /metrics``       ``vllm:num_requests_running``, ``…_waiting``,
                                  ``vllm:kv_cache_usage_perc`` (``gpu_cache_usage_perc``
                                  before 0.10), summed over its engines and models
llamacpp   ``GET /metrics``       ``llamacpp:requests_processing``, ``…_deferred``,
                                  ``llamacpp:kv_cache_usage_ratio`` (only when started
                                  with ``--metrics``; 501 otherwise)
           ``GET /slots``         else: each slot, busy or idle (``is_processing``;
                                  ``state`` 1 in older builds)
ollama     ``GET /api/ps``        the models loaded, until when, and their memory
lmstudio   ``GET /api/v0/models`` each model's ``state``: ``loaded`` or not
=========  =====================  ====================================================

Every other type says nothing of its load, and is not asked. A path the server does
not expose (404, or llama.cpp's 501) reads as None, so the caller tries the next one
and then stops asking (`nexus_trio.load_watch`).

Parsing is pure (``parse_*``), tested on recorded shapes. The Prometheus text is
scanned for the few gauges wanted rather than parsed whole: vLLM's page holds
hundreds of histogram lines, and it is read every second per backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import httpx

from nexus_trio.config import BackendType
from nexus_trio.errors import BackendProtocolError, BackendStatus
from nexus_trio.registry import Backend, EngineReport, LoadedModel
from nexus_trio.upstream.client import backend_headers, translate_httpx_error

__all__ = [
    "ENGINE_PATHS",
    "Reader",
    "parse_llamacpp_metrics",
    "parse_llamacpp_slots",
    "parse_lmstudio_models",
    "parse_ollama_ps",
    "parse_vllm_metrics",
    "read_engine_report",
]

# Statuses that mean "this server has no such endpoint" (llama.cpp answers 501 for
# /metrics without --metrics, and for /slots with --no-slots).
_NOT_EXPOSED: Final = frozenset({404, 405, 501})


def _gauges(text: str, names: Mapping[str, str]) -> dict[str, list[float]]:
    """The samples of the metrics ``names`` maps (metric name → field), per field, from a
    Prometheus text page; lines of other metrics are skipped unread."""
    found: dict[str, list[float]] = {}
    prefixes = tuple(names)
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        name_end = len(line)
        for stop in ("{", " "):
            at = line.find(stop)
            if at != -1:
                name_end = min(name_end, at)
        field = names.get(line[:name_end])
        if field is None:
            continue  # a longer name that starts with a wanted one (…_total, …_bucket)
        value_at = line.rfind("}") + 1 if "}" in line else name_end
        parts = line[value_at:].split()
        try:
            value = float(parts[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            found.setdefault(field, []).append(value)
    return found


def _count(samples: list[float] | None) -> int | None:
    return None if samples is None else max(0, round(sum(samples)))


def _share(samples: list[float] | None) -> float | None:
    return None if samples is None else min(1.0, max(0.0, max(samples)))


_VLLM_GAUGES: Final = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv",
    "vllm:gpu_cache_usage_perc": "kv",  # its name before vLLM 0.10
}
_LLAMACPP_GAUGES: Final = {
    "llamacpp:requests_processing": "running",
    "llamacpp:requests_deferred": "waiting",
    "llamacpp:kv_cache_usage_ratio": "kv",
}


def parse_vllm_metrics(text: str) -> EngineReport:
    """Requests running and waiting (over every engine and model) and the fullest KV
    cache, from vLLM's ``GET /metrics``.

    Raises:
        ValueError: the page has none of them (not vLLM's metrics).
    """
    return _metrics_report(text, _VLLM_GAUGES)


def parse_llamacpp_metrics(text: str) -> EngineReport:
    """Requests processing and deferred and the KV-cache use, from llama.cpp's
    ``GET /metrics``.

    Raises:
        ValueError: the page has none of them.
    """
    return _metrics_report(text, _LLAMACPP_GAUGES)


def _metrics_report(text: str, names: Mapping[str, str]) -> EngineReport:
    found = _gauges(text, names)
    if "running" not in found and "waiting" not in found:
        raise ValueError(f"no {' or '.join(sorted(set(names) - {'kv'}))} gauge on the page")
    return EngineReport(
        running=_count(found.get("running")) or 0,
        waiting=_count(found.get("waiting")) or 0,
        kv_cache_usage=_share(found.get("kv")),
    )


def parse_llamacpp_slots(payload: Any) -> EngineReport:
    """Slots busy of all, from llama.cpp's ``GET /slots`` (a list, one object per slot).

    Raises:
        ValueError: not a list of slots.
    """
    if not isinstance(payload, list) or not all(isinstance(s, dict) for s in payload):
        raise ValueError("expected a list of slot objects")
    busy = sum(1 for s in payload if s.get("is_processing") is True or s.get("state") == 1)
    return EngineReport(running=busy, slots=len(payload) or None)


def _epoch(stamp: object) -> float | None:
    """An RFC 3339 time (Go writes nanoseconds; Python 3.11 reads them) as time.time()."""
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _bytes(value: object) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None  # type: ignore[return-value]


def _named_entries(payload: Any, key: str, name: str) -> list[dict[str, Any]]:
    """The objects in ``payload[key]`` that carry a string ``name``.

    Raises:
        ValueError: ``payload`` has no ``key`` array.
    """
    entries = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"expected an object with a {key!r} array")
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get(name), str)]


def parse_ollama_ps(payload: Any) -> EngineReport:
    """The models Ollama holds in memory now, until when, and how much each takes, from
    ``GET /api/ps``.

    Raises:
        ValueError: no ``models`` array.
    """
    loaded = tuple(
        LoadedModel(e["name"], _epoch(e.get("expires_at")), _bytes(e.get("size")))
        for e in _named_entries(payload, "models", "name")
    )
    return EngineReport(loaded=loaded)


def parse_lmstudio_models(payload: Any) -> EngineReport:
    """The models LM Studio has loaded, from ``GET /api/v0/models`` (``state``).

    Raises:
        ValueError: no ``data`` array.
    """
    entries = _named_entries(payload, "data", "id")
    return EngineReport(
        loaded=tuple(LoadedModel(e["id"]) for e in entries if e.get("state") == "loaded")
    )


def _text(parse: Callable[[str], EngineReport]) -> Callable[[httpx.Response], EngineReport]:
    return lambda response: parse(response.text)


def _json(parse: Callable[[Any], EngineReport]) -> Callable[[httpx.Response], EngineReport]:
    return lambda response: parse(response.json())


# Reads a report from a server's answer; raises ValueError when it cannot.
Reader = Callable[[httpx.Response], EngineReport]

# Per type, the paths that tell its load, best first, each with its reader.
ENGINE_PATHS: Final[Mapping[BackendType, tuple[tuple[str, Reader], ...]]] = {
    BackendType.VLLM: (("/metrics", _text(parse_vllm_metrics)),),
    BackendType.LLAMACPP: (
        ("/metrics", _text(parse_llamacpp_metrics)),
        ("/slots", _json(parse_llamacpp_slots)),
    ),
    BackendType.OLLAMA: (("/api/ps", _json(parse_ollama_ps)),),
    BackendType.LMSTUDIO: (("/api/v0/models", _json(parse_lmstudio_models)),),
}


async def read_engine_report(
    client: httpx.AsyncClient,
    backend: Backend,
    path: str,
    parse: Reader,
) -> EngineReport | None:
    """Read ``path`` of ``backend`` once (the caller sets the deadline); None when the
    server does not expose it.

    Raises:
        BackendError: it failed to answer, or answered what ``parse`` cannot read.
    """
    try:
        response = await client.get(backend.url + path, headers=backend_headers(backend))
    except httpx.HTTPError as exc:
        raise translate_httpx_error(backend.name, exc) from exc
    if response.status_code in _NOT_EXPOSED:
        return None
    if response.status_code != 200:
        raise BackendStatus(backend.name, response.status_code, f"GET {path}")
    try:
        return parse(response)
    except ValueError as exc:  # JSONDecodeError is one
        raise BackendProtocolError(backend.name, f"GET {path}: {exc}") from exc
