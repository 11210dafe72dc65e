"""``nexus models``: the models of a running Nexus, through ``/admin/models``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Annotated, Any, TypedDict

import typer

from nexus_trio.cli._app import JsonOption, TokenOption, UrlOption, ask
from nexus_trio.cli.client import Target, call, items
from nexus_trio.cli.output import as_int, as_list, clean, render_json, render_table, strings, yes_no

__all__ = ["ModelView", "list_models", "render_models"]


class ModelView(TypedDict, total=False):
    """One model as ``GET /admin/models`` describes it."""

    id: str
    backends: list[str]
    available: bool
    context_length: int | None
    capabilities: list[str] | None


def list_models(target: Target, *, backend: str | None = None, as_json: bool = False) -> str:
    """``nexus models``: every model and the backends serving it (or only `backend`'s).

    Raises:
        ClientError: as `call`.
    """
    path = "/admin/models"
    models = items(call(target, "GET", path), "models", target, path)
    if backend is not None:
        models = [m for m in models if backend in as_list(m.get("backends"))]
    if as_json:
        return render_json({"models": models})
    if not models and backend is not None:
        return f"No models on a backend named {clean(backend)}."
    return render_models(models)


def render_models(models: Sequence[Mapping[str, Any]]) -> str:
    """The models table of ``nexus models`` (from ``GET /admin/models`` items)."""
    if not models:
        return "No models. No backend is serving one yet: see `nexus backends list`."
    rows = [
        [
            m.get("id"),
            yes_no(m.get("available")),
            as_int(m.get("context_length")),
            ",".join(strings(m.get("capabilities"))) or "-",
            ", ".join(strings(m.get("backends"))) or "-",
        ]
        for m in models
    ]
    return render_table(
        ["model", "available", "context", "capabilities", "backends"], rows, right={2}
    )


def models(
    json_: JsonOption = False,
    backend: Annotated[str | None, typer.Option(help="Only the models of this backend.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """List the models, whether they can be served now, and by which backends."""
    ask(url, token, partial(list_models, backend=backend, as_json=json_))
