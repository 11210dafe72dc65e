"""The dashboard in a real browser: headless Chromium, driven by Playwright, against the demo.

Playwright's sync API runs in one worker thread (``trio.to_thread.run_sync``); when
Nexus must act (a request, a backend going down, a restart) the script calls back
into trio with ``trio.from_thread.run``. Every check is one of Playwright's
auto-waiting ``expect`` assertions with a bounded timeout: no sleeps.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import zeroconf
from demo_nexus import Demo, StartDemo
from playwright.sync_api import Locator, Page, ViewportSize, expect, sync_playwright

from nexus_trio.discovery.advertise import advertise
from nexus_trio.observe.record import RequestRecord
from nexus_trio.testing import Flavor, SimModel, SimulatedBackend

pytestmark = pytest.mark.browser

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
DEMO_BACKENDS = ("demo-ollama", "demo-vllm", "demo-llamacpp")
# Chromium as root in a container: no sandbox; and nothing that reaches past loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
EXPECT_MS = 10_000
# mDNS names are chosen by whoever announces: this one is markup, and must stay text.
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">'
HOSTILE_MODEL = "<script>window.__pwned=2</script>"

T = TypeVar("T")


def call_trio(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """From the browser's thread: run ``fn`` in the test's trio run and return its result."""
    return trio.from_thread.run(partial(fn, *args, **kwargs))


@contextmanager
def open_dashboard(chromium: str, url: str, console: list[str]) -> Iterator[Page]:
    """A fresh headless Chromium showing ``url``; its errors are appended to ``console``.

    ``launch`` gives every browser a new temporary profile (user-data dir), so no
    state is carried from one test to the next.
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, headless=True, timeout=60_000
        )
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(EXPECT_MS)
            expect.set_options(timeout=EXPECT_MS)
            # A CSP violation, a script error or a failed load shows up here.
            page.on("pageerror", lambda exc: console.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda message: console.append(message.text) if message.type == "error" else None,
            )
            page.goto(url)
            yield page
        finally:
            browser.close()


def connection(page: Page) -> Locator:
    return page.get_by_test_id("connection")


def backend_row(page: Page, name: str) -> Locator:
    # The name is matched as text, never put in a selector: it may be anything.
    return page.locator("tr[data-backend-row]").filter(
        has=page.locator("td.col-name").get_by_text(name, exact=True)
    )


def model_row(page: Page, model: str) -> Locator:
    return page.locator("tr[data-model-row]").filter(
        has=page.locator("td.col-name > .name").get_by_text(model, exact=True)
    )


def request_row(page: Page, request_id: str) -> Locator:
    return page.locator(f'tr[data-request-row][data-request-id="{request_id}"]')


async def fail_over(demo: Demo) -> RequestRecord:
    """A stream that dies mid-way on its first backend and is finished by another.

    ``llama3:8b`` is on demo-vllm and demo-ollama. The stream dies on demo-vllm;
    the router usually tries it first (Ollama's model is not loaded yet), and when
    it does not, demo-vllm is the one without a latency sample next time, which
    the router tries first.
    """
    vllm = demo.sim("demo-vllm")
    vllm.faults.die_after_chunks = 4
    try:
        for attempt in range(4):
            response = await demo.chat("llama3:8b", request_id=f"failover-{attempt}")
            assert response.status_code == 200
            record = await demo.record(f"failover-{attempt}")
            if record.failovers:
                return record
    finally:
        vllm.faults.clear()
    raise AssertionError("no request for llama3:8b went to demo-vllm first")


