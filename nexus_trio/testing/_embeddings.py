"""``POST /v1/embeddings``: deterministic vectors, on the wire as the servers send them.

A vector is a function of the model and the text alone (`embedding_of`): sha256 of
both, spread over `DIMENSIONS` float32 values and L2-normalised (llama.cpp and most
embedding models answer unit vectors). Every value is exactly a float32, so the JSON
float and the base64 form (little-endian float32, as OpenAI sends it) carry the same
number. ``dimensions`` keeps the first N values. Token input (a list of ints, or of
lists) is embedded as its JSON text. Ollama's OpenAI endpoint takes strings only, and
embeds only models whose capabilities include ``embedding``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from typing import TYPE_CHECKING, Any, Final

from ._completions import error_payload
from ._http import Request, Responder
from ._types import Flavor

if TYPE_CHECKING:
    from ._backend import SimulatedBackend

__all__ = ["DIMENSIONS", "embedding_of", "handle_embeddings", "refuse_chat"]

DIMENSIONS: Final = 16


def _float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def embedding_of(model: str, text: str, dimensions: int | None = None) -> list[float]:
    """The vector the simulated ``model`` gives ``text`` (the first ``dimensions`` values)."""
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()  # 32 bytes: 16 pairs
    raw = [(int.from_bytes(digest[i : i + 2], "little") - 32767.5) for i in range(0, 32, 2)]
    norm = math.sqrt(sum(v * v for v in raw))
    vector = [_float32(v / norm) for v in raw]
    return vector[:dimensions] if dimensions else vector


def base64_of(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32 values."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _texts(value: object, flavor: Flavor) -> list[str] | None:
    """The inputs to embed, as the key each vector is made from; None if malformed."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return list(value)
    if flavor is Flavor.OLLAMA:
        return None  # ollama: strings only (openai/openai.go: "invalid input type")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [json.dumps(value)]
    if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
        return [json.dumps(v) for v in value]
    return None


def _count(text: str) -> int:
    """Prompt tokens of one input: a token list's length, else about a word each."""
    if text.startswith("["):
        try:
            return len(json.loads(text))
        except ValueError:
            pass
    return max(1, len(text.split()))


async def handle_embeddings(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> None:
    """Answer one embeddings request (faults as for chat: status, reset, die, malformed)."""
    flavor = backend.flavor
    backend.stats.embedding_requests += 1
    faults = backend.faults

    async def fail(status: int, message: str, param: str | None = None) -> None:
        await responder.send_json(status, error_payload(flavor, status, message, param=param))

    if faults.reset_before_headers or faults.die_after_chunks is not None:
        await responder.abort()
        return
    if faults.status is not None:
        message = f"Simulated failure: {backend.name} answers HTTP {faults.status}."
        await fail(faults.status, message)
        return
    try:
        body = json.loads(request.body)
    except ValueError:
        await fail(400, "We could not parse the JSON body of your request.")
        return
    if not isinstance(body, dict):
        await fail(400, "The request body must be a JSON object.")
        return
    backend.stats.last_embeddings_body = body
    name = body.get("model")
    model = backend.models_by_id.get(name) if isinstance(name, str) else None
    if model is None:
        if flavor is Flavor.OLLAMA:
            await fail(404, f'model "{name}" not found, try pulling it first')
        else:
            await fail(404, f"The model `{name}` does not exist.", "model")
        return
    if flavor is Flavor.OLLAMA and not model.embedding:
        await fail(400, "this model does not support embeddings")
        return
    texts = _texts(body.get("input"), flavor)
    if texts is None:
        await fail(400, "invalid input type", "input")
        return
    dimensions = body.get("dimensions")
    if dimensions is not None and not (
        isinstance(dimensions, int) and 0 < dimensions <= DIMENSIONS
    ):
        await fail(400, f"dimensions must be between 1 and {DIMENSIONS}", "dimensions")
        return
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        await fail(400, "encoding_format must be 'float' or 'base64'", "encoding_format")
        return
    data = []
    for index, text in enumerate(texts):
        vector = embedding_of(model.id, text, dimensions)
        shown: object = base64_of(vector) if encoding == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": shown})
    tokens = sum(_count(t) for t in texts)
    payload = {
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    encoded = json.dumps(payload, separators=(",", ":")).encode()
    if faults.malformed:
        await responder.send(200, encoded[: len(encoded) // 2], content_type="application/json")
        return
    await responder.send(200, encoded, content_type="application/json")


def refuse_chat(flavor: Flavor, model: str) -> tuple[int, dict[str, Any]]:
    """What a server answers a chat (or completion) request for an embedding-only model."""
    if flavor is Flavor.OLLAMA:
        return 400, error_payload(flavor, 400, f'"{model}" does not support chat')
    if flavor is Flavor.LLAMACPP:
        message = "This server does not support completions. Start it without `--embeddings`"
        return 501, {"error": {"code": 501, "message": message, "type": "not_supported_error"}}
    message = "The model does not support Chat Completions API"
    return 400, error_payload(flavor, 400, message)
