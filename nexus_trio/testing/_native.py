"""The native endpoints of LM Studio, exo and LocalAI, as their servers answer them.

- LM Studio (https://lmstudio.ai/docs/developer/rest/endpoints, REST API v0):
  ``GET /api/v0/models`` lists every model on disk with its ``state``
  (``loaded`` / ``not-loaded``), ``max_context_length``, ``arch`` and quantization;
  its ``/v1/models`` entries are ``owned_by`` ``"organization_owner"``.
- exo (exo-explore/exo, ``src/exo/master/api.py``): ``GET /node_id`` is the node's
  libp2p peer id as a JSON string, ``GET /state`` the cluster state (pydantic,
  camelCase keys; trimmed here to the instances, one per model, and the topology),
  ``GET /`` the dashboard (HTML); ``/v1/models`` entries are ``owned_by`` ``"exo"``
  and carry Open WebUI fields (``context_length``, ``storage_size_megabytes``, …).
- LocalAI (mudler/LocalAI, ``core/http/routes``): ``GET /readyz`` and ``/healthz``
  answer 200 ``OK``, ``GET /version`` its version; ``/v1/models`` (and ``/models``)
  entries are only ``{"id", "object"}`` (``schema.OpenAIModel`` has no ``owned_by``
  nor ``created``).
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any, Final

from ._catalog import QUANTIZATION, card
from ._http import Request, Responder

if TYPE_CHECKING:
    from ._backend import SimulatedBackend

__all__ = [
    "exo_dashboard",
    "exo_models",
    "exo_node_id",
    "exo_state",
    "lmstudio_api_models",
    "lmstudio_models",
    "localai_models",
    "localai_ok",
    "localai_version",
    "node_id",
]

LOCALAI_VERSION: Final = "v3.6.0"
LMSTUDIO_PUBLISHER: Final = "lmstudio-community"
_BASE58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _listing(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": data}


# -- LM Studio -------------------------------------------------------------------------------


async def lmstudio_api_models(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> None:
    data = []
    for model in backend.models:
        facts = card(model.id)
        data.append(
            {
                "id": model.id,
                "object": "model",
                "type": "vlm" if model.vision else "llm",
                "publisher": LMSTUDIO_PUBLISHER,
                "arch": facts.family,
                "compatibility_type": "gguf",
                "quantization": QUANTIZATION,
                # LM Studio loads a model on its first request (JIT loading)
                "state": "loaded" if model.id in backend.loaded else "not-loaded",
                "max_context_length": model.context_length,
            }
        )
    await responder.send_json(200, _listing(data))


async def lmstudio_models(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> None:
    data = [
        {"id": m.id, "object": "model", "owned_by": "organization_owner"} for m in backend.models
    ]
    await responder.send_json(200, _listing(data))


# -- exo -----------------------------------------------------------------------------------


def node_id(name: str) -> str:
    """A stable libp2p-style peer id (``12D3KooW…``, base58) derived from ``name``."""
    number = int.from_bytes(hashlib.sha256(f"exo:{name}".encode()).digest())
    digits = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(_BASE58[digit])
    return "12D3KooW" + "".join(reversed(digits))[:44]


async def exo_node_id(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    await responder.send_json(200, node_id(backend.name))


async def exo_state(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    node = node_id(backend.name)
    instances = {}
    for index, model in enumerate(backend.models):
        instance_id = hashlib.sha256(f"{node}:{model.id}".encode()).hexdigest()[:32]
        runner_id = f"runner-{index}"
        instances[instance_id] = {
            "MlxRingInstance": {
                "instanceId": instance_id,
                "shardAssignments": {
                    "modelId": model.id,
                    "runnerToShard": {},
                    "nodeToRunner": {node: runner_id},
                },
                "hosts": [{"ip": "127.0.0.1", "port": backend.port}],
            }
        }
    state = {
        "instances": instances,
        "runners": {},
        "downloads": {},
        "tasks": {},
        "lastSeen": {},
        "topology": {"nodes": [node], "connections": []},
        "lastEventAppliedIdx": len(instances),
    }
    await responder.send_json(200, state)


async def exo_models(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    created = int(time.time())  # exo stamps every entry with the time of the request
    data = []
    for model in backend.models:
        facts = card(model.id)
        data.append(
            {
                "id": model.id,
                "object": "model",
                "created": created,
                "owned_by": "exo",
                "hugging_face_id": f"mlx-community/{model.id}",
                "name": model.id,
                "description": "",
                "context_length": model.context_length,
                "tags": ["vision"] if model.vision else [],
                "storage_size_megabytes": facts.size // 1_000_000,
                "supports_tensor": True,
                "tasks": ["TextGeneration"],
            }
        )
    await responder.send_json(200, _listing(data))


async def exo_dashboard(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    page = b"<!doctype html><html><head><title>EXO</title></head><body></body></html>"
    await responder.send(200, page, content_type="text/html; charset=utf-8")


# -- LocalAI -----------------------------------------------------------------------------------


async def localai_ok(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    # Its handler only sets the status; the web framework fills in the status text.
    await responder.send_text(200, "OK")


async def localai_version(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> None:
    await responder.send_json(200, {"version": LOCALAI_VERSION})


async def localai_models(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    await responder.send_json(
        200, _listing([{"id": m.id, "object": "model"} for m in backend.models])
    )
