"""Which kind of LLM server answers at a URL, told from a few cheap GETs.

:func:`fingerprint` sends every GET in :data:`PROBE_PATHS` at once, under one
deadline, and hands what came back to :func:`classify`, a pure function, so the
decision is tested on recorded answers without sockets. Nothing here ever asks
for a generation.

The evidence, checked in this order (the first match wins)::

    llamacpp  GET /props          an object with default_generation_settings, build_info
                                  or model_path (llama.cpp tools/server README)
    exo       GET /node_id        a JSON string, the node's peer id (exo master/api.py)
    lmstudio  GET /api/v0/models  LM Studio's list: entries with state, arch,
                                  compatibility_type (LM Studio REST API v0)
    vllm      GET /version        {"version": ...}, and every GET /v1/models entry is
                                  owned_by "vllm"
    localai   GET /readyz         200, and GET /v1/models is an OpenAI list (LocalAI)
    ollama    GET /               "Ollama is running"
    generic   GET /v1/models      an OpenAI list
    None      anything else: not an LLM server, or nothing answers

A Nexus (any answer carries ``X-Nexus-Via``, `nexus_trio.instance`) is told apart
whatever it looks like: `Fingerprint.nexus_via` holds its id, and `nexus_refusal`
says why it must not be added (callers decide: discovery, probing and admin adds
refuse it; a backend configured with its type in the config file is trusted).

Why this order:

- **A native endpoint proves the server itself**; ``owned_by`` in ``/v1/models``
  does not, because gateways relay it (a LiteLLM or a Nexus in front of a vLLM
  lists ``owned_by: "vllm"``). So a vLLM whose ``/version`` cannot be read is
  only ``generic``: the vLLM adapter's extras (``continue_final_message``,
  ``/metrics``) are not assumed of a server that cannot show it is one.
- **llama.cpp and LocalAI both default to port 8080.** llama.cpp has ``/props``
  and no ``/readyz``; LocalAI has ``/readyz`` and no ``/props``.
- **LocalAI can impersonate Ollama** (its ``GET /`` may say "Ollama is running"
  when its Ollama API is enabled), and Ollama has no ``/readyz``, so LocalAI is
  checked first.
- **LM Studio answers every path it does not serve with 200** and
  ``{"error": "Unexpected endpoint or method. (GET /props)"}``, so a status alone
  proves nothing: an answer whose JSON object has an ``error`` key counts as a
  refusal (:attr:`ProbeAnswer.ok`), and every check looks for its own fields.

A path still unanswered at the deadline is left out and the others decide; a
connection refused, reset or garbled on any path makes the whole answer None
(the server is stopping, or speaks no HTTP, and half its answers would pass it
off as something else).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import httpx
import trio

from nexus_trio.config import BackendType
from nexus_trio.instance import VIA_HEADER
from nexus_trio.registry import api_root
from nexus_trio.upstream.client import translate_httpx_error

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_BODY_BYTES",
    "PROBE_PATHS",
    "Fingerprint",
    "ProbeAnswer",
    "classify",
    "detected_version",
    "fingerprint",
    "nexus_refusal",
]

log = logging.getLogger("nexus.discovery")

DEFAULT_TIMEOUT_SECONDS: Final = 3.0
PROBE_PATHS: Final = (
    "/",
    "/api/version",
    "/props",
    "/version",
    "/v1/models",
    "/api/v0/models",
    "/node_id",
    "/readyz",
)
# A listing of hundreds of models is a few hundred KiB; anything longer is no answer
# we can use, and must not be read whole from whatever happens to listen on a port.
MAX_BODY_BYTES: Final = 1 << 20
_OLLAMA_BANNER: Final = "Ollama is running"
_ACCEPT: Final = {"accept": "application/json, text/plain;q=0.9, */*;q=0.5"}


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    """What one GET got: the status, the body parsed as JSON if it is JSON, and as text.

    Attributes:
        status: the HTTP status.
        data: the parsed JSON body, or None when the body is not JSON (or too long).
        text: the body decoded as UTF-8 (undecodable bytes replaced).
        via: the ``X-Nexus-Via`` header: the answer came from (or through) that Nexus.
    """

    status: int
    data: object = None
    text: str = ""
    via: str | None = None

    @classmethod
    def from_body(
        cls, status: int, body: bytes, *, complete: bool = True, via: str | None = None
    ) -> ProbeAnswer:
        """Parse a body; ``complete=False`` marks one cut at :data:`MAX_BODY_BYTES`."""
        text = body.decode("utf-8", errors="replace")
        data: object = None
        if complete:
            with contextlib.suppress(ValueError):  # not JSON: the text is all there is
                data = json.loads(text)
        return cls(status, data, text, via)

    @property
    def ok(self) -> bool:
        """A 2xx answer that is not an error object (LM Studio says 200 to everything)."""
        refused = isinstance(self.data, dict) and "error" in self.data
        return 200 <= self.status < 300 and not refused


@dataclass(frozen=True)
class Fingerprint:
    """A server recognised at ``url`` (its API root, without ``/v1``).

    Attributes:
        type: the wire family, which selects the adapter.
        version: the server's own version string, where it tells one.
        url: the API root, as :func:`nexus_trio.registry.api_root` normalises it.
        nexus_via: the instance id of the Nexus that answered, if one did (see
            `nexus_refusal`).
    """

    type: BackendType
    version: str | None
    url: str
    nexus_via: str | None = None


def nexus_refusal(found: Fingerprint, own_id: str | None) -> str | None:
    """Why the server ``found`` must not become a backend of the Nexus ``own_id``, or
    None when it is no Nexus.

    Itself (or a server that routes back to it) would loop every request; another
    Nexus is a gateway, not a backend: its failover would run under ours, and the
    moment it finds us the two route to each other.
    """
    if found.nexus_via is None:
        return None
    if found.nexus_via == own_id:
        return (
            f"{found.url} is this Nexus itself (or routes back to it: its answers carry "
            f"our X-Nexus-Via id); a gateway cannot be its own backend."
        )
    return (
        f"{found.url} is another Nexus (X-Nexus-Via {found.nexus_via}): a Nexus is a "
        "gateway, not a backend; adding one builds loops and double failover. Add the "
        "servers behind it instead (or configure it with its type in the config file)."
    )


# -- the decision (pure) ---------------------------------------------------------------------


def _ok_data(answers: Mapping[str, ProbeAnswer], path: str) -> object:
    answer = answers.get(path)
    return answer.data if answer is not None and answer.ok else None


def _model_entries(answers: Mapping[str, ProbeAnswer], path: str) -> list[dict[str, object]] | None:
    """The entries of an OpenAI-shaped list at ``path``, or None if it is not one."""
    payload = _ok_data(answers, path)
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return None
    entries: list[dict[str, object]] = []
    for entry in payload["data"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            return None
        entries.append(entry)
    return entries


def _is_llamacpp(answers: Mapping[str, ProbeAnswer]) -> bool:
    props = _ok_data(answers, "/props")
    if not isinstance(props, dict):
        return False
    # default_generation_settings is in every version; build_info and model_path in
    # newer ones (and the router mode's /props may lack the first).
    return isinstance(props.get("default_generation_settings"), dict) or any(
        isinstance(props.get(key), str) for key in ("build_info", "model_path")
    )


def _is_exo(answers: Mapping[str, ProbeAnswer]) -> bool:
    node_id = _ok_data(answers, "/node_id")
    return isinstance(node_id, str) and bool(node_id)


def _is_lmstudio(answers: Mapping[str, ProbeAnswer]) -> bool:
    entries = _model_entries(answers, "/api/v0/models")
    if entries is None:
        return False
    # An LM Studio with nothing downloaded lists nothing; otherwise its own fields show.
    own = ("state", "compatibility_type", "max_context_length")
    return not entries or any(key in entry for entry in entries for key in own)


def _is_vllm(answers: Mapping[str, ProbeAnswer]) -> bool:
    version = _ok_data(answers, "/version")
    if not isinstance(version, dict) or not isinstance(version.get("version"), str):
        return False
    entries = _model_entries(answers, "/v1/models")
    if not entries:
        return False
    # vLLM serves one model (plus its LoRA adapters), all owned_by "vllm".
    return all(entry.get("owned_by") == "vllm" for entry in entries)


def _is_localai(answers: Mapping[str, ProbeAnswer]) -> bool:
    ready = answers.get("/readyz")
    return ready is not None and ready.ok and _model_entries(answers, "/v1/models") is not None


def _is_ollama(answers: Mapping[str, ProbeAnswer]) -> bool:
    root = answers.get("/")
    return root is not None and root.ok and root.text.strip().startswith(_OLLAMA_BANNER)


_CHECKS: Final = (
    (BackendType.LLAMACPP, _is_llamacpp),
    (BackendType.EXO, _is_exo),
    (BackendType.LMSTUDIO, _is_lmstudio),
    (BackendType.VLLM, _is_vllm),
    (BackendType.LOCALAI, _is_localai),
    (BackendType.OLLAMA, _is_ollama),
    (BackendType.GENERIC, lambda answers: _model_entries(answers, "/v1/models") is not None),
)


def classify(answers: Mapping[str, ProbeAnswer]) -> BackendType | None:
    """The type of server that gave ``answers`` (by path), or None if it is no LLM server.

    A path missing from ``answers`` got no HTTP answer (refused, timed out,
    broken). Pure: no I/O.

    Example::

        classify({"/": ProbeAnswer(200, None, "Ollama is running")})  # BackendType.OLLAMA
    """
    for kind, check in _CHECKS:
        if check(answers):
            return kind
    return None


def detected_version(kind: BackendType, answers: Mapping[str, ProbeAnswer]) -> str | None:
    """The version the server of type ``kind`` tells in ``answers``, if it tells one.

    Ollama's ``/api/version``, llama.cpp's ``build_info`` (e.g. ``"b6795-5cca2542"``),
    and ``/version`` for vLLM, LocalAI and generic servers; LM Studio and exo
    tell none on these paths.
    """
    path, key = {
        BackendType.OLLAMA: ("/api/version", "version"),
        BackendType.LLAMACPP: ("/props", "build_info"),
        BackendType.VLLM: ("/version", "version"),
        BackendType.LOCALAI: ("/version", "version"),
        BackendType.GENERIC: ("/version", "version"),
    }.get(kind, ("", ""))
    payload = _ok_data(answers, path) if path else None
    value = payload.get(key) if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None


# -- the GETs ------------------------------------------------------------------------------------


async def _get(client: httpx.AsyncClient, url: str, headers: Mapping[str, str]) -> ProbeAnswer:
    async with client.stream("GET", url, headers=headers) as response:
        via = response.headers.get(VIA_HEADER)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return ProbeAnswer.from_body(
                    response.status_code, bytes(body), complete=False, via=via
                )
        return ProbeAnswer.from_body(response.status_code, bytes(body), via=via)


async def _collect(
    client: httpx.AsyncClient, root: str, headers: Mapping[str, str], timeout_seconds: float
) -> dict[str, ProbeAnswer] | None:
    """The answers by path, or None if a connection was refused, reset or garbled."""
    answers: dict[str, ProbeAnswer] = {}
    broken = False

    async def ask(path: str, everything: trio.CancelScope) -> None:
        nonlocal broken
        try:
            answers[path] = await _get(client, root + path, headers)
        except httpx.HTTPError as exc:
            log.debug("probe %s%s: %s", root, path, translate_httpx_error(root, exc))
            slow = isinstance(exc, httpx.TimeoutException)
            if slow and not isinstance(exc, httpx.ConnectTimeout):
                return  # this path is slow; the others may still tell
            # Refused, reset or not HTTP: the server is gone, going, or no web server,
            # and what other paths said meanwhile is not to be trusted (a vLLM stopping
            # mid-probe would pass for a generic server, its /version unanswered).
            broken = True
            everything.cancel()

    # One deadline for the lot: a server that answers some paths and hangs on others
    # is classified on what it said in time; one that says nothing is no server.
    with trio.move_on_after(timeout_seconds):
        async with trio.open_nursery() as nursery:
            for path in PROBE_PATHS:
                nursery.start_soon(ask, path, nursery.cancel_scope)
    return None if broken else answers


async def fingerprint(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    api_key: str | None = None,
) -> Fingerprint | None:
    """Tell which kind of LLM server answers at ``url``, from a few GETs at once.

    Every path in :data:`PROBE_PATHS` is asked concurrently, all under one
    deadline of ``timeout_seconds``; what answered in time decides (see
    :func:`classify`). Never sends a generation request.

    Args:
        client: the upstream client (:func:`nexus_trio.upstream.client.open_upstream_client`);
            its connect timeout applies per connection, the deadline to the whole.
        url: the server's base URL; a trailing ``/v1`` is ignored.
        timeout_seconds: the deadline for all the GETs together.
        api_key: sent as ``Authorization: Bearer`` to this server only, for
            servers that guard ``/v1/*`` with a key.

    Returns:
        The fingerprint, or None when nothing there is an LLM server we know:
        the port is closed, a connection broke (the server is stopping, or
        speaks no HTTP), nothing answered in time, or what answered is some
        other HTTP server. Never raises for those. Paths still unanswered at
        the deadline are left out, and the rest decide.

    Example::

        async with open_upstream_client(1.0) as client:
            found = await fingerprint(client, "http://127.0.0.1:11434")
            # Fingerprint(type=BackendType.OLLAMA, version='0.12.6', url='http://127.0.0.1:11434')
    """
    root = api_root(url)
    headers = dict(_ACCEPT)
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    answers = await _collect(client, root, headers, timeout_seconds)
    if answers is None:
        return None
    via = next((a.via for a in answers.values() if a.via is not None), None)
    kind = classify(answers)
    if kind is None and via is not None:
        kind = BackendType.GENERIC  # a Nexus with nothing to list is still a Nexus
    if kind is None:
        log.debug("probe %s: no LLM server (%d paths answered)", root, len(answers))
        return None
    return Fingerprint(kind, detected_version(kind, answers), root, via)
