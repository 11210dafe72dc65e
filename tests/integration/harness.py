"""The parts the integration tests share: llama-server and nexus processes, configs, clients."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

ALIAS = "smollm2"
CONTEXT = 4096
PARALLEL = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LlamaServer:
    """One llama-server process on loopback, which a test may kill and restart."""

    binary: Path
    model: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()  # more llama-server flags (``--embeddings``)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(self.binary), "-m", str(self.model), "--alias", ALIAS, "--host", "127.0.0.1",
             "--port", str(self.port), "-c", str(CONTEXT), "--parallel", str(PARALLEL),
             "-t", "1", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        listening = threading.Event()
        threading.Thread(target=self._read_log, args=(listening,), daemon=True).start()
        # llama-server says "listening on" once its model is loaded.
        if not listening.wait(60):
            raise AssertionError(f"llama-server on port {self.port} did not come up in 60 s")
        health = httpx.get(self.url + "/health", timeout=5)
        assert health.status_code == 200
        assert health.json().get("status") == "ok"

    def _read_log(self, listening: threading.Event) -> None:
        """Read the server's log to its end (so its pipe never fills), noting readiness."""
        process = self.process
        assert process is not None
        assert process.stderr is not None
        with process.stderr:
            for line in process.stderr:
                if b"listening on" in line:
                    listening.set()

    def kill(self) -> None:
        """SIGKILL: no goodbye, no closing of connections in flight."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()


class NexusProcess:
    """`nexus serve` as users run it, with its log read as it comes."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nexus_trio", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.log = ""
        self._lock = threading.Condition()
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()
        self.url = self.wait_for(r"listening on (http://\S+)").group(1)

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self.log += line.decode(errors="replace")
                self._lock.notify_all()

    def wait_for(self, pattern: str, within: float = 30, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + within
        with self._lock:
            while (match := re.compile(pattern).search(self.log, after)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"nexus never logged {pattern!r}:\n{self.log[-3000:]}")
                self._lock.wait(left)
        return match

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._pumping.join(5)  # the log is read to its end
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code


def config_for(*servers: LlamaServer, discovery: bool = False) -> str:
    """A Nexus config in front of ``servers`` (mDNS on loopback only if ``discovery``)."""
    text = (
        f"[discovery]\nenabled = {str(discovery).lower()}\n"
        'interfaces = ["127.0.0.1"]\nprobe_local = false\n'
        "[health_check]\ninterval_seconds = 1.0\nrecovery_threshold = 1\n"
        "[routing.timeouts]\nfirst_token_seconds = 20.0\nstream_idle_seconds = 5.0\n"
    )
    for i, server in enumerate(servers):
        text += f'[[backends]]\nname = "llama-{i}"\nurl = "{server.url}"\ntype = "llamacpp"\n'
    return text


def sdk(url: str) -> openai.OpenAI:
    """The official client for the server at ``url``, without retries."""
    return openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0, timeout=60)
