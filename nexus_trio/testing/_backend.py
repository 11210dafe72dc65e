"""``SimulatedBackend``: one simulated LLM server on a loopback port."""

from __future__ import annotations

import errno
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ._completions import error_payload
from ._http import Request, Responder, serve_http_connection
from ._ollama import ollama_name
from ._routes import LLAMACPP_SLOTS, ROUTES, VLLM_MAX_NUM_SEQS
from ._types import Faults, Flavor, SimModel, SimStats

__all__ = ["SimulatedBackend"]

# accept() failing for want of resources: wait and retry, as trio.serve_listeners does
_ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_RETRY_SECONDS = 0.1
_SERVER_HEADERS: Mapping[Flavor, tuple[tuple[str, str], ...]] = {
    Flavor.OLLAMA: (),
    Flavor.VLLM: (("server", "uvicorn"),),
    Flavor.LLAMACPP: (("server", "llama.cpp"),),
    Flavor.GENERIC: (),
    Flavor.LMSTUDIO: (),
    Flavor.EXO: (("server", "hypercorn-h11"),),
    Flavor.LOCALAI: (),
}


@dataclass(eq=False)
class SimulatedBackend:
    """A simulated LLM server that speaks the wire protocol of ``flavor``.

    Every flavour answers ``POST /v1/chat/completions`` (OpenAI chat completions,
    streamed or not, with tool calls and assistant-prefill continuation) with
    deterministic text (see :func:`expected_answer`); each adds the listing
    endpoints of the server it stands for. Faults flip at run time through
    :attr:`faults`; what happened is counted in :attr:`stats`.

    Attributes:
        flavor: which server to impersonate.
        models: the models served; ids must be unique.
        tokens_per_second: 0 streams as fast as possible; otherwise
            ``trio.sleep(1 / rate)`` before each content chunk.
        faults: the fault knobs (see :class:`Faults`).
        name: for logs and the demo; defaults to ``"sim-<flavor>"``.
        api_key: if set, every ``/v1/*`` request needs ``Authorization: Bearer <key>``.
        echo_prefill: repeat an assistant prefill at the start of its continuation,
            as llama.cpp does; ``None`` means "as the flavour does" (llama.cpp only).
        tool_arguments: tool name → the arguments a call to that tool carries, as a
            real model fills them from the conversation (a path it was told of, say);
            a tool named here is called in preference to the first one offered. Other
            tools get generated ones (each required parameter, typed).
        system_keeps_user_turn: system messages after the user's last message (Claude
            Code sends its environment notes so) leave the turn the user's, so a tool
            call may answer it, as a real model's would; by default only a conversation
            that ends with the user's message gets a tool call.
        parallel: requests the engine runs at once, beyond which they wait: llama.cpp's
            slots (``--parallel``, 2 here by default), vLLM's ``max_num_seqs`` (256).
        busy_elsewhere: requests of other clients the engine is working on now: its load
            reports (vLLM and llama.cpp ``/metrics``, llama.cpp ``/slots``) count them
            beside the requests answered here.
        llamacpp_metrics: llama.cpp serves ``/metrics``, as when started with
            ``--metrics``; without it, 501, as there.
        load_seconds: Ollama: a request for a model not loaded waits this long first (the
            server loads the weights), then the model is loaded (``/api/ps``) until
            :meth:`unload` or its keep-alive ends.

    Example::

        sim = SimulatedBackend(Flavor.VLLM, [SimModel("llama3:8b", tools=True)])
        async with trio.open_nursery() as nursery:
            url = await nursery.start(sim.serve)   # "http://127.0.0.1:<port>"
            ...
            nursery.cancel_scope.cancel()
    """

    flavor: Flavor
    models: Sequence[SimModel]
    tokens_per_second: float = 0.0
    faults: Faults = field(default_factory=Faults)
    name: str = ""
    api_key: str | None = None
    echo_prefill: bool | None = None
    tool_arguments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    system_keeps_user_turn: bool = False
    parallel: int | None = None
    busy_elsewhere: int = 0
    llamacpp_metrics: bool = False
    load_seconds: float = 0.0
    stats: SimStats = field(default_factory=SimStats)

    # run-time state
    models_by_id: dict[str, SimModel] = field(init=False, repr=False)
    loaded: dict[str, float] = field(init=False, repr=False, default_factory=dict)
    _host: str | None = field(init=False, repr=False, default=None)
    _port: int | None = field(init=False, repr=False, default=None)
    _nursery: trio.Nursery | None = field(init=False, repr=False, default=None)
    _accepting: trio.CancelScope | None = field(init=False, repr=False, default=None)
    _listeners: list[trio.SocketListener] = field(init=False, repr=False, default_factory=list)
    _connections: set[trio.CancelScope] = field(init=False, repr=False, default_factory=set)
    _drained: trio.Event | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.flavor = Flavor(self.flavor)
        if self.tokens_per_second < 0:
            raise ValueError(f"tokens_per_second must be >= 0, not {self.tokens_per_second}")
        self.name = self.name or f"sim-{self.flavor.value}"
        if self.echo_prefill is None:
            self.echo_prefill = self.flavor is Flavor.LLAMACPP
        self.set_models(self.models)

    def set_models(self, models: Sequence[SimModel]) -> None:
        """Serve ``models`` from now on (a model pulled or deleted while running).

        Raises:
            ValueError: two models share an id.
        """
        by_id: dict[str, SimModel] = {}
        for model in models:
            if model.id in by_id:
                raise ValueError(f"{self.name}: model id {model.id!r} is listed twice")
            by_id[model.id] = model
        if self.flavor is Flavor.OLLAMA:  # Ollama takes "name" for "name:latest" and back
            for model in models:
                alias = ollama_name(model.id)
                if alias == model.id and model.id.endswith(":latest"):
                    alias = model.id.removesuffix(":latest")
                by_id.setdefault(alias, model)
        self.models = tuple(models)
        self.models_by_id = by_id
        self.loaded = {m: t for m, t in self.loaded.items() if m in by_id}

    # -- where it listens ------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port; kept after :meth:`serve` returns, so it can serve there again."""
        if self._port is None:
            raise RuntimeError(f"{self.name} has not been started: run serve() first")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``"http://127.0.0.1:43121"`` (no ``/v1``)."""
        host = self._host or "127.0.0.1"
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def accepting(self) -> bool:
        """Whether the listening socket is open (see :meth:`refuse_connections`)."""
        return self._accepting is not None

    def mark_loaded(self, model_id: str) -> None:
        """Note that ``model_id`` answered a request (Ollama lists it in ``/api/ps``)."""
        self.loaded[model_id] = time.time()

    async def load(self, model_id: str) -> None:
        """Make ``model_id`` ready to answer: an Ollama that does not hold it loads it first
        (`load_seconds`); then it is loaded, its keep-alive started afresh."""
        if self.flavor is Flavor.OLLAMA and model_id not in self.loaded and self.load_seconds:
            await trio.sleep(self.load_seconds)
        self.mark_loaded(model_id)

    def unload(self, model_id: str) -> None:
        """Drop ``model_id`` from memory (Ollama's keep-alive ended, or another model
        needed the room): the next request for it loads it again."""
        self.loaded.pop(model_id, None)

    @property
    def engine_parallel(self) -> int:
        """Requests the engine runs at once (`parallel`, else the flavour's default)."""
        default = LLAMACPP_SLOTS if self.flavor is Flavor.LLAMACPP else VLLM_MAX_NUM_SEQS
        return self.parallel or default

    @property
    def engine_busy(self) -> int:
        """Requests the engine has now: those answered here and other clients'."""
        return self.stats.chat_in_flight + self.busy_elsewhere

    # -- lifecycle ---------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled.

        Port 0 picks a free port. Reports :attr:`url` through ``task_status`` once
        listening, so ``url = await nursery.start(sim.serve)``. On cancellation every
        connection is closed before this returns.

        Raises:
            RuntimeError: it is already serving.
            OSError: the address cannot be bound.
        """
        if self._nursery is not None:
            raise RuntimeError(f"{self.name} is already serving at {self.url}")
        listeners = await trio.open_tcp_listeners(port, host=host)
        self._host = host
        self._port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._start_accepting(listeners)
                task_status.started(self.url)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._accepting = None
            for listener in [*listeners, *self._listeners]:
                listener.socket.close()
            self._listeners = []

    async def refuse_connections(self) -> None:
        """Close the listening socket, so that connecting fails with ECONNREFUSED.

        Open connections are closed too (a chat stream on one counts as a
        disconnect); returns once they are.
        """
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        for listener in self._listeners:
            await listener.aclose()
        self._listeners = []
        if self._connections:
            self._drained = trio.Event()
            for scope in self._connections:
                scope.cancel()
            await self._drained.wait()

    async def accept_connections(self) -> None:
        """Listen again, on the same port, after :meth:`refuse_connections`.

        Raises:
            RuntimeError: :meth:`serve` is not running.
        """
        if self._nursery is None:
            raise RuntimeError(f"{self.name} is not serving: run serve() first")
        if self._accepting is not None:
            return
        listeners = await trio.open_tcp_listeners(self.port, host=self._host)
        self._start_accepting(listeners)

    def _start_accepting(self, listeners: list[trio.SocketListener]) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._accepting = scope
        self._listeners = listeners
        for listener in listeners:
            self._nursery.start_soon(self._accept_loop, listener, scope)

    async def _accept_loop(self, listener: trio.SocketListener, scope: trio.CancelScope) -> None:
        with scope:
            async with listener:
                while True:
                    try:
                        stream = await listener.accept()
                    except trio.ClosedResourceError:
                        return  # refuse_connections closed it
                    except OSError as exc:
                        if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                            raise
                        await trio.sleep(_ACCEPT_RETRY_SECONDS)
                        continue
                    assert self._nursery is not None
                    self._nursery.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                await serve_http_connection(stream, self._dispatch)
            finally:
                self._connections.discard(scope)
                if not self._connections and self._drained is not None:
                    self._drained.set()
                    self._drained = None

    # -- requests ------------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> bool:
        if self.api_key is None or not request.path.startswith("/v1/"):
            return False
        return request.headers.get("authorization") != f"Bearer {self.api_key}"

    async def _dispatch(self, request: Request, responder: Responder) -> None:
        self.stats.requests += 1
        self.stats.last_headers = dict(request.headers)
        responder.extra_headers = _SERVER_HEADERS[self.flavor]
        if self._unauthorized(request):
            message = "Incorrect API key provided. Send `Authorization: Bearer <key>`."
            payload = error_payload(Flavor.GENERIC, 401, message, code="invalid_api_key")
            await responder.send_json(401, payload)
            return
        methods = ROUTES[self.flavor].get(request.path)
        known = methods is not None and (
            request.method in methods or (request.method == "HEAD" and "GET" in methods)
        )
        if self.flavor is Flavor.LMSTUDIO and not known:
            # LM Studio answers a path or method it does not serve with 200 and an error
            # body, so that a client which trusts the status reads it as a success.
            message = f"Unexpected endpoint or method. ({request.method} {request.path})"
            await responder.send_json(200, {"error": message})
            return
        if methods is None:
            message = f"Not found: {request.path} is not served by {self.flavor.value}."
            payload = error_payload(Flavor.GENERIC, 404, message, code="not_found")
            await responder.send_json(404, payload)
            return
        route = methods.get(request.method)
        if route is None and request.method == "HEAD":
            route = methods.get("GET")
        if route is None:
            message = f"Method {request.method} is not allowed on {request.path}."
            payload = error_payload(Flavor.GENERIC, 405, message, code="method_not_allowed")
            allow = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else methods))
            await responder.send_json(405, payload, headers=[("allow", allow)])
            return
        await route(self, request, responder)
