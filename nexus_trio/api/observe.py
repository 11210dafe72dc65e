"""``GET /metrics`` (Prometheus), ``GET /v1/stats`` and ``GET /v1/history``."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from nexus_trio import __version__
from nexus_trio.errors import RequestError
from nexus_trio.gateway import Gateway
from nexus_trio.observe.metrics import CONTENT_TYPE

__all__ = ["make_observe_blueprint"]


def make_observe_blueprint(gateway: Gateway) -> Blueprint:
    blueprint = Blueprint("observe", __name__)
    observer = gateway.observer

    @blueprint.get("/metrics")
    async def metrics() -> Response:
        return Response(observer.metrics.exposition(), content_type=CONTENT_TYPE)

    @blueprint.get("/v1/stats")
    async def stats() -> Response:
        body = observer.stats.to_json()
        body["in_flight"] = gateway.drain.in_flight
        body["uptime_seconds"] = round(gateway.uptime_seconds, 3)
        body["version"] = __version__
        return jsonify(body)

    @blueprint.get("/v1/history")
    async def history() -> Response:
        limit = request.args.get("limit")
        if limit is not None and not (limit.isdigit() and len(limit) <= 9):
            raise RequestError("'limit' must be a whole number of requests.", param="limit")
        data = observer.recent(None if limit is None else int(limit))
        return jsonify({"object": "list", "data": data, "kept": observer.history.maxlen})

    return blueprint
