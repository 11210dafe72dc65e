"""The processes of a benchmark run: the upstream and each contender in front of it.

Every server listens on 127.0.0.1 only, on a free port, and is a child of the suite
that is stopped in the suite's ``finally`` (``ProcessGroup.close``). Servers are pinned to
``SERVER_CORE`` and the upstream to ``CLIENT_CORE``, beside the load generators: with two
cores, the contender gets one to itself and everything it is measured against shares the
other, the same for every contender.

A contender that cannot be started (the binary is not installed, LiteLLM's virtual
environment cannot be built) comes back with ``missing`` set to the reason, so the report
can say so instead of leaving it out.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

UPSTREAM_SCRIPT: Final = Path(__file__).with_name("_upstream.py")
CLIENT_CORE: Final = 0
SERVER_CORE: Final = 1
# 1.106.12: 1.107.0 was withdrawn from PyPI as a compromised release, and the 1.110
# releases' `proxy` extra needs a `litellm-proxy` package that PyPI did not serve here.
LITELLM_VERSION: Final = "1.106.12"
LITELLM_KEY: Final = "sk-bench"
MODELS: Final = ("bench", "bench-whole", "bench-short", "bench-hold")
START_SECONDS: Final = 60.0  # LiteLLM imports for 10-20 s on a small machine
LITELLM_INSTALL_SECONDS: Final = 900.0
STOP_SECONDS: Final = 10.0


def pin(core: int) -> list[str]:
    """The prefix that pins a process to one core, when there are two cores or more."""
    taskset = shutil.which("taskset")
    if (os.cpu_count() or 1) >= 2 and taskset:
        return [taskset, "-c", str(core)]
    return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Contender:
    """One way of reaching the upstream: directly, or through a proxy.

    Attributes:
        name: ``direct``, ``nginx``, ``nexus`` or ``litellm``.
        url: base URL; chat requests go to ``url + "/v1/chat/completions"``.
        version: what was measured, for the report.
        headers: sent with every request (LiteLLM wants its key).
        process: the server's process (its children count too); None for ``direct``.
        missing: why it could not be measured; None when it runs.
    """

    name: str
    url: str = ""
    version: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    missing: str | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def chat_url(self) -> str:
        return self.url + "/v1/chat/completions"


class ProcessGroup:
    """Every child process of the run, stopped together (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
        stdout_pipe: bool = False,
    ) -> subprocess.Popen[bytes]:
        sink = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            process = subprocess.Popen(
                list(args),
                stdout=subprocess.PIPE if stdout_pipe else sink,
                stderr=sink,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # its own group: stopping it stops its workers too
            )
        finally:
            if log is not None and not isinstance(sink, int):
                sink.close()
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """Stop one process and its group, politely first."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_SECONDS)
        # A worker that outlived its leader is still in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.stdout is not None:
            process.stdout.close()

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
        self.processes.clear()


def read_first_line(process: subprocess.Popen[bytes], seconds: float) -> str:
    """The first line a child prints on stdout, waiting at most ``seconds``."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(seconds):
            raise RuntimeError(f"{process.args!r} printed nothing in {seconds:g} s")
    line = process.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError(f"{process.args!r} exited with {process.wait()}")
    return line


def wait_ready(
    contender: Contender, process: subprocess.Popen[bytes], seconds: float, log: Path | None
) -> None:
    """Poll until a chat request through ``contender`` answers 200, or fail with its log."""
    deadline = time.monotonic() + seconds
    body = {"model": "bench", "messages": [{"role": "user", "content": "ready?"}]}
    last = "no answer"
    with httpx.Client(timeout=5, headers=contender.headers) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                last = f"exited with {process.returncode}"
                break
            try:
                response = http.post(contender.chat_url, json=body)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-1500:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{contender.name} did not answer within {seconds:g} s ({last})\n{tail}")


