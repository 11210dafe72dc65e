"""What no single value shows: rules across keys, checked on each layer's result.

The loader runs `check_consistency` on the file's settings, then again after the environment
and after the command line, so that the layer which broke a rule is the one named.
"""

from __future__ import annotations

from nexus_trio.config._checks import Bad, join
from nexus_trio.config.schema import MAX_ALIAS_HOPS, Settings

__all__ = ["check_consistency"]


def check_consistency(settings: Settings) -> None:
    """Raise `Bad` for alias cycles and long chains, a model among its own fallbacks, two
    backends of one name, or an ejection cap below its base."""
    _check_aliases(settings)
    for model, names in settings.routing.fallbacks.items():
        if model in names:
            raise Bad(f"must not list {model!r} itself", join("routing.fallbacks", model))
    seen: dict[str, int] = {}
    for i, backend in enumerate(settings.backends):
        if backend.name in seen:
            raise Bad(
                f"{backend.name!r} is already used by backends[{seen[backend.name]}]; "
                "backend names must be unique",
                f"backends[{i}].name",
            )
        seen[backend.name] = i
    health = settings.health_check
    if health.ejection_max_seconds < health.ejection_base_seconds:
        raise Bad(
            f"must be at least health_check.ejection_base_seconds "
            f"({health.ejection_base_seconds:g}), got {health.ejection_max_seconds:g}; "
            "it caps the doubling of that time",
            "health_check.ejection_max_seconds",
        )


def _check_aliases(settings: Settings) -> None:
    aliases = settings.routing.aliases
    for start in aliases:
        chain = [start]
        while chain[-1] in aliases:
            target = aliases[chain[-1]]
            if target in chain:
                cycle = " → ".join([*chain[chain.index(target) :], target])
                raise Bad(f"routing.aliases: alias cycle {cycle}")
            chain.append(target)
            if len(chain) - 1 > MAX_ALIAS_HOPS:
                raise Bad(
                    f"routing.aliases: alias chain {' → '.join(chain)} is longer than "
                    f"{MAX_ALIAS_HOPS} hops; point the alias at the model directly"
                )
