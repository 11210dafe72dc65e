"""Which paths each flavour serves, and the OpenAI-compatible side of each server.

- vLLM: ``/health`` (200, empty), ``/version``, ``/v1/models`` with ``max_model_len``,
  ``/metrics``, ``/tokenize``.
- llama.cpp server: ``/health``, ``/props``, ``/slots``, ``/v1/models`` with ``meta``,
  ``/metrics`` (501 unless started with ``--metrics``), ``/apply-template``, ``/tokenize``.
- Ollama: see ``_ollama``; its ``/v1/models`` entries are ``owned_by`` the namespace.
- generic: ``/v1/models`` and ``/v1/chat/completions`` only.
- LM Studio, exo, LocalAI: see ``_native``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from . import _native, _ollama, _text_completion, _tokenize
from ._catalog import CREATED, card
from ._chat import handle_chat
from ._completions import FINGERPRINTS
from ._embeddings import handle_embeddings
from ._http import Request, Responder
from ._types import Flavor, SimModel

if TYPE_CHECKING:
    from ._backend import SimulatedBackend

__all__ = ["LLAMACPP_SLOTS", "ROUTES", "VLLM_MAX_NUM_SEQS", "Route"]

Route = Callable[["SimulatedBackend", Request, Responder], Awaitable[None]]

VLLM_VERSION: Final = "0.11.0"
LLAMACPP_SLOTS: Final = 2  # llama-server --parallel
VLLM_MAX_NUM_SEQS: Final = 256  # vLLM's default max_num_seqs
LLAMACPP_VOCAB: Final = 49152


def _listing(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": data}


def _model_entry(model: SimModel, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": created, "owned_by": owned_by}


async def ollama_models(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    data = [
        _model_entry(m, CREATED, "library") | {"id": _ollama.ollama_name(m.id)}
        for m in backend.models
    ]
    await responder.send_json(200, _listing(data))


async def generic_models(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    created = int(time.time())
    data = [_model_entry(m, created, "system") for m in backend.models]
    await responder.send_json(200, _listing(data))


async def vllm_models(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    created = int(time.time())
    data = [
        _model_entry(m, created, "vllm")
        | {
            "root": m.id,
            "parent": None,
            "max_model_len": m.context_length,
            "permission": [_vllm_permission(created)],
        }
        for m in backend.models
    ]
    await responder.send_json(200, _listing(data))


def _vllm_permission(created: int) -> dict[str, Any]:
    return {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


async def vllm_health(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    await responder.send(200, b"", content_type=None)


async def vllm_version(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    await responder.send_json(200, {"version": VLLM_VERSION})


async def vllm_metrics(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    # One engine serving one model (vLLM serves one; LoRA adapters share its engine), its
    # requests beyond max_num_seqs waiting, its KV cache as full as its batch.
    busy, parallel = backend.engine_busy, backend.engine_parallel
    running = min(busy, parallel)
    gauges = (
        ("vllm:num_requests_running", "Number of requests in model execution batches.", running),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
         busy - running),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
         round(running / parallel, 4)),
    )  # fmt: skip
    served = backend.models[0].id if backend.models else ""
    lines: list[str] = []
    for name, help_, value in gauges:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
        lines.append(f'{name}{{engine="0",model_name="{served}"}} {value}')
    await _send_metrics(responder, lines)


async def llamacpp_health(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> None:
    await responder.send_json(200, {"status": "ok"})


def _llamacpp_params() -> dict[str, Any]:
    return {
        "n_predict": -1,
        "seed": 4294967295,
        "temperature": 0.8,
        "dynatemp_range": 0.0,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
        "repeat_last_n": 64,
        "repeat_penalty": 1.0,
        "n_keep": 0,
        "stream": True,
        "samplers": ["penalties", "top_k", "top_p", "min_p", "temperature"],
    }


def _slot(index: int, n_ctx: int, busy: bool) -> dict[str, Any]:
    return {
        "id": index,
        "id_task": index if busy else -1,
        "n_ctx": n_ctx,
        "speculative": False,
        "is_processing": busy,
        "params": _llamacpp_params(),
        "next_token": {"has_next_token": busy, "n_remain": -1, "n_decoded": 0},
    }


def _n_ctx(backend: SimulatedBackend) -> int:
    return backend.models[0].context_length if backend.models else 0


async def llamacpp_props(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    first = backend.models[0] if backend.models else None
    props = {
        "default_generation_settings": _slot(0, _n_ctx(backend), busy=False),
        "total_slots": backend.engine_parallel,
        "model_path": f"/models/{card(first.id).file_name}" if first else "",
        "modalities": {"vision": bool(first and first.vision), "audio": False},
        "chat_template": "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{{ message['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "build_info": FINGERPRINTS[Flavor.LLAMACPP],
    }
    await responder.send_json(200, props)


async def llamacpp_slots(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    busy = backend.engine_busy
    slots = [_slot(i, _n_ctx(backend), busy=i < busy) for i in range(backend.engine_parallel)]
    await responder.send_json(200, slots)


async def llamacpp_models(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> None:
    created = int(time.time())
    data = []
    for model in backend.models:
        facts = card(model.id)
        meta = {
            "vocab_type": 2,
            "n_vocab": LLAMACPP_VOCAB,
            "n_ctx_train": model.context_length,
            "n_embd": 4096,
            "n_params": facts.parameters,
            "size": facts.size,
        }
        data.append(_model_entry(model, created, "llamacpp") | {"meta": meta})
    await responder.send_json(200, _listing(data))


async def llamacpp_metrics(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> None:
    if not backend.llamacpp_metrics:
        message = "This server does not support metrics endpoint. Start it with `--metrics`"
        error = {"code": 501, "message": message, "type": "not_supported_error"}
        await responder.send_json(501, {"error": error})
        return
    busy, slots = backend.engine_busy, backend.engine_parallel
    gauges = (
        ("llamacpp:requests_processing", "Number of requests processing.", min(busy, slots)),
        ("llamacpp:requests_deferred", "Number of requests deferred.", max(0, busy - slots)),
        ("llamacpp:kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
         round(min(busy, slots) / slots, 4)),
    )  # fmt: skip
    lines: list[str] = []
    for name, help_, value in gauges:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value}"]
    await _send_metrics(responder, lines)


async def _send_metrics(responder: Responder, lines: list[str]) -> None:
    body = ("\n".join(lines) + "\n").encode()
    await responder.send(200, body, content_type="text/plain; version=0.0.4; charset=utf-8")


async def chat(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    await handle_chat(backend, request, responder)


_CHAT: Final = {"POST": chat}
_COMPLETIONS: Final = {"POST": _text_completion.completions}
_EMBEDDINGS: Final = {"POST": handle_embeddings}

ROUTES: Final[Mapping[Flavor, Mapping[str, Mapping[str, Route]]]] = {
    Flavor.OLLAMA: {
        "/": {"GET": _ollama.root},
        "/api/version": {"GET": _ollama.version},
        "/api/tags": {"GET": _ollama.tags},
        "/api/show": {"POST": _ollama.show},
        "/api/ps": {"GET": _ollama.running},
        "/v1/models": {"GET": ollama_models},
        "/v1/chat/completions": _CHAT,
        "/v1/completions": _COMPLETIONS,
        "/v1/embeddings": _EMBEDDINGS,
    },
    Flavor.VLLM: {
        "/health": {"GET": vllm_health},
        "/version": {"GET": vllm_version},
        "/metrics": {"GET": vllm_metrics},
        "/v1/models": {"GET": vllm_models},
        "/v1/chat/completions": _CHAT,
        "/v1/completions": _COMPLETIONS,
        "/v1/embeddings": _EMBEDDINGS,
        "/tokenize": {"POST": _tokenize.vllm_tokenize},
    },
    Flavor.LLAMACPP: {
        "/health": {"GET": llamacpp_health},
        "/v1/health": {"GET": llamacpp_health},
        "/props": {"GET": llamacpp_props},
        "/slots": {"GET": llamacpp_slots},
        "/metrics": {"GET": llamacpp_metrics},
        "/models": {"GET": llamacpp_models},
        "/v1/models": {"GET": llamacpp_models},
        "/chat/completions": _CHAT,
        "/v1/chat/completions": _CHAT,
        "/completions": _COMPLETIONS,
        "/v1/completions": _COMPLETIONS,
        "/infill": {"POST": _text_completion.infill},
        "/embeddings": _EMBEDDINGS,
        "/v1/embeddings": _EMBEDDINGS,
        "/apply-template": {"POST": _tokenize.llamacpp_apply_template},
        "/tokenize": {"POST": _tokenize.llamacpp_tokenize},
    },
    Flavor.GENERIC: {
        "/v1/models": {"GET": generic_models},
        "/v1/chat/completions": _CHAT,
    },
    Flavor.LMSTUDIO: {
        "/api/v0/models": {"GET": _native.lmstudio_api_models},
        "/v1/models": {"GET": _native.lmstudio_models},
        "/v1/chat/completions": _CHAT,
        "/api/v0/chat/completions": _CHAT,
    },
    Flavor.EXO: {
        "/": {"GET": _native.exo_dashboard},
        "/node_id": {"GET": _native.exo_node_id},
        "/state": {"GET": _native.exo_state},
        "/models": {"GET": _native.exo_models},
        "/v1/models": {"GET": _native.exo_models},
        "/v1/chat/completions": _CHAT,
    },
    Flavor.LOCALAI: {
        "/readyz": {"GET": _native.localai_ok},
        "/healthz": {"GET": _native.localai_ok},
        "/version": {"GET": _native.localai_version},
        "/models": {"GET": _native.localai_models},
        "/v1/models": {"GET": _native.localai_models},
        "/chat/completions": _CHAT,
        "/v1/chat/completions": _CHAT,
    },
}
