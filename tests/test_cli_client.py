"""`nexus backends|models|health`: pure rendering, the HTTP edge, and the real CLI against a
real Nexus (in-process on loopback, so the trio loop keeps serving while the CLI runs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from nexus_trio.cli.backends import BackendStatus, render_backend, render_backends
from nexus_trio.cli.client import (
    TOKEN_ENV_VAR,
    ClientError,
    Target,
    call,
    resolve_target,
    server_url,
)
from nexus_trio.cli.health import render_health
from nexus_trio.cli.models import render_models
from nexus_trio.cli.output import MAX_CELL_WIDTH, clean, display_width, render_json, render_table
from nexus_trio.config import ENV_VARS, Settings, settings_from_mapping
from nexus_trio.registry import Health
from nexus_trio.testing import Flavor

from helpers import Running, sim

NEXUS = [sys.executable, "-m", "nexus_trio"]
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b\u202e\n"


def control_free(text: str) -> bool:
    """Nothing a terminal would act on: no control character but the newline."""
    return not any(unicodedata.category(c) == "Cc" and c != "\n" for c in text)


# -- rendering (pure) -------------------------------------------------------------------------


def test_table_columns_line_up() -> None:
    text = render_table(
        ["name", "count", "url"],
        [["a", 1, "http://a"], ["longer-name", 1234, None]],
        right={1},
    )
    assert text.splitlines() == [
        "NAME         COUNT  URL",
        "a                1  http://a",
        "longer-name   1234  -",
    ]


def test_wide_characters_count_two_columns() -> None:
    assert display_width("模型") == 4
    assert display_width("e\u0301") == 1  # e + combining acute accent
    lines = render_table(["model", "n"], [["模型", 1], ["abcd", 2]]).splitlines()
    assert {display_width(line[: line.rindex(" ") + 1]) for line in lines} == {7}


def test_control_characters_are_shown_not_obeyed() -> None:
    shown = clean(f"evil{ESCAPES}name")
    assert control_free(shown)
    assert "\n" not in shown
    assert "\u202e" not in shown  # a bidi override would reorder what follows
    assert shown.startswith("evil\\x1b]0;pwned\\x07\\x1b[2J\\x9b\\u202e\\x0a")
    assert clean("café 模型 🦙") == "café 模型 🦙"
    assert clean("\udc80") == "\\udc80"  # a lone surrogate: stdout could not encode it
    assert clean(None) == "-"


def test_long_cells_are_cut() -> None:
    name = "n" * 200
    (_, row) = render_table(["name", "x"], [[name, "end"]]).splitlines()
    assert row.startswith("n" * (MAX_CELL_WIDTH - 1) + "…  ")
    assert row.endswith("end")


BACKEND: dict[str, Any] = {
    "name": "gpu-box",
    "url": "http://10.0.0.7:11434",
    "type": "ollama",
    "sources": ["admin", "mdns"],
    "status": "unhealthy",
    "detail": "connection refused",
    "priority": 2,
    "models": ["llama3:8b", "qwen2.5:7b"],
    "in_flight": 1,
    "max_concurrency": 4,
    "latency_ms": 182.4,
    "last_checked": "2024-05-01T10:00:00+00:00",
}


def test_backends_table() -> None:
    other = {**BACKEND, "name": "cpu", "status": "healthy", "detail": None, "latency_ms": 3.25}
    other.update(max_concurrency=None, sources=["config"], in_flight=0)
    assert render_backends([BACKEND, other]).splitlines() == [
        "NAME     TYPE    STATUS     MODELS  BUSY  LATENCY  PRIORITY  SOURCE      URL",
        "gpu-box  ollama  unhealthy       2   1/4   182 ms         2  admin,mdns  http://10.0.0.7:11434",
        "cpu      ollama  healthy         2     0   3.2 ms         2  config      http://10.0.0.7:11434",
        "",
        "  gpu-box: connection refused",
    ]  # fmt: skip


def test_an_ejected_backend_says_when_it_returns() -> None:
    ejected = {
        **BACKEND,
        "status": "ejected",
        "health": "healthy",
        "detail": "HTTP 500 from upstream",
        "ejected_until": "2024-05-01T10:04:10+00:00",
        "ejected_seconds": 249.6,
        "ejections": 3,
    }
    first = {
        **ejected,
        "name": "cpu",
        "ejections": 1,
        "ejected_seconds": 4.2,
        "health": "unhealthy",
    }
    lines = render_backends([ejected, first]).splitlines()
    assert [line.split()[2] for line in lines[1:3]] == ["ejected", "ejected"]
    assert lines[3:] == [
        "",
        "  gpu-box: ejected until 10:04:10 UTC, in 4m 10s (3 ejections in a row): "
        "HTTP 500 from upstream",
        "  cpu: ejected until 10:04:10 UTC, in 5s; its probes fail too: HTTP 500 from upstream",
    ]


def test_one_backend() -> None:
    assert render_backend(BACKEND, verb="Added backend").splitlines() == [
        "Added backend gpu-box (ollama) at http://10.0.0.7:11434",
        "  status:   unhealthy",
        "  detail:   connection refused",
        "  priority: 2",
        "  models:   llama3:8b, qwen2.5:7b",
    ]


def test_models_table() -> None:
    models = [
        {
            "id": "llama3:8b",
            "backends": ["a", "b"],
            "available": True,
            "context_length": 8192,
            "capabilities": ["tools", "json"],
        },
        {"id": "x", "backends": ["c"], "available": False, "context_length": None},
    ]
    assert render_models(models).splitlines() == [
        "MODEL      AVAILABLE  CONTEXT  CAPABILITIES  BACKENDS",
        "llama3:8b  yes           8192  tools,json    a, b",
        "x          no               -  -             c",
    ]


def test_health_summary_and_rows() -> None:
    health = {
        "status": "degraded",
        "backends": {
            "a": {"status": "healthy", "type": "vllm", "source": "config", "models": 2},
            "b": {"status": "unhealthy", "type": "ollama", "sources": ["mdns"], "models": 0,
                  "in_flight": 0, "detail": "timed out"},
        },
        "models": 2,
        "uptime_seconds": 3725.2,
        "version": "1.2.3",
    }  # fmt: skip
    assert render_health(health).splitlines() == [
        "Nexus 1.2.3 is degraded: 2 backends (1 healthy, 1 unhealthy), 2 models, up 1h 2m.",
        "",
        "BACKEND  STATUS     TYPE    SOURCE  MODELS  BUSY",
        "a        healthy    vllm    config       2     -",
        "b        unhealthy  ollama  mdns         0     0",
        "",
        "  b: timed out",
    ]


def test_empty_answers_say_what_to_do() -> None:
    assert "nexus backends add" in render_backends([])
    assert "nexus backends list" in render_models([])
    empty = render_health({"status": "unhealthy", "backends": {}, "models": 0, "version": "1"})
    assert empty.startswith("Nexus 1 is unhealthy: 0 backends, 0 models, up -.")
    assert "nexus backends add" in empty


def test_json_is_sorted_ascii_and_faithful() -> None:
    body = {"b": [1, {"z": None, "a": "模型\x1b"}], "a": True}
    text = render_json(body)
    assert text.isascii()
    assert control_free(text)
    assert json.loads(text) == body
    assert text.index('"a"') < text.index('"b"')


# What a server may put in any field: short text, numbers, and one level of lists and objects.
# Renderers look no deeper; a deeper value reaches them only through `str`. (Recursive values
# in a dozen fields, four objects over, made inputs so large that Hypothesis's health check
# failed on a fresh checkout.) The characters a terminal acts on, and those that mislead a
# reader (a bidi override, a lone surrogate, a line separator), are a sliver of Unicode:
# half of the characters are drawn from them.
risky = st.sampled_from("\x1b\x07\x9b\x00\r\n\t\x7f\u202e\u2028\udc80")
texts = st.text(st.characters(codec="utf-8") | risky, max_size=12)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(texts, scalars, max_size=3)


def shaped(keys: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the fields the renderer reads, all of them or some, each holding any JSON
    value (text most often: most fields are text, and text is what can carry an escape)."""
    value = texts | json_values
    return st.fixed_dictionaries(dict.fromkeys(keys, value)) | st.dictionaries(
        st.sampled_from(keys), value, max_size=len(keys)
    )


