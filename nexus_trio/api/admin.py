"""``/admin/``: see and change the fleet of a running Nexus, its keys, and what they used.

Who may call it: clients on loopback, unless ``server.admin_token`` (or
``NEXUS_ADMIN_TOKEN``) is set — then anyone with ``Authorization: Bearer
<token>``, and nobody without. The client address is the TCP peer's;
forwarding headers such as ``X-Forwarded-For`` are never trusted here.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import trio
from quart import Blueprint, Response, jsonify, request

from nexus_trio.api.admin_keys import (
    key_view,
    read_key_name,
    read_limits,
    read_since,
    refusal,
    usage_view,
)
from nexus_trio.catalog import model_entries
from nexus_trio.config import BackendType
from nexus_trio.discovery.found import Found
from nexus_trio.errors import (
    AdminForbidden,
    BackendError,
    BackendNotFound,
    NotAServer,
    RequestError,
)
from nexus_trio.gateway import Gateway
from nexus_trio.observe.views import engine_view
from nexus_trio.policy.keyring import KeyExists, UnknownKey
from nexus_trio.registry import Backend

__all__ = ["backend_view", "make_admin_blueprint"]


def backend_view(backend: Backend) -> dict[str, Any]:
    """One backend as the admin API and the CLI show it.

    ``status`` is ``"ejected"`` while the passive breaker keeps it out (``health`` is
    then what its probes say); ``ejected_until`` is when it returns (UTC), and
    ``ejected_seconds`` how long that is from now; ``ejections`` counts its ejections
    in a row, which a run of served requests forgives; ``engine`` is what the server
    last said of its load (`nexus_trio.observe.views.engine_view`); ``zone`` is
    ``local`` or ``cloud`` (a cloud one never serves a request that must stay local).
    """
    checked = backend.last_checked
    left = backend.ejected_seconds_left(trio.current_time())
    return {
        "name": backend.name,
        "url": backend.url,
        "type": backend.type.value,
        "zone": backend.zone.value,
        "sources": sorted(backend.sources),
        "status": backend.status,
        "health": backend.health.value,
        "detail": backend.status_detail or None,
        "ejected_until": None if left is None else _iso(time.time() + left),
        "ejected_seconds": None if left is None else round(left, 1),
        "ejections": backend.ejections,
        "priority": backend.priority,
        "models": sorted(backend.models),
        "warm_models": sorted(backend.warm_models) if backend.warm_models is not None else None,
        "engine": engine_view(backend.engine, time.time()),
        "in_flight": backend.in_flight,
        "max_concurrency": backend.max_concurrency,
        "latency_ms": None
        if backend.ttft_ewma_seconds is None
        else round(backend.ttft_ewma_seconds * 1000, 1),
        "last_checked": None if checked is None else _iso(checked),
    }


def _iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="seconds")


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def make_admin_blueprint(gateway: Gateway) -> Blueprint:
    admin = Blueprint("admin", __name__, url_prefix="/admin")
    token = gateway.settings.server.admin_token

    @admin.before_request
    async def authorize() -> None:
        if token is not None:
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                raise AdminForbidden("The admin API needs 'Authorization: Bearer <admin token>'.")
            return
        peer = (request.scope.get("client") or (None,))[0]
        if not _is_loopback(peer):
            raise AdminForbidden(
                "The admin API answers loopback clients only; set server.admin_token "
                "(NEXUS_ADMIN_TOKEN) to reach it from elsewhere."
            )

    @admin.get("/backends")
    async def list_backends() -> Response:
        return jsonify({"backends": [backend_view(b) for b in gateway.registry]})

    @admin.post("/backends")
    async def add_backend() -> tuple[Response, int]:
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise RequestError(
                "Send a JSON object with 'url' (and optionally 'name', 'type', 'priority').",
                param="url",
            )
        url = body["url"].strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(
                f"'url' must start with http:// or https://, got {url!r:.80}.", param="url"
            )
        kind = body.get("type")
        if kind is not None:
            try:
                kind = BackendType(str(kind).lower())
            except ValueError:
                allowed = ", ".join(t.value for t in BackendType)
                raise RequestError(f"'type' must be one of {allowed}.", param="type") from None
        name = body.get("name")
        if name is not None and (
            not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name)
        ):
            raise RequestError("'name' must be a non-empty name without spaces.", param="name")
        priority = body.get("priority")
        if priority is not None and (
            not isinstance(priority, int) or isinstance(priority, bool) or priority < 0
        ):
            raise RequestError("'priority' must be an integer ≥ 0.", param="priority")
        assert gateway.fleet is not None
        try:
            backend = await gateway.fleet.admit(
                Found("admin", url, kind, name=name), priority=priority
            )
        except BackendError as exc:
            raise NotAServer(f"{url} did not pass its first check: {exc.reason}.") from exc
        return jsonify({"backend": backend_view(backend)}), 201

    @admin.delete("/backends/<path:name>")
    async def remove_backend(name: str) -> Response:
        if name not in gateway.registry:
            raise BackendNotFound(
                f"No backend is named {name!r}; GET /admin/backends lists them.", param="name"
            )
        assert gateway.fleet is not None
        await gateway.fleet.remove(name)
        return jsonify({"removed": name})

    @admin.get("/models")
    async def list_models() -> Response:
        routing = gateway.settings.routing
        entries = model_entries(
            gateway.registry.backends, {}, routing.resolve_alias, gateway.created
        )
        return jsonify(
            {
                "models": [
                    {
                        k: e[k]
                        for k in ("id", "backends", "available", "context_length", "capabilities")
                    }
                    for e in entries
                ]
            }
        )

    # -- keys and their usage -----------------------------------------------------------------

    def unknown_key(name: str) -> RequestError:
        return refusal(
            f"No key is named {name!r}; GET /admin/keys lists them.",
            status=404,
            code="key_not_found",
            param="name",
        )

    async def json_object() -> dict[str, Any]:
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise RequestError("Send a JSON object of the key's limits.")
        return body

    @admin.get("/keys")
    async def list_keys() -> Response:
        return jsonify({"keys": [key_view(record) for record in gateway.keyring]})

    @admin.post("/keys")
    async def create_key() -> tuple[Response, int]:
        body = await json_object()
        name = read_key_name(body.get("name"))
        limits = read_limits(body, allowed=("name",))
        try:
            key, record = await gateway.keyring.create(name, **limits)
        except KeyExists:
            raise refusal(
                f"A key named {name!r} exists already (revoked ones keep their name); "
                "choose another name.",
                status=409,
                code="key_exists",
                param="name",
            ) from None
        return jsonify({**key_view(record), "key": key}), 201  # the only time it is shown

    @admin.patch("/keys/<path:name>")
    async def update_key(name: str) -> Response:
        limits = read_limits(await json_object())
        try:
            record = await gateway.keyring.update(name, **limits)
        except UnknownKey:
            raise unknown_key(name) from None
        return jsonify(key_view(record))

    @admin.delete("/keys/<path:name>")
    async def revoke_key(name: str) -> Response:
        try:
            record = await gateway.keyring.revoke(name)
        except UnknownKey:
            raise unknown_key(name) from None
        return jsonify(key_view(record))

    @admin.get("/usage")
    async def usage() -> Response:
        since = read_since(request.args.get("since"))
        key = request.args.get("key") or None
        rows = await gateway.store.usage(since=since, key=key)
        return jsonify(usage_view(rows))

    return admin