def _launch(
    group: ProcessGroup,
    contender: Contender,
    port: int,
    seconds: float,
    log: Path,
    command: list[str],
    **spawn: Any,
) -> Contender:
    """Start ``contender``'s server with ``command`` on ``port`` and wait until it answers;
    one that does not within ``seconds`` is stopped and reported missing, with its log."""
    process = group.spawn(command, log=log, **spawn)
    contender.url = f"http://127.0.0.1:{port}"
    contender.process = process
    try:
        wait_ready(contender, process, seconds, log)
    except RuntimeError as exc:
        group.stop(process)
        contender.missing = f"{contender.name} did not start: {exc}"
    return contender


# -- the upstream ------------------------------------------------------------------------------


def start_upstream(
    group: ProcessGroup, chunks: int, short_chunks: int, period: float
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``_upstream.py`` on the client core; its base URL and its process."""
    process = group.spawn(
        [*pin(CLIENT_CORE), sys.executable, str(UPSTREAM_SCRIPT), "--chunks", str(chunks),
         "--short-chunks", str(short_chunks), "--period", str(period)],
        stdout_pipe=True,
    )  # fmt: skip
    return read_first_line(process, 20), process


# -- the contenders ----------------------------------------------------------------------------


def version_of(args: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(args), capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stdout + done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "unknown"


NGINX_CONF: Final = """\
# One worker, like one Nexus process; plain reverse proxy with keep-alive upstream.
worker_processes 1;
worker_rlimit_nofile 16384;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream bench {{
        server {upstream};
        keepalive 512;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def start_nginx(group: ProcessGroup, upstream: str, tmp: Path) -> Contender:
    contender = Contender("nginx")
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if binary is None:
        contender.missing = "nginx is not installed (Debian: apt-get install nginx)"
        return contender
    contender.version = version_of([binary, "-v"]).removeprefix("nginx version: ")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(tmp=tmp, upstream=upstream.removeprefix("http://"), port=port)
    )
    log = tmp / "nginx-stderr.log"
    return _launch(
        group, contender, port, 20, log,
        [*pin(SERVER_CORE), binary, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"),
         "-c", str(conf), "-g", "daemon off;"],
    )  # fmt: skip


NEXUS_CONF: Final = """\
[server]
host = "127.0.0.1"
port = {port}

[discovery]
enabled = false
probe_local = false
interfaces = ["127.0.0.1"]

[logging]
level = "warning"

[routing.timeouts]
stream_idle_seconds = 300.0   # the memory test holds streams open and silent

[[backends]]
name = "bench"
url = "{upstream}"
type = "generic"
"""


def nexus_command() -> list[str]:
    """``nexus`` as this interpreter runs it (``python -m nexus_trio`` is the same entry)."""
    return [sys.executable, "-m", "nexus_trio"]


def start_nexus(
    group: ProcessGroup, upstream: str, tmp: Path, *, name: str = "nexus", extra: str = ""
) -> Contender:
    """``nexus serve`` in front of ``upstream``; ``extra`` is TOML added to its config."""
    contender = Contender(name)
    try:
        import nexus_trio
    except ImportError as exc:
        contender.missing = f"nexus_trio is not importable: {exc}"
        return contender
    contender.version = nexus_trio.__version__
    port = free_port()
    conf = tmp / f"{name}.toml"
    conf.write_text(NEXUS_CONF.format(port=port, upstream=upstream) + extra)
    log = tmp / f"{name}.log"
    return _launch(
        group, contender, port, 30, log,
        [*pin(SERVER_CORE), *nexus_command(), "serve", "--config", str(conf)], cwd=tmp,
    )  # fmt: skip


def litellm_venv(version: str = LITELLM_VERSION) -> Path:
    return Path.home() / ".cache" / "nexus-trio" / f"litellm-{version}"


def ensure_litellm(version: str = LITELLM_VERSION) -> tuple[Path | None, str]:
    """LiteLLM's ``litellm`` command in its own virtual environment, built on first use.

    It is never a dependency of ours: it lives in ``~/.cache/nexus-trio/litellm-<version>/``
    with its own interpreter. Returns (path or None, why not).
    """
    venv = litellm_venv(version)
    binary = venv / "bin" / "litellm"
    if binary.exists():
        return binary, ""
    print(f"building LiteLLM {version}'s virtual environment in {venv} (once)", flush=True)
    log = venv.parent / f"{venv.name}.install.log"
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "wb") as out:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(venv)], check=True, stdout=out,
                stderr=out, timeout=120,
            )  # fmt: skip
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check",
                 f"litellm[proxy]=={version}"],
                check=True, stdout=out, stderr=out, timeout=LITELLM_INSTALL_SECONDS,
            )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:]
        shutil.rmtree(venv, ignore_errors=True)  # a half-built one would pass for installed
        return None, f"pip install litellm[proxy]=={version} failed: {errors[-1:] or exc}"
    return (binary, "") if binary.exists() else (None, f"no {binary} after pip install")