async def test_fleet_live_requests_failover_and_outage(
    start_demo: StartDemo, chromium: str
) -> None:
    demo = await start_demo()
    llamacpp = demo.sim("demo-llamacpp")
    console: list[str] = []

    def script() -> None:
        with open_dashboard(chromium, demo.url, console) as page:
            expect(connection(page)).to_have_attribute("data-state", "connected")
            expect(page.get_by_test_id("version")).to_have_text(re.compile(r"^v\d"))
            for name in DEMO_BACKENDS:
                status = backend_row(page, name).locator('[data-field="status"]')
                expect(status).to_have_text(re.compile(r"^(healthy|unknown)"))
            expect(model_row(page, "qwen2.5-coder:7b")).to_contain_text("demo-vllm")
            expect(model_row(page, "llama3:8b")).to_contain_text("demo-ollama")
            expect(page.get_by_test_id("total-requests")).to_have_text("0")

            # A request shows up as it ends, without a reload.
            response = call_trio(demo.chat, "llama3:8b", request_id="first")
            assert response.status_code == 200
            first = request_row(page, "first")
            expect(first).to_contain_text("llama3:8b")
            expect(first).to_contain_text("stream")
            expect(page.get_by_test_id("total-requests")).to_have_text("1")

            # A failover is marked on its request's row, and counted.
            record = call_trio(fail_over, demo)
            hop = record.failovers[0]
            expect(request_row(page, record.request_id).locator("[data-failover]")).to_have_text(
                f"failover {hop.from_backend} → {hop.to_backend} (mid-stream)"
            )
            expect(page.get_by_test_id("total-failovers")).to_have_text("1")

            # A backend that stops answering is ejected at once, its return counted down;
            # its probes fail too, so it stays out as unhealthy after the ejection. Its only
            # model is unavailable meanwhile.
            call_trio(llamacpp.refuse_connections)
            response = call_trio(demo.chat, "smollm2:135m", stream=False, request_id="outage")
            assert response.status_code >= 500
            outage = backend_row(page, "demo-llamacpp")
            expect(outage).to_have_attribute("data-status", "ejected")
            expect(outage.locator('[data-field="returns"]')).to_contain_text("back in")
            expect(outage).to_have_attribute("data-status", "unhealthy", timeout=20_000)
            expect(outage).to_contain_text("unhealthy")
            expect(model_row(page, "smollm2:135m")).to_contain_text("no")
            expect(request_row(page, "outage")).to_have_class(re.compile(r"\bis-error\b"))
            expect(page.get_by_test_id("total-failed")).to_have_text("1")

            # The README's picture: a few ordinary requests, once demo-vllm is back.
            expect(backend_row(page, "demo-vllm")).to_have_attribute(
                "data-status", "healthy", timeout=20_000
            )
            for model, stream in [("qwen2.5-coder:7b", True), ("llava:7b", False)]:
                assert call_trio(demo.chat, model, stream=stream).status_code == 200
            assert (
                call_trio(demo.chat, "llama3:8b", stream=False, request_id="last").status_code
                == 200
            )
            rows = page.locator("tr[data-request-row]")
            expect(rows.first).to_have_attribute("data-request-id", "last")
            failover_requests = int(record.request_id.removeprefix("failover-")) + 1
            expect(rows).to_have_count(5 + failover_requests)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=SCREENSHOT, full_page=True, animations="disabled")

    await trio.to_thread.run_sync(script)
    assert console == []


def engine_cell(page: Page, name: str) -> Locator:
    return backend_row(page, name).locator('[data-field="engine"]')


async def test_engine_load_and_loaded_models_show_live(
    start_demo: StartDemo, chromium: str
) -> None:
    demo = await start_demo()
    vllm, llamacpp = demo.sim("demo-vllm"), demo.sim("demo-llamacpp")
    console: list[str] = []

    async def other_clients_arrive() -> None:
        # Requests Nexus did not send: only each server's own report shows them. The vLLM
        # runs 4 at once, so 2 of its 6 wait; the llama.cpp server has 1 of 2 slots busy.
        vllm.parallel, vllm.busy_elsewhere = 4, 6
        llamacpp.busy_elsewhere = 1

    def script() -> None:
        with open_dashboard(chromium, demo.url, console) as page:
            expect(connection(page)).to_have_attribute("data-state", "connected")
            # As each server says of itself (vLLM /metrics, llama.cpp /slots, Ollama
            # /api/ps), read every second.
            expect(engine_cell(page, "demo-vllm")).to_have_text("0 running · 0 waiting · KV 0%")
            expect(engine_cell(page, "demo-llamacpp")).to_have_text("0/2 slots busy")
            expect(engine_cell(page, "demo-ollama")).to_have_text("no model loaded")

            # Live, without a reload: other clients' load, Nexus's own in flight still 0.
            call_trio(other_clients_arrive)
            vllm_row = backend_row(page, "demo-vllm")
            expect(engine_cell(page, "demo-vllm")).to_have_text("4 running · 2 waiting · KV 100%")
            expect(vllm_row.locator("td.num").first).to_have_text("0")
            expect(engine_cell(page, "demo-llamacpp")).to_have_text("1/2 slots busy")

            # A request loads its model into the Ollama: it shows as loaded, with the time
            # the server unloads it if nothing uses it (Ollama's keep-alive).
            assert call_trio(demo.chat, "llava:7b", stream=False).status_code == 200
            chip = engine_cell(page, "demo-ollama").locator("[data-loaded-model]")
            expect(chip).to_have_text("llava:7b")
            expect(chip).to_have_attribute(
                "title",
                re.compile(r"^llava:7b: loaded until \d\d:\d\d:\d\d \(\d+ min left if unused\)$"),
            )
            # Text, like every name on the page.
            assert page.locator("img, script:not([src])").count() == 0

    await trio.to_thread.run_sync(script)
    assert console == []