HEALTH_BACKEND = ["status", "type", "source", "sources", "models", "in_flight", "detail"]


@given(st.lists(shaped(list(BACKEND)), max_size=4))
def test_backends_render_whatever_the_server_sends(backends: list[dict[str, Any]]) -> None:
    assert control_free(render_backends(backends))


EJECTION = ["name", "health", "detail", "ejected_until", "ejected_seconds", "ejections"]


@given(st.lists(shaped(EJECTION).map(lambda b: {**b, "status": "ejected"}), max_size=4))
def test_ejected_backends_render_whatever_the_server_sends(backends: list[dict[str, Any]]) -> None:
    assert control_free(render_backends(backends))


@given(
    st.lists(shaped(["id", "backends", "available", "context_length", "capabilities"]), max_size=4)
)
def test_models_render_whatever_the_server_sends(models: list[dict[str, Any]]) -> None:
    assert control_free(render_models(models))


@given(
    shaped(["status", "models", "uptime_seconds", "version"]),
    st.dictionaries(texts, shaped(HEALTH_BACKEND), min_size=1, max_size=3) | json_values,
)
def test_health_renders_whatever_the_server_sends(health: dict[str, Any], backends: Any) -> None:
    assert control_free(render_health({**health, "backends": backends}))


# -- where the server is ----------------------------------------------------------------------