def start_litellm(group: ProcessGroup, upstream: str, tmp: Path) -> Contender:
    contender = Contender("litellm", headers={"Authorization": f"Bearer {LITELLM_KEY}"})
    binary, why = ensure_litellm()
    if binary is None:
        contender.missing = why
        return contender
    contender.version = LITELLM_VERSION
    port = free_port()
    # YAML is a superset of JSON, so no YAML writer is needed.
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": upstream + "/v1",
                    "api_key": "dummy",
                },
            }
            for model in MODELS
        ],
        "litellm_settings": {
            "telemetry": False,
            "drop_params": True,
            "request_timeout": 600,
            "turn_off_message_logging": True,
        },
        "general_settings": {"master_key": LITELLM_KEY, "disable_spend_logs": True},
    }
    conf = tmp / "litellm.yaml"
    conf.write_text(json.dumps(config, indent=2))
    env = {
        key: value
        for key, value in os.environ.items()
        # Nothing of the suite's own Python setup, and no database: LiteLLM without
        # DATABASE_URL runs with the master key alone.
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "DATABASE_URL")
    }
    env.update(
        LITELLM_MASTER_KEY=LITELLM_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no download of the model cost map at start
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        LITELLM_DONT_SHOW_FEEDBACK_BOX="true",
        DISABLE_ADMIN_UI="True",
        # Its default of 500 upstream connections per host would queue half of the 1,000
        # open streams of the memory test inside it; a user holding that many would raise it.
        AIOHTTP_CONNECTOR_LIMIT_PER_HOST="2000",
        AIOHTTP_CONNECTOR_LIMIT="4000",
        NO_PROXY="*",
    )
    log = tmp / "litellm.log"
    return _launch(
        group, contender, port, START_SECONDS, log,
        [*pin(SERVER_CORE), str(binary), "--config", str(conf), "--host", "127.0.0.1",
         "--port", str(port), "--num_workers", "1", "--telemetry", "False"],
        env=env, cwd=tmp,
    )  # fmt: skip


H11_RELAY_SCRIPT: Final = Path(__file__).with_name("_h11_relay.py")


def start_h11_relay(group: ProcessGroup, upstream: str, tmp: Path) -> Contender:
    """The prototype of `_h11_relay.py` (for `bench_stack.py`; not a contender of the suite)."""
    contender = Contender(
        "h11-relay", version=f"h11 {importlib.metadata.version('h11')}, prototype"
    )
    port = free_port()
    return _launch(
        group, contender, port, 30, tmp / "h11-relay.log",
        [*pin(SERVER_CORE), sys.executable, str(H11_RELAY_SCRIPT), "--port", str(port),
         "--upstream", upstream],
    )  # fmt: skip


STARTERS: Final[Mapping[str, Callable[[ProcessGroup, str, Path], Contender]]] = {
    "nginx": start_nginx,
    "nexus": start_nexus,
    "litellm": start_litellm,
    "h11-relay": start_h11_relay,
}