async def test_names_from_the_network_render_as_text(
    start_demo: StartDemo, chromium: str, nursery: trio.Nursery
) -> None:
    hostile = SimulatedBackend(Flavor.VLLM, [SimModel(HOSTILE_MODEL)], name="hostile")
    await nursery.start(hostile.serve)
    # Announced over mDNS on loopback, under a name nothing sanitised: what a
    # hostile machine on the network could send.
    info = zeroconf.ServiceInfo(
        "_llm._tcp.local.",
        f"{HOSTILE_NAME}._llm._tcp.local.",
        port=hostile.port,
        properties={"type": "vllm"},
        addresses=[socket.inet_aton("127.0.0.1")],
        server="hostile-browser-test.local.",
    )
    await nursery.start(advertise, [info], ["127.0.0.1"])
    demo = await start_demo()
    console: list[str] = []

    def script() -> None:
        with open_dashboard(chromium, demo.url, console) as page:
            expect(connection(page)).to_have_attribute("data-state", "connected")
            row = backend_row(page, HOSTILE_NAME)
            expect(row).to_have_attribute("data-name", HOSTILE_NAME, timeout=20_000)
            expect(row.locator("td.col-name")).to_have_text(HOSTILE_NAME)
            expect(row).to_contain_text(HOSTILE_MODEL)
            expect(model_row(page, HOSTILE_MODEL)).to_contain_text(HOSTILE_NAME)

            response = call_trio(demo.chat, HOSTILE_MODEL, request_id="hostile")
            assert response.status_code == 200
            feed_row = request_row(page, "hostile")
            expect(feed_row).to_contain_text(HOSTILE_MODEL)
            expect(feed_row).to_contain_text(HOSTILE_NAME)

            # Shown as text, so never parsed: no element was made, no handler ran.
            assert page.locator("img, script:not([src])").count() == 0
            assert page.evaluate("() => window.__pwned") is None

    await trio.to_thread.run_sync(script)
    assert console == []


async def test_page_shows_it_is_disconnected_and_comes_back(
    start_demo: StartDemo, chromium: str
) -> None:
    first = await start_demo()
    port = first.port
    console: list[str] = []

    def script() -> None:
        with open_dashboard(chromium, first.url, console) as page:
            expect(connection(page)).to_have_attribute("data-state", "connected")
            assert call_trio(first.chat, "llama3:8b", request_id="before").status_code == 200
            expect(request_row(page, "before")).to_be_visible()

            call_trio(first.shut_down)  # the feed is closed with 1001
            expect(connection(page)).to_have_attribute("data-state", "disconnected")
            expect(connection(page)).to_contain_text("reconnecting")

            # Nexus back on the same port: the page finds it by itself, and takes
            # the new snapshot in place of what it showed (no row kept or doubled).
            second: Demo = call_trio(start_demo, port=port)
            expect(connection(page)).to_have_attribute("data-state", "connected", timeout=20_000)
            expect(page.locator("tr[data-request-row]")).to_have_count(0)
            expect(page.get_by_test_id("total-requests")).to_have_text("0")
            expect(page.locator("tr[data-backend-row]")).to_have_count(len(DEMO_BACKENDS))
            assert call_trio(second.chat, "llama3:8b", request_id="after").status_code == 200
            expect(request_row(page, "after")).to_be_visible()
            expect(page.locator("tr[data-request-row]")).to_have_count(1)

    await trio.to_thread.run_sync(script)
    # While Nexus was down, the browser logs each refused connection as an error.
    assert [line for line in console if "WebSocket connection to" not in line] == []
