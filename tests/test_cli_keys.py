"""API keys and usage: ``/admin/keys`` and ``/admin/usage`` on a real Nexus on loopback, their
validation (hypothesis for the pure part), and ``nexus keys`` / ``nexus usage`` run as users
run them, against that Nexus."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from nexus_trio.api.admin_keys import read_limits, read_since
from nexus_trio.cli.keys import limits_body, period_start
from nexus_trio.config import Priority, Privacy
from nexus_trio.errors import RequestError
from nexus_trio.store.base import UsageRecord

from helpers import Running, sim

NEXUS = [sys.executable, "-m", "nexus_trio"]
LIMIT_FIELDS = (
    "rpm",
    "tpm",
    "concurrency",
    "budget_usd",
    "period",
    "models",
    "privacy",
    "priority",
)


@pytest.fixture
async def nexus(start_nexus: Any) -> Running:
    running: Running = await start_nexus([sim("alpha")])
    return running


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI-shaped error of a response, after checking its status."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


# -- the admin API ----------------------------------------------------------------------------


async def test_a_key_is_shown_once_and_its_hash_never(nexus: Running) -> None:
    made = await nexus.http.post(
        "/admin/keys", json={"name": "ci", "rpm": 60, "models": ["llama3:*"], "privacy": "local"}
    )
    assert made.status_code == 201, made.text
    view = made.json()
    key = view.pop("key")
    assert key.startswith("nx-")
    assert key.startswith(view["prefix"])
    assert len(key) > 20
    record = nexus.gateway.keyring.find(key)
    assert record is not None
    assert record.name == "ci"
    assert (record.rpm, record.models, record.privacy) == (60, ("llama3:*",), Privacy.LOCAL)
    assert view == {
        "name": "ci",
        "prefix": record.prefix,
        "created_at": datetime.fromtimestamp(record.created_at, UTC).isoformat(timespec="seconds"),
        "revoked": False,
        "limits": {
            "rpm": 60,
            "tpm": None,
            "concurrency": None,
            "budget_usd": None,
            "period": "month",
            "models": ["llama3:*"],
            "privacy": "local",
            "priority": "normal",
        },
    }
    assert view["created_at"].endswith("+00:00")

    listed = await nexus.http.get("/admin/keys")
    assert listed.json() == {"keys": [view]}
    for text in (made.text, listed.text):
        assert record.key_hash not in text
    assert key not in listed.text  # the key itself: only in the answer that made it


async def test_a_taken_name_is_409_revoked_or_not(nexus: Running) -> None:
    assert (await nexus.http.post("/admin/keys", json={"name": "ci"})).status_code == 201
    error = error_of(await nexus.http.post("/admin/keys", json={"name": "ci"}), 409)
    assert (error["param"], error["code"]) == ("name", "key_exists")
    assert (await nexus.http.delete("/admin/keys/ci")).status_code == 200
    error_of(await nexus.http.post("/admin/keys", json={"name": "ci"}), 409)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": 0}, "rpm"),
        ({"rpm": "60"}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"tpm": -5}, "tpm"),
        ({"concurrency": 1.5}, "concurrency"),
        ({"budget_usd": -0.01}, "budget_usd"),
        ({"budget_usd": "ten"}, "budget_usd"),
        ({"period": "week"}, "period"),
        ({"privacy": "cloud"}, "privacy"),
        ({"priority": "urgent"}, "priority"),
        ({"models": "llama3:*"}, "models"),
        ({"models": ["llama3:*", ""]}, "models"),
        ({"models": [3]}, "models"),
        ({"rmp": 5}, "rmp"),
        ({"name": None}, "name"),
        ({"name": "two words"}, "name"),
        ({"name": ""}, "name"),
    ],
)
async def test_a_bad_limit_is_400_naming_the_field(
    nexus: Running, body: dict[str, Any], param: str
) -> None:
    sent = {"name": "k", **body}
    error = error_of(await nexus.http.post("/admin/keys", json=sent), 400)
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert param in error["message"]
    patched = {k: v for k, v in body.items() if k != "name"} or {"name": "renamed"}
    assert (await nexus.http.post("/admin/keys", json={"name": "k"})).status_code == 201
    error_of(await nexus.http.patch("/admin/keys/k", json=patched), 400)
    assert next(iter(nexus.gateway.keyring)).rpm is None  # nothing changed


async def test_not_a_json_object_is_400(nexus: Running) -> None:
    error_of(await nexus.http.post("/admin/keys", content=b"[1, 2]"), 400)
    error_of(await nexus.http.post("/admin/keys", content=b"not json"), 400)


async def test_patch_changes_limits_and_null_lifts_one(nexus: Running) -> None:
    body = {"name": "ci", "rpm": 10, "tpm": 1000, "period": "day", "priority": "low"}
    assert (await nexus.http.post("/admin/keys", json=body)).status_code == 201
    changed = await nexus.http.patch(
        "/admin/keys/ci", json={"rpm": None, "period": None, "budget_usd": 2.5, "priority": "high"}
    )
    assert changed.status_code == 200, changed.text
    limits = changed.json()["limits"]
    assert limits["rpm"] is None
    assert limits["period"] == "month"
    assert (limits["tpm"], limits["budget_usd"], limits["priority"]) == (1000, 2.5, "high")
    record = nexus.gateway.keyring.get("ci")
    assert (record.rpm, record.tpm, record.budget_usd) == (None, 1000, 2.5)
    assert record.priority is Priority.HIGH


async def test_delete_revokes_and_the_key_stays_listed(nexus: Running) -> None:
    key = (await nexus.http.post("/admin/keys", json={"name": "old"})).json()["key"]
    revoked = await nexus.http.delete("/admin/keys/old")
    assert revoked.status_code == 200
    assert revoked.json()["revoked"] is True
    assert nexus.gateway.keyring.find(key) is None  # refused from now on
    (shown,) = (await nexus.http.get("/admin/keys")).json()["keys"]
    assert (shown["name"], shown["revoked"]) == ("old", True)
    assert (await nexus.http.delete("/admin/keys/old")).status_code == 200  # again: still revoked


async def test_an_unknown_name_is_404(nexus: Running) -> None:
    for response in (
        await nexus.http.patch("/admin/keys/nobody", json={"rpm": 5}),
        await nexus.http.delete("/admin/keys/nobody"),
    ):
        error = error_of(response, 404)
        assert (error["code"], error["param"]) == ("key_not_found", "name")
        assert "nobody" in error["message"]


async def test_the_key_routes_need_the_admin_token_when_one_is_set(start_nexus: Any) -> None:
    running: Running = await start_nexus([sim("alpha")], server={"admin_token": "s3cret-token"})
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/usage")):
        error_of(await running.http.request(method, path, json={"name": "x"}), 403)
    allowed = await running.http.get(
        "/admin/keys", headers={"Authorization": "Bearer s3cret-token"}
    )
    assert allowed.json() == {"keys": []}


def seed_usage(running: Running) -> float:
    """Usage for two keys and anonymous callers, one of it 40 days old; returns now."""
    now = time.time()
    old = now - 40 * 86400
    for at, key, model, backend, prompt, completion, cost in [
        (now, "ci", "llama3:8b", "alpha", 10, 5, 0.25),
        (now, "ci", "llama3:8b", "alpha", 20, 10, 0.5),
        (now, "ci", "qwen2.5:7b", "beta", 7, 3, 0.0),
        (now, "anonymous", "llama3:8b", "alpha", 1, 1, 0.0),
        (old, "ci", "llama3:8b", "alpha", 1000, 1000, 9.0),
        (old, "bob", "llama3:8b", "", 4, 0, 0.0),
    ]:
        running.gateway.store.record_usage(
            UsageRecord(at, key, model, backend, prompt, completion, cost, 200)
        )
    return now


async def test_usage_by_key_model_and_backend_with_totals(nexus: Running) -> None:
    now = seed_usage(nexus)
    everything = (await nexus.http.get("/admin/usage")).json()
    assert everything["totals"] == {
        "requests": 6,
        "prompt_tokens": 1042,
        "completion_tokens": 1019,
        "cost_usd": 9.75,
    }
    assert [(r["key"], r["model"], r["backend"]) for r in everything["rows"]] == [
        ("anonymous", "llama3:8b", "alpha"),
        ("bob", "llama3:8b", ""),
        ("ci", "llama3:8b", "alpha"),
        ("ci", "qwen2.5:7b", "beta"),
    ]
    today = datetime.fromtimestamp(now, UTC).date().isoformat()
    recent = (await nexus.http.get("/admin/usage", params={"key": "ci", "since": today})).json()
    assert recent["rows"] == [
        {"key": "ci", "model": "llama3:8b", "backend": "alpha", "requests": 2,
         "prompt_tokens": 30, "completion_tokens": 15, "cost_usd": 0.75},
        {"key": "ci", "model": "qwen2.5:7b", "backend": "beta", "requests": 1,
         "prompt_tokens": 7, "completion_tokens": 3, "cost_usd": 0.0},
    ]  # fmt: skip
    assert recent["totals"]["requests"] == 3
    for since in ("yesterday", "2024-13-01", "20240101"):
        error = error_of(await nexus.http.get("/admin/usage", params={"since": since}), 400)
        assert error["param"] == "since"


# -- the pure parts ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@given(st.sampled_from(LIMIT_FIELDS), json_values)
def test_a_limit_is_read_in_range_or_refused_by_name(field: str, value: object) -> None:
    try:
        limits = read_limits({field: value})
    except RequestError as exc:
        refused = exc
    else:
        refused = None
    if refused is not None:
        assert (refused.param, refused.status) == (field, 400)
        return
    read = limits[field]
    if value is None:
        return  # the default
    if field in ("rpm", "tpm", "concurrency"):
        assert type(read) is int
        assert read >= 1
    elif field == "budget_usd":
        assert isinstance(read, float)
        assert read >= 0
    elif field == "models":
        assert isinstance(read, tuple)
        assert all(isinstance(p, str) and p.strip() for p in read)
    else:
        assert read in {"day", "month", *Privacy, *Priority}


def test_since_is_midnight_utc() -> None:
    assert read_since("2024-03-01") == datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    assert read_since(None) is None


def test_the_cli_sends_only_what_was_given() -> None:
    assert limits_body() == {}
    assert limits_body(rpm=60, models="llama3:*, qwen*,", clear=["tpm"]) == {
        "rpm": 60,
        "models": ["llama3:*", "qwen*"],
        "tpm": None,
    }
    assert limits_body(models="") == {"models": []}  # every model
    assert period_start("month", date(2024, 5, 17)) == date(2024, 5, 1)
    assert period_start("day", date(2024, 5, 17)) == date(2024, 5, 17)


# -- the real CLI against a real Nexus --------------------------------------------------------


async def nexus_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    result: subprocess.CompletedProcess[bytes] = await trio.run_process(
        [*NEXUS, *args], capture_stdout=True, capture_stderr=True, check=False, cwd=cwd
    )
    return result


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return result.stdout.decode()


def failed(result: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    """The one stderr line of a failed run."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == b""
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("nexus: error: ")
    return line