def settings(**server: Any) -> Callable[[], Settings]:
    return lambda: settings_from_mapping({"server": server})


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("0.0.0.0", 8000, "http://127.0.0.1:8000"),
        ("::", 9000, "http://[::1]:9000"),
        ("fe80::1", 9000, "http://[fe80::1]:9000"),
        ("gpu-box.lan", 0, "http://gpu-box.lan:8000"),
    ],
)
def test_the_url_comes_from_the_settings(host: str, port: int, url: str) -> None:
    assert server_url(settings_from_mapping({"server": {"host": host, "port": port}})) == url


def test_the_settings_token_goes_only_to_the_settings_server() -> None:
    load = settings(port=9100, admin_token="s3cret-admin-token")
    derived = resolve_target(None, None, load=load)
    assert (derived.url, derived.token) == ("http://127.0.0.1:9100", "s3cret-admin-token")
    assert "s3cret" not in repr(derived)
    assert resolve_target(None, "given-token", load=load).token == "given-token"
    elsewhere = resolve_target("http://gpu-box:8000/", None, load=load)
    assert (elsewhere.url, elsewhere.token) == ("http://gpu-box:8000", None)
    assert ENV_VARS[TOKEN_ENV_VAR] == "server.admin_token"  # one variable for both sides


def test_the_status_filter_knows_every_status() -> None:
    assert {s.value for s in BackendStatus} == {h.value for h in Health} | {"ejected"}


def test_broken_settings_mean_the_usual_address() -> None:
    def broken() -> Settings:
        return settings_from_mapping({"server": {"port": "eighty"}})

    assert resolve_target(None, None, load=broken) == Target("http://127.0.0.1:8000")


def test_nexus_toml_here_names_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nexus.toml").write_text(
        '[server]\nhost = "0.0.0.0"\nport = 9123\n\n'
        # The server's environment has this key; the client's need not.
        '[[backends]]\nname = "a"\nurl = "http://a:1"\napi_key_env = "NOT_SET_HERE_KEY"\n'
    )
    monkeypatch.delenv("NOT_SET_HERE_KEY", raising=False)
    assert resolve_target(None, None).url == "http://127.0.0.1:9123"
    monkeypatch.setenv("NEXUS_PORT", "9124")  # as `nexus serve` here would see it
    assert resolve_target(None, None).url == "http://127.0.0.1:9124"


@pytest.mark.parametrize("url", ["ftp://x", "http://", "http://host:port", "::1"])
def test_a_bad_url_is_a_usage_error(url: str) -> None:
    with pytest.raises(ClientError) as caught:
        resolve_target(url, None)
    assert caught.value.exit_code == 2
    assert resolve_target("localhost:9000", None).url == "http://localhost:9000"


# -- the HTTP edge ----------------------------------------------------------------------------


def answering(status: int, body: object, seen: list[httpx.Request] | None = None) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


