"""The models the fleet serves, merged across backends, as `/v1/models` shows them (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nexus_trio.config import RoutingSettings, is_alias_pattern
from nexus_trio.registry import Backend

__all__ = ["listed_models", "model_entries", "model_entry"]


def model_entry(model: str, backends: Sequence[Backend], created: int) -> dict[str, Any] | None:
    """One ``/v1/models`` entry for ``model``, or None when no backend serves it.

    Beyond the OpenAI fields it says which backends serve the model, whether
    any of them is routable now, the largest context length any reported, and
    the capabilities at least one of them has.
    """
    serving = [b for b in backends if model in b.models]
    if not serving:
        return None
    infos = [b.models[model] for b in serving]
    contexts = [i.context_length for i in infos if i.context_length]
    known_caps = [i.capabilities for i in infos if i.capabilities is not None]
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": infos[0].owned_by,
        "backends": [b.name for b in serving],
        "available": any(b.available for b in serving),
        "context_length": max(contexts) if contexts else None,
        "capabilities": sorted(set().union(*known_caps)) if known_caps else None,
    }


def model_entries(
    backends: Sequence[Backend], aliases: Mapping[str, str], resolve: Any, created: int
) -> list[dict[str, Any]]:
    """Every served model once, then every alias whose target is served (a pattern key such
    as ``claude-*`` names no model of its own, so it is not listed)."""
    ids = sorted({m for b in backends for m in b.models})
    entries = [e for m in ids if (e := model_entry(m, backends, created)) is not None]
    for alias in sorted(a for a in aliases if not is_alias_pattern(a)):
        target = model_entry(resolve(alias), backends, created)
        if target is not None:
            entries.append({**target, "id": alias, "alias_for": target["id"]})
    return entries


def listed_models(
    backends: Iterable[Backend], routing: RoutingSettings, created: int
) -> list[dict[str, Any]]:
    """``GET /v1/models``' list: `model_entries` with the configured aliases."""
    return model_entries(list(backends), routing.aliases, routing.resolve_alias, created)
