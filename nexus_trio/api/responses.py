"""``GET`` and ``DELETE /v1/responses/{id}``: the answers of ``/v1/responses`` Nexus keeps
(`nexus_trio.dialects.response_store`). Creating one is ``POST /v1/responses``, served by
the request pipeline with the Responses dialect."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from nexus_trio.dialects.response_store import ResponseStore
from nexus_trio.errors import ResponseNotKept

__all__ = ["make_responses_blueprint"]


def make_responses_blueprint(store: ResponseStore) -> Blueprint:
    """Routes that read and forget kept responses; an id not kept is a 404 that says why."""
    blueprint = Blueprint("responses", __name__)

    @blueprint.get("/v1/responses/<response_id>")
    async def retrieve(response_id: str) -> Response:
        kept = store.get(response_id)
        if kept is None:
            raise ResponseNotKept(response_id, store.capacity, param=None)
        return jsonify(kept.response)

    @blueprint.delete("/v1/responses/<response_id>")
    async def delete(response_id: str) -> Response:
        if not store.delete(response_id):
            raise ResponseNotKept(response_id, store.capacity, param=None)
        return jsonify({"id": response_id, "object": "response.deleted", "deleted": True})

    return blueprint