def failing(exc: type[httpx.TransportError]) -> Any:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc("boom\nsecond line", request=request)

    return httpx.MockTransport(handle)


TARGET = Target("http://127.0.0.1:8000")


def test_the_token_is_sent_as_a_bearer() -> None:
    seen: list[httpx.Request] = []
    answer = call(Target(TARGET.url, "tok-12345"), "GET", "/x", transport=answering(200, {}, seen))
    assert answer == {}
    assert seen[0].headers["authorization"] == "Bearer tok-12345"
    call(TARGET, "GET", "/x", transport=answering(200, {}, seen))
    assert "authorization" not in seen[1].headers


def error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "x", "param": None, "code": None}}


@pytest.mark.parametrize(
    ("target", "status", "body", "expected"),
    [
        (TARGET, 409, error("already\nregistered"), "already registered"),
        (TARGET, 403, error("Needs a token."), f"token. (pass --token or set {TOKEN_ENV_VAR})"),
        (Target(TARGET.url, "wrong-token"), 403, error("Needs a token."), "Needs a token."),
        (TARGET, 502, "<html>Bad gateway</html>", "HTTP 502 Bad Gateway"),
        (TARGET, 500, {"error": "flat"}, "HTTP 500 Internal Server Error"),
        (TARGET, 200, "not json", "not a JSON object"),
        (TARGET, 200, [1, 2], "not a JSON object"),
    ],
)  # fmt: skip
def test_an_error_answer_is_one_line(
    target: Target, status: int, body: object, expected: str
) -> None:
    with pytest.raises(ClientError) as caught:
        call(target, "GET", "/x", transport=answering(status, body))
    assert expected in caught.value.message
    assert "\n" not in caught.value.message
    assert caught.value.exit_code == 1


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError, "no Nexus server at http://127.0.0.1:8000 (boom second line)"),
        (httpx.ConnectTimeout, "no Nexus server at http://127.0.0.1:8000 (no answer within"),
        (httpx.ReadTimeout, "did not answer within 30 s"),
        (httpx.RemoteProtocolError, "is that a Nexus server?"),
    ],
)
def test_no_server_is_one_line_saying_how_to_start_one(
    exc: type[httpx.TransportError], expected: str
) -> None:
    with pytest.raises(ClientError) as caught:
        call(TARGET, "GET", "/health", transport=failing(exc))
    message = caught.value.message
    assert expected in message
    assert "`nexus serve`" in message
    assert "\n" not in message


# -- the real CLI against a real Nexus --------------------------------------------------------


