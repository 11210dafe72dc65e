"""mDNS: announcements → `Found`, and real zeroconf on loopback, in-process and across processes.

Network hygiene: every zeroconf here is bound to 127.0.0.1, never to the default (all
interfaces), which would multicast off the machine. Instance names are random per test so
that announcements left over from other runs cannot confuse one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import urllib.parse
import uuid
from collections.abc import Mapping

import pytest
import trio
import zeroconf

from nexus_trio.config import BackendType, DiscoverySettings
from nexus_trio.discovery.advertise import advertise, service_info_for
from nexus_trio.discovery.found import Found
from nexus_trio.discovery.mdns import (
    LLM_SERVICE_TYPE,
    OLLAMA_SERVICE_TYPE,
    _Event,
    _Handoff,
    _Ledger,
    found_from_service,
    run_mdns_browser,
)
from nexus_trio.errors import ConfigError

LOOPBACK = ("127.0.0.1",)
LLM = LLM_SERVICE_TYPE
NAME = "gpu-box." + LLM


def found(
    properties: Mapping[bytes, bytes | None] | None = None,
    *,
    service_type: str = LLM,
    name: str = NAME,
    addresses: tuple[str, ...] = ("10.0.0.7",),
    port: int = 8000,
) -> Found | None:
    return found_from_service(service_type, name, addresses, port, properties or {})


def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------------------
# Pure: TXT → Found.


@pytest.mark.parametrize(
    ("api_path", "url"),
    [
        (None, "http://10.0.0.7:8000"),
        (b"/", "http://10.0.0.7:8000"),
        (b"/v1", "http://10.0.0.7:8000"),  # adapters add /v1: it must never double
        (b"/v1/", "http://10.0.0.7:8000"),
        (b"v1", "http://10.0.0.7:8000"),
        (b"/llm/v1", "http://10.0.0.7:8000/llm"),
        (b"/llm", "http://10.0.0.7:8000/llm"),
        (b"//llm//v1//", "http://10.0.0.7:8000/llm"),
        (b"/a b?x#y", "http://10.0.0.7:8000/a%20b%3Fx%23y"),  # cannot smuggle a query in
        (b"@evil.example/v1", "http://10.0.0.7:8000/@evil.example"),  # host stays ours
        (b"/my%20llm/v1", "http://10.0.0.7:8000/my%20llm"),
        (b"/%zz", "http://10.0.0.7:8000/%25zz"),  # a broken escape is escaped
    ],
)
def test_api_path_is_joined_without_doubling_v1(api_path: bytes | None, url: str) -> None:
    props = {} if api_path is None else {b"api_path": api_path}
    result = found(props)
    assert result is not None
    assert result.url == url


def test_full_announcement() -> None:
    result = found(
        {b"type": b"vllm", b"api_path": b"/v1", b"version": b"0.6.3", b"models": b"a, b,,a,c"}
    )
    assert result == Found(
        source="mdns",
        url="http://10.0.0.7:8000",
        type=BackendType.VLLM,
        name="gpu-box",
        version="0.6.3",
        models=("a", "b", "c"),
    )


@pytest.mark.parametrize(
    ("service_type", "declared", "expected"),
    [
        (LLM, None, None),  # fingerprint it
        (LLM, b"llamacpp", BackendType.LLAMACPP),
        (LLM, b" LMStudio ", BackendType.LMSTUDIO),
        (LLM, b"no-such-server", None),
        (LLM, b"", None),
        (OLLAMA_SERVICE_TYPE, None, BackendType.OLLAMA),  # the service type says it
        (OLLAMA_SERVICE_TYPE, b"mystery", BackendType.OLLAMA),
        (OLLAMA_SERVICE_TYPE, b"exo", BackendType.EXO),  # an explicit type wins
    ],
)
def test_type(service_type: str, declared: bytes | None, expected: BackendType | None) -> None:
    props = {} if declared is None else {b"type": declared}
    result = found(props, service_type=service_type, name="x." + service_type)
    assert result is not None
    assert result.type is expected
    assert result.name == "x"


@pytest.mark.parametrize(
    ("addresses", "host"),
    [
        (("fe80::1", "2001:db8::7", "10.0.0.7"), "10.0.0.7"),  # IPv4 preferred
        (("2001:db8::7",), "[2001:db8::7]"),
        (("fe80::1%eth0",), "[fe80::1%25eth0]"),  # RFC 6874 zone in a URL
        (("169.254.1.1", "10.0.0.7"), "10.0.0.7"),  # link-local last
        (("not-an-ip", "0.0.0.0", "224.0.0.251", "127.0.0.1"), "127.0.0.1"),
    ],
)
def test_address_choice(addresses: tuple[str, ...], host: str) -> None:
    result = found(addresses=addresses)
    assert result is not None
    assert result.url == f"http://{host}:8000"


@pytest.mark.parametrize(
    ("addresses", "port"),
    [
        ((), 8000),
        (("fe80::1",), 8000),
        (("junk",), 8000),
        (("10.0.0.7",), 0),
        (("10.0.0.7",), 70000),
    ],
)
def test_unusable_service_is_none(addresses: tuple[str, ...], port: int) -> None:
    assert found(addresses=addresses, port=port) is None


@pytest.mark.parametrize(
    "properties",
    [
        {b"type": b"\xff\xfe\x00", b"version": b"\xc3\x28" * 10, b"models": b"\x80,\x81"},
        {b"version": b"v" * 1_000_000, b"models": b",".join([b"m"] * 100_000)},
        {b"api_path": b"/\x00\r\n" + b"\xff" * 5000, b"": b"x", b"\xff": None},
        {b"TYPE": b"ollama", b"type": b"vllm", b"Version": b"1\r\nforged log line"},
        {b"type": None, b"api_path": None, b"models": None},
    ],
)
def test_hostile_txt_never_raises(properties: dict[bytes, bytes | None]) -> None:
    result = found(properties, name="evil\x1b[31m\n" + "x" * 5000 + "." + LLM)
    assert result is not None
    assert result.url.startswith("http://10.0.0.7:8000")
    assert len(result.url) < 2400  # ≤ 255 characters of path, each ≤ 9 once escaped
    assert result.version is None or (len(result.version) <= 255 and "\n" not in result.version)
    assert len(result.models) <= 64
    assert result.name is not None
    assert len(result.name) <= 255
    assert "\n" not in result.name
    assert "\x1b" not in result.name


def test_hostile_mapping_never_raises() -> None:
    class Broken(dict[bytes, bytes | None]):
        def items(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    weird: dict[object, object] = {1: 2, b"type": 3, "version": "str-ok"}
    assert found(Broken()) is not None
    assert found(weird) is not None  # type: ignore[arg-type]
    assert found(addresses=(None, 7, "10.0.0.7")) is not None  # type: ignore[arg-type]
    assert found(port=True) is None
    nameless = found(name="\x00\x01." + LLM)
    assert nameless is not None
    assert nameless.name is None


# ---------------------------------------------------------------------------------------------
# Pure: the announcement we send round-trips through what we browse.


@pytest.mark.parametrize(
    ("url", "type_", "expected_url"),
    [
        ("http://127.0.0.1:8000/v1", BackendType.VLLM, "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1/", BackendType.VLLM, "http://127.0.0.1:8000"),
        ("http://127.0.0.1:11434", BackendType.OLLAMA, "http://127.0.0.1:11434"),
        ("http://localhost:8080/llm/v1", None, "http://127.0.0.1:8080/llm"),
        ("http://[2001:db8::7]:1234", BackendType.LMSTUDIO, "http://[2001:db8::7]:1234"),
        ("https://10.1.2.3/api", BackendType.OPENAI, "https://10.1.2.3:443/api"),
        ("http://10.1.2.3", BackendType.GENERIC, "http://10.1.2.3:80"),
        ("http://10.1.2.3:5/my%20llm/v1", None, "http://10.1.2.3:5/my%20llm"),
    ],
)
def test_service_info_round_trips(url: str, type_: BackendType | None, expected_url: str) -> None:
    info = service_info_for(url, type_, "My GPU box #1", version="1.2", models=["a", "b:7b"])
    assert info.type == (OLLAMA_SERVICE_TYPE if type_ is BackendType.OLLAMA else LLM)
    assert info.name == "My-GPU-box-1." + info.type
    assert (b"api_path" in info.properties) == (urllib.parse.urlsplit(url).path.strip("/") != "")
    result = found_from_service(
        info.type, info.name, info.parsed_addresses(), info.port or 0, info.properties
    )
    assert result == Found(
        source="mdns",
        url=expected_url,
        type=type_,
        name="My-GPU-box-1",
        version="1.2",
        models=("a", "b:7b"),
    )


def test_service_info_fits_txt_strings_and_labels() -> None:
    models = [f"model-{i:03d}:latest" for i in range(100)] + ["with,comma", ""]
    info = service_info_for(
        "http://127.0.0.1:9/" + "p" * 400,
        None,
        "ü" * 10 + "x" * 100,
        version="é" * 300,  # two bytes each: the cut must not split one
        models=models,
        addresses=["192.0.2.1", "2001:db8::1"],
    )
    instance = info.name[: -len(LLM) - 1]
    assert instance == "x" * 63
    text = info.text
    pos = 0
    while pos < len(text):  # each TXT string is length-prefixed and ≤ 255 bytes by construction
        size = text[pos]
        text[pos + 1 : pos + 1 + size].decode()  # and still valid UTF-8
        pos += 1 + size
    assert info.properties[b"version"] == "é".encode() * 123
    listed = (info.properties[b"models"] or b"").split(b",")
    assert 10 < len(listed) < 100
    assert b"with" not in listed
    assert info.parsed_addresses() == ["192.0.2.1", "2001:db8::1"]
    assert service_info_for("http://127.0.0.1:9", None, "!!!").name == "nexus." + LLM


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/", "127.0.0.1:8000", "http://127.0.0.1:99999", "http://0.0.0.0:80"]
)
def test_service_info_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        service_info_for(url, None, "x")


# ---------------------------------------------------------------------------------------------
# Pure: ordering and de-duplication of reports.


def test_ledger_dedupes_orders_and_drops_stale() -> None:
    ledger = _Ledger()
    a = Found("mdns", "http://10.0.0.7:8000", name="a")
    moved = Found("mdns", "http://10.0.0.8:8000", name="a")
    g1 = ledger.begin("a")
    assert ledger.resolved("a", g1, a) == [a]
    g2 = ledger.begin("a")
    assert ledger.resolved("a", g2, a) == []  # same as last time: nothing
    g3 = ledger.begin("a")
    g4 = ledger.begin("a")
    assert ledger.resolved("a", g4, moved) == [Found("mdns", a.url, name="a", gone=True), moved]
    assert ledger.resolved("a", g3, a) == []  # finished late: older than what was used
    g5 = ledger.begin("a")
    assert ledger.removed("a") == [Found("mdns", moved.url, name="a", gone=True)]
    assert ledger.resolved("a", g5, a) == []  # began before the goodbye: cannot revive it
    assert ledger.removed("a") == []
    assert ledger.removed("never-seen") == []
    g6 = ledger.begin("a")
    assert ledger.resolved("a", g6, a) == [a]  # announced again


def test_ledger_reports_a_service_that_changes_faster_than_it_resolves() -> None:
    ledger = _Ledger()
    started = [ledger.begin("a") for _ in range(3)]  # three updates in flight
    first = Found("mdns", "http://10.0.0.7:8000", name="a", version="1")
    assert ledger.resolved("a", started[0], first) == [first]


async def test_handoff_never_raises_on_zeroconf_thread() -> None:
    send, receive = trio.open_memory_channel[_Event](1)
    handoff = _Handoff(send, trio.lowlevel.current_trio_token())

    def fire() -> None:  # as zeroconf's browser thread would
        for _ in range(3):
            handoff(
                zeroconf=None,
                service_type=LLM,
                name=NAME,
                state_change=zeroconf.ServiceStateChange.Added,
            )

    await trio.to_thread.run_sync(fire)
    assert handoff.dropped == 2  # the buffer holds one
    await send.aclose()
    await trio.to_thread.run_sync(fire)  # closed channel: dropped, not raised
    assert handoff.dropped == 5
    await receive.aclose()


# ---------------------------------------------------------------------------------------------
# Real zeroconf, on loopback only.


async def next_for(receive: trio.MemoryReceiveChannel[Found], name: str) -> Found:
    """The next report about `name`, skipping anything else on the network.

    Real zeroconf runs on its own threads and real multicast, so time is real here, and the
    10 s deadline guards against a hang only: an announcement arrives after zeroconf has
    probed its name (about 1.2 s), a goodbye at once; a backend that leaves without one is
    remembered for its record's TTL, minutes.
    """
    with trio.fail_after(10):
        async for item in receive:
            if item.name == name:
                return item
    raise AssertionError("the browser stopped")


async def test_announce_goodbye_and_announce_again_in_process(nursery: trio.Nursery) -> None:
    send, receive = trio.open_memory_channel[Found](64)
    settings = DiscoverySettings(interfaces=LOOPBACK)
    await nursery.start(run_mdns_browser, settings, send)
    name = unique_name()
    info_args = ("http://127.0.0.1:18080/v1", BackendType.LLAMACPP, name)
    expected = Found("mdns", "http://127.0.0.1:18080", BackendType.LLAMACPP, name, version="b4000")
    seen: list[Found] = []

    for _ in range(2):  # announce, goodbye, announce again: found again
        info = service_info_for(*info_args, version="b4000")
        advertising = trio.CancelScope()
        nursery.start_soon(advertise_in, advertising, [info])
        seen.append(await next_for(receive, name))
        assert seen[-1] == expected
        advertising.cancel()  # says goodbye
        seen.append(await next_for(receive, name))
        assert seen[-1] == Found("mdns", expected.url, expected.type, name, gone=True)

    # Re-announcements and their Updated events were de-duplicated away.
    assert [item.gone for item in seen] == [False, True, False, True]


async def advertise_in(scope: trio.CancelScope, infos: list[zeroconf.ServiceInfo]) -> None:
    with scope:
        await advertise(infos, LOOPBACK)


CHILD = textwrap.dedent(
    """
    import signal, sys, trio
    from nexus_trio.config import BackendType
    from nexus_trio.discovery.advertise import advertise, service_info_for

    async def main(url, name):
        info = service_info_for(url, BackendType.OLLAMA, name, models=["llama3:8b"])
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                names = await nursery.start(advertise, [info], ["127.0.0.1"])
                print("ready", *names, flush=True)
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()  # advertise says goodbye on its way out

    trio.run(main, sys.argv[1], sys.argv[2])
    """
)


async def test_announcer_in_another_process(nursery: trio.Nursery) -> None:
    name = unique_name()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD, "http://127.0.0.1:11434", name],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(10):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the announcer exited before it was ready"
                line += chunk
        assert line.split() == [b"ready", name.encode()]

        # Browsing starts after the announcement: the browser's query finds it.
        send, receive = trio.open_memory_channel[Found](64)
        await nursery.start(run_mdns_browser, DiscoverySettings(interfaces=LOOPBACK), send)
        first = await next_for(receive, name)
        assert first == Found(
            "mdns", "http://127.0.0.1:11434", BackendType.OLLAMA, name, models=("llama3:8b",)
        )

        process.send_signal(signal.SIGTERM)  # a graceful stop says goodbye
        goodbye = await next_for(receive, name)
        assert goodbye == Found(
            "mdns", "http://127.0.0.1:11434", BackendType.OLLAMA, name, gone=True
        )
        with trio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5, shield=True):
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()