async def test_keys_create_prints_the_key_once_and_how_to_use_it(
    nexus: Running, tmp_path: Path
) -> None:
    url = ["--url", nexus.url]
    args = ["--rpm", "60", "--budget-usd", "5", "--period", "day", "--models", "llama3:*,qwen*"]
    text = ok(
        await nexus_cli("keys", "create", "ci", *args, "--privacy", "local", *url, cwd=tmp_path)
    )
    key = next(word for word in text.split() if word.startswith("nx-"))
    record = nexus.gateway.keyring.find(key)
    assert record is not None
    assert record.name == "ci"
    assert (record.rpm, record.budget_usd, record.period) == (60, 5.0, "day")
    assert (record.models, record.privacy) == (("llama3:*", "qwen*"), Privacy.LOCAL)
    assert "cannot show it again" in text
    assert f'OpenAI(base_url="{nexus.url}/v1", api_key="{key}")' in text
    assert f"Authorization: Bearer {key}" in text

    made = json.loads(ok(await nexus_cli("keys", "create", "bot", "--json", *url, cwd=tmp_path)))
    assert nexus.gateway.keyring.find(made["key"]) is not None
    assert made["limits"]["rpm"] is None

    taken = failed(await nexus_cli("keys", "create", "ci", *url, cwd=tmp_path))
    assert "exists already" in taken
    bad = failed(await nexus_cli("keys", "create", "x y", *url, cwd=tmp_path))
    assert "'name'" in bad