async def nexus_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    result: subprocess.CompletedProcess[bytes] = await trio.run_process(
        [*NEXUS, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=cwd,
        env=env,
    )
    return result


async def nexus_cli_all(
    runs: Sequence[Sequence[str]], cwd: Path
) -> list[subprocess.CompletedProcess[bytes]]:
    """Several CLI runs at once (each is a process start: ~0.3 s)."""
    results: list[Any] = [None] * len(runs)

    async def one(i: int) -> None:
        results[i] = await nexus_cli(*runs[i], cwd=cwd)

    async with trio.open_nursery() as nursery:
        for i in range(len(runs)):
            nursery.start_soon(one, i)
    return results


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    out = result.stdout.decode()
    assert control_free(out)
    return out


def failed(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one stderr line of a failed run."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("nexus: error: ")
    return lines[0]


@asynccontextmanager
async def open_closed_port() -> AsyncIterator[int]:
    """A loopback port where nothing listens (bound, so no one else takes it meanwhile)."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
async def closed_port() -> AsyncIterator[int]:
    async with open_closed_port() as port:
        yield port


@pytest.fixture
async def fleet(start_nexus: Any, tmp_path: Path, closed_port: int) -> Running:
    """Nexus in front of two simulated servers and one that is down."""
    backends = [
        sim("alpha", Flavor.VLLM, "llama3:8b"),
        sim("beta", Flavor.OLLAMA, "llama3:8b", "qwen2.5:7b"),
        sim("down", Flavor.VLLM, "llama3:8b"),
    ]
    running: Running = await start_nexus(
        backends,
        backend_options={"down": {"url": f"http://127.0.0.1:{closed_port}"}},
        server={"state_file": str(tmp_path / "state.json")},
    )
    assert running.gateway.registry.get("down").health is Health.UNHEALTHY
    return running


async def test_backends_list_shows_the_registry(fleet: Running, tmp_path: Path) -> None:
    url = ["--url", fleet.url]
    table, as_json = await nexus_cli_all(
        [["backends", "list", *url], ["backends", "list", "--json", *url]], tmp_path
    )
    listed = {b["name"]: b for b in json.loads(ok(as_json))["backends"]}
    registry = fleet.gateway.registry
    assert set(listed) == {b.name for b in registry} == {"alpha", "beta", "down"}
    for backend in registry:
        shown = listed[backend.name]
        assert shown["url"] == backend.url
        assert shown["type"] == backend.type.value
        assert shown["status"] == backend.health.value
        assert shown["models"] == sorted(backend.models)
        assert shown["in_flight"] == backend.in_flight

    lines = ok(table).splitlines()
    assert lines[0].split() == [
        "NAME", "TYPE", "STATUS", "MODELS", "BUSY", "LATENCY", "PRIORITY", "SOURCE", "URL"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["alpha"][:4] == ["alpha", "vllm", "healthy", "1"]
    assert rows["beta"][:4] == ["beta", "ollama", "healthy", "2"]
    assert rows["down"][:4] == ["down", "vllm", "unhealthy", "0"]
    assert lines[4] == ""
    assert lines[5].startswith("  down: ")  # why it is down


async def test_backends_list_by_status(fleet: Running, tmp_path: Path) -> None:
    url = ["--url", fleet.url]
    unhealthy, healthy, unknown = await nexus_cli_all(
        [
            ["backends", "list", "--json", "--status", "unhealthy", *url],
            ["backends", "list", "--status", "healthy", *url],
            ["backends", "list", "--status", "unknown", *url],
        ],
        tmp_path,
    )
    assert [b["name"] for b in json.loads(ok(unhealthy))["backends"]] == ["down"]
    assert sorted(line.split()[0] for line in ok(healthy).splitlines()[1:]) == ["alpha", "beta"]
    assert ok(unknown) == "No unknown backends.\n"


async def test_backends_list_shows_an_ejected_backend_and_its_return(
    start_nexus: Any, tmp_path: Path
) -> None:
    failing, fine = sim("failing"), sim("fine")
    running: Running = await start_nexus(
        [failing, fine],
        routing={"strategy": "priority"},
        backend_options={"fine": {"priority": 2}},
        health_check={"ejection_base_seconds": 300},  # still out when the CLI asks
    )
    failing.faults.status = 500  # its chat fails while its probes pass
    answer = await running.http.post("/v1/chat/completions", json={
        "model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}],
    })  # fmt: skip
    assert answer.headers["x-nexus-backend"] == "fine"
    url = ["--url", running.url]
    table, ejected = await nexus_cli_all(
        [["backends", "list", *url], ["backends", "list", "--json", "--status", "ejected", *url]],
        tmp_path,
    )
    lines = ok(table).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert rows["failing"][2] == "ejected"
    assert rows["fine"][2] == "healthy"
    assert re.fullmatch(
        r"  failing: ejected until \d\d:\d\d:\d\d UTC, in \dm \d+s: answered HTTP 500: .*", lines[4]
    ), lines[4]
    (shown,) = json.loads(ok(ejected))["backends"]
    assert (shown["name"], shown["health"], shown["ejections"]) == ("failing", "healthy", 1)
    assert 0 < shown["ejected_seconds"] <= 300


async def test_models_and_by_backend(fleet: Running, tmp_path: Path) -> None:
    url = ["--url", fleet.url]
    everything, of_alpha, table, of_beta = await nexus_cli_all(
        [
            ["models", "--json", *url],
            ["models", "--json", "--backend", "alpha", *url],
            ["models", *url],
            ["models", "--backend", "beta", *url],
        ],
        tmp_path,
    )
    expected: dict[str, set[str]] = {}
    for backend in fleet.gateway.registry:
        for model in backend.models:
            expected.setdefault(model, set()).add(backend.name)
    models = json.loads(ok(everything))["models"]
    assert {m["id"]: set(m["backends"]) for m in models} == expected
    assert all(m["available"] for m in models)
    assert [m["id"] for m in json.loads(ok(of_alpha))["models"]] == ["llama3:8b"]

    lines = ok(table).splitlines()
    assert lines[0].split() == ["MODEL", "AVAILABLE", "CONTEXT", "CAPABILITIES", "BACKENDS"]
    assert {line.split()[0] for line in lines[1:]} == {"llama3:8b", "qwen2.5:7b"}
    assert "alpha, beta" in next(line for line in lines if line.startswith("llama3:8b"))
    assert {line.split()[0] for line in ok(of_beta).splitlines()[1:]} == {
        "llama3:8b",
        "qwen2.5:7b",
    }


async def test_health_says_the_status_and_exits_0(
    fleet: Running, start_nexus: Any, tmp_path: Path, closed_port: int
) -> None:
    table, as_json = await nexus_cli_all(
        [["health", "--url", fleet.url], ["health", "--json", "--url", fleet.url]], tmp_path
    )
    reported = json.loads(ok(as_json))
    now = await fleet.health()
    for body in (reported, now):
        body.pop("uptime_seconds")
    assert reported == now
    lines = ok(table).splitlines()
    assert lines[0].startswith("Nexus ")
    assert " is degraded: 3 backends (2 healthy, 1 unhealthy), 2 models, up " in lines[0]
    assert lines[2].split() == ["BACKEND", "STATUS", "TYPE", "SOURCE", "MODELS", "BUSY"]

    # Nothing can serve: the server answers 503, and that is still an answer.
    dead = await start_nexus(
        [sim("gone")],
        backend_options={"gone": {"url": f"http://127.0.0.1:{closed_port}"}},
        server={"state_file": str(tmp_path / "dead.json")},
    )
    assert (await dead.http.get("/health")).status_code == 503
    result = await nexus_cli("health", "--url", dead.url, cwd=tmp_path)
    assert "is unhealthy: 1 backend (1 unhealthy)" in ok(result)


async def test_add_a_server_route_to_it_then_remove_it(
    fleet: Running, nursery: trio.Nursery, tmp_path: Path
) -> None:
    extra = sim("extra", Flavor.VLLM, "phi3:mini")
    extra_url = await nursery.start(extra.serve)
    url = ["--url", fleet.url]
    added = ok(
        await nexus_cli(
            "backends", "add", extra_url, "--name", "extra", "--type", "vllm",
            "--priority", "2", *url, cwd=tmp_path,
        )
    )  # fmt: skip
    assert added.splitlines()[0] == f"Added backend extra (vllm) at {extra_url}"
    assert "  models:   phi3:mini" in added
    assert "extra" in fleet.gateway.registry
    assert fleet.gateway.registry.get("extra").priority == 2

    chat = {"model": "phi3:mini", "messages": [{"role": "user", "content": "Hi"}]}
    answer = await fleet.http.post("/v1/chat/completions", json=chat)
    assert answer.status_code == 200
    assert answer.headers["x-nexus-backend"] == "extra"

    async with open_closed_port() as nowhere:
        again, nothing_there, listed = await nexus_cli_all(
            [
                ["backends", "add", extra_url, *url],
                ["backends", "add", f"http://127.0.0.1:{nowhere}", *url],
                ["backends", "list", "--json", *url],
            ],
            tmp_path,
        )
    assert "already registered" in failed(again)
    failed(nothing_there)
    (shown,) = [b for b in json.loads(ok(listed))["backends"] if b["name"] == "extra"]
    assert shown["sources"] == ["admin"]
    assert shown["models"] == ["phi3:mini"]

    removed = await nexus_cli("backends", "remove", "extra", "--json", *url, cwd=tmp_path)
    assert json.loads(ok(removed)) == {"removed": "extra"}
    assert "extra" not in fleet.gateway.registry
    assert (await fleet.http.post("/v1/chat/completions", json=chat)).status_code == 404
    gone = await nexus_cli("backends", "remove", "extra", *url, cwd=tmp_path)
    assert "No backend is named 'extra'" in failed(gone)


async def test_add_with_json_and_remove_with_a_message(fleet: Running, tmp_path: Path,
                                                       nursery: trio.Nursery) -> None:  # fmt: skip
    extra_url = await nursery.start(sim("another", Flavor.OLLAMA, "gemma:2b").serve)
    added = await nexus_cli(
        "backends", "add", extra_url, "--name", "odd/name", "--json", "--url", fleet.url,
        cwd=tmp_path,
    )  # fmt: skip
    backend = json.loads(ok(added))["backend"]
    assert (backend["name"], backend["type"], backend["models"]) == (
        "odd/name",
        "ollama",
        ["gemma:2b"],
    )
    # The name is quoted into the path, so a "/" in it stays part of the name.
    removed = await nexus_cli("backends", "remove", "odd/name", "--url", fleet.url, cwd=tmp_path)
    assert ok(removed) == "Removed backend odd/name.\n"
    assert "odd/name" not in fleet.gateway.registry


async def test_the_admin_token(start_nexus: Any, tmp_path: Path) -> None:
    token = "s3cret-admin-token"
    running = await start_nexus(
        [sim("alpha")], server={"admin_token": token, "state_file": str(tmp_path / "s.json")}
    )
    url = ["backends", "list", "--url", running.url]
    env = {**os.environ, TOKEN_ENV_VAR: token}
    without, wrong, flag = await nexus_cli_all(
        [url, [*url, "--token", "not-the-token"], [*url, "--token", token]], tmp_path
    )
    assert f"(pass --token or set {TOKEN_ENV_VAR})" in failed(without)
    assert "Authorization: Bearer" in failed(wrong)
    assert "--token" not in failed(wrong)
    assert "alpha" in ok(flag)
    assert "alpha" in ok(await nexus_cli(*url, cwd=tmp_path, env=env))

    # Next to the server's own nexus.toml, neither the URL nor the token need saying.
    port = running.url.rsplit(":", 1)[1]
    (tmp_path / "nexus.toml").write_text(
        f'[server]\nhost = "0.0.0.0"\nport = {port}\nadmin_token = "{token}"\n'
    )
    assert "alpha" in ok(await nexus_cli("backends", "list", cwd=tmp_path))


async def test_the_url_from_the_environment(start_nexus: Any, tmp_path: Path) -> None:
    running = await start_nexus([sim("alpha")], server={"state_file": str(tmp_path / "s.json")})
    env = {**os.environ, "NEXUS_URL": running.url}
    assert "is healthy" in ok(await nexus_cli("health", cwd=tmp_path, env=env))


async def test_odd_names_are_printed_safely(start_nexus: Any, tmp_path: Path) -> None:
    evil = "evil\x1b]0;pwned\x07\x1b[2J\u202e"
    long = "x" * 300
    running = await start_nexus(
        [sim(evil, Flavor.VLLM, "m\x1b[31m"), sim(long)],
        server={"state_file": str(tmp_path / "s.json")},
    )
    url = ["--url", running.url]
    runs = [
        ["backends", "list", *url],
        ["models", *url],
        ["health", *url],
        ["backends", "list", "--json", *url],
    ]
    backends, models, health, as_json = await nexus_cli_all(runs, tmp_path)
    for result in (backends, models, health):
        out = ok(result)
        assert "\u202e" not in out
        assert "evil\\x1b]0;pwned\\x07" in out
        assert long not in out
        assert max(display_width(line) for line in out.splitlines()) < 200
    assert len(ok(backends).splitlines()) == 3  # header and one line per backend
    assert {b["name"] for b in json.loads(ok(as_json))["backends"]} == {evil, long}


async def test_no_server_is_one_line_and_exit_1(closed_port: int, tmp_path: Path) -> None:
    url = ["--url", f"http://127.0.0.1:{closed_port}"]
    runs = [  # every command once, with and without --json
        ["backends", "list", "--json", "--status", "healthy", *url],
        ["backends", "add", "http://127.0.0.1:11434", *url],
        ["backends", "remove", "alpha", *url],
        ["models", *url],
        ["health", "--json", *url],
    ]
    for result in await nexus_cli_all(runs, tmp_path):
        line = failed(result)
        assert f"no Nexus server at http://127.0.0.1:{closed_port}" in line
        assert "`nexus serve`" in line
        assert "`nexus serve --demo`" in line