async def test_keys_list_shows_limits_and_this_periods_usage(
    nexus: Running, tmp_path: Path
) -> None:
    await nexus.gateway.keyring.create("ci", rpm=60, budget_usd=5.0)
    await nexus.gateway.keyring.create("bob", period="day", models=("llama3:*",))
    await nexus.gateway.keyring.create("gone")
    await nexus.gateway.keyring.revoke("gone")
    seed_usage(nexus)
    url = ["--url", nexus.url]
    table = ok(await nexus_cli("keys", "list", *url, cwd=tmp_path))
    as_json = json.loads(ok(await nexus_cli("keys", "list", "--json", *url, cwd=tmp_path)))

    keys = {k["name"]: k for k in as_json["keys"]}
    assert list(keys) == ["bob", "ci", "gone"]
    for shown in keys.values():
        assert set(shown) == {"name", "prefix", "created_at", "revoked", "limits", "usage"}
    assert keys["gone"]["revoked"] is True
    ci = keys["ci"]["usage"]  # this month: the 40-day-old request is not in it
    assert (ci["requests"], ci["prompt_tokens"], ci["completion_tokens"]) == (3, 37, 18)
    assert ci["cost_usd"] == 0.75
    assert keys["bob"]["usage"]["requests"] == 0  # its only request is 40 days old
    assert keys["bob"]["usage"]["since"] == datetime.now(UTC).date().isoformat()

    lines = table.splitlines()
    assert lines[0].split() == [
        "NAME", "PREFIX", "STATUS", "RPM", "TPM", "CONCURRENCY", "BUDGET", "MODELS",
        "PRIVACY", "PRIORITY", "REQUESTS", "TOKENS", "COST",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["ci"][2:] == [
        "active", "60", "-", "-", "$5.00/month", "*", "any", "normal", "3", "55", "$0.7500"
    ]  # fmt: skip
    assert rows["bob"][7] == "llama3:*"
    assert rows["gone"][2] == "revoked"
    assert all(rows[name][1] == keys[name]["prefix"] for name in rows)


async def test_keys_update_and_revoke(nexus: Running, tmp_path: Path) -> None:
    await nexus.gateway.keyring.create("ci", rpm=60, tpm=1000)
    url = ["--url", nexus.url]
    text = ok(
        await nexus_cli(
            "keys", "update", "ci", "--priority", "high", "--clear", "rpm", *url, cwd=tmp_path
        )
    )
    assert text.startswith("Updated key ci (")
    record = nexus.gateway.keyring.get("ci")
    assert (record.rpm, record.tpm, record.priority) == (None, 1000, Priority.HIGH)
    changed = json.loads(
        ok(await nexus_cli("keys", "update", "ci", "--tpm", "5", "--json", *url, cwd=tmp_path))
    )
    assert changed["limits"]["tpm"] == 5
    nothing = failed(await nexus_cli("keys", "update", "ci", *url, cwd=tmp_path), code=2)
    assert "nothing to change" in nothing

    assert "Revoked key ci" in ok(await nexus_cli("keys", "revoke", "ci", *url, cwd=tmp_path))
    assert nexus.gateway.keyring.get("ci").revoked
    unknown = failed(await nexus_cli("keys", "revoke", "nobody", *url, cwd=tmp_path))
    assert "No key is named 'nobody'" in unknown


async def test_usage_table_and_json(nexus: Running, tmp_path: Path) -> None:
    now = seed_usage(nexus)
    url = ["--url", nexus.url]
    table = ok(await nexus_cli("usage", *url, cwd=tmp_path))
    lines = table.splitlines()
    assert lines[0] == "Usage:"
    assert lines[2].split() == [
        "KEY", "MODEL", "BACKEND", "REQUESTS", "PROMPT", "COMPLETION", "COST"
    ]  # fmt: skip
    assert lines[3].split() == ["anonymous", "llama3:8b", "alpha", "1", "1", "1", "$0.00"]
    assert lines[4].split() == ["bob", "llama3:8b", "-", "1", "4", "0", "$0.00"]
    assert lines[-1].split() == ["total", "6", "1042", "1019", "$9.75"]

    today = datetime.fromtimestamp(now, UTC).date().isoformat()
    args = ["--key", "ci", "--since", today, "--json"]
    body = json.loads(ok(await nexus_cli("usage", *args, *url, cwd=tmp_path)))
    assert {r["model"] for r in body["rows"]} == {"llama3:8b", "qwen2.5:7b"}
    assert body["totals"]["requests"] == 3

    none = ok(await nexus_cli("usage", "--key", "nobody", *url, cwd=tmp_path))
    assert none == "No usage by key nobody.\n"
    bad = failed(await nexus_cli("usage", "--since", "last week", *url, cwd=tmp_path))
    assert "YYYY-MM-DD" in bad
