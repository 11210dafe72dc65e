"""Browsing mDNS (DNS-SD) for LLM servers that announce themselves.

A server announces ``<instance>._llm._tcp.local.`` (or ``_ollama._tcp.local.``) with TXT keys:

    type       one of `BackendType`'s values; absent or unknown → fingerprint it
               (on ``_ollama._tcp`` the service type itself says Ollama)
    api_path   path prefix of the API root, e.g. ``/v1`` or ``/llm/v1``; absent → ``/``
    version    the server's version, free text
    models     comma-separated model ids (a hint; the registry asks the server itself)
    scheme     ``https`` if the server speaks TLS; absent → ``http``

zeroconf's sync API runs its own threads (`AsyncZeroconf` needs asyncio, so it cannot run
under trio). The browser's callbacks therefore only hand ``(kind, type, name)`` to trio through
`trio.from_thread`; trio tasks resolve each service (a blocking call, run in a worker
thread, never on zeroconf's thread) and send a `Found` to the registry::

    zeroconf thread ──from_thread──▶ events ──▶ consumer ──to_thread(resolve)──▶ Found ──▶ registry

Everything announced on the network is attacker-controlled: names and TXT values are decoded
leniently, capped in size, and never make this module raise.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Final, Literal

import trio
import zeroconf

from nexus_trio.config import BackendType, DiscoverySettings
from nexus_trio.discovery.found import Found
from nexus_trio.errors import ConfigError

__all__ = [
    "LLM_SERVICE_TYPE",
    "OLLAMA_SERVICE_TYPE",
    "found_from_service",
    "open_zeroconf",
    "run_mdns_browser",
]

log = logging.getLogger("nexus.discovery.mdns")

LLM_SERVICE_TYPE: Final = "_llm._tcp.local."
OLLAMA_SERVICE_TYPE: Final = "_ollama._tcp.local."

_RESOLVE_TIMEOUT_MS: Final = 3000  # a service seen in a probe resolves at its announcement
_CLOSE_TIMEOUT_SECONDS: Final = 5.0
_EVENT_BUFFER: Final = 256  # state changes waiting for the consumer; beyond, they are dropped
# Ask for multicast answers (QM), not zeroconf's default of unicast (QU) for the first query:
# where several mDNS stacks share port 5353 on one host (avahi, another Nexus, an announcer on
# loopback), the kernel hands a unicast answer to just one of their sockets, often not ours,
# and discovery then waits for the next query, a second later. Measured here on loopback:
# QU 1.1–2.2 s, QM 0.07–0.17 s. The cost is one multicast answer per startup.
_QUESTION_TYPE: Final = zeroconf.DNSQuestionType.QM
_MAX_RESOLVING: Final = 4  # worker threads resolving at once, so a flood cannot starve to_thread

# Hostile-input caps. A TXT string is at most 255 bytes on the wire (RFC 6763 §6.1), but the
# pure function may be handed anything, so every value is cut before it is decoded.
_MAX_RAW_VALUE: Final = 1024
_MAX_TEXT: Final = 255
_MAX_MODELS: Final = 64
_MAX_ADDRESSES: Final = 64
_MAX_TXT_KEYS: Final = 256
_PATH_SAFE: Final = "/-._~!$&'()*+,;=:@"  # RFC 3986 pchar; '%', '?', '#' and the rest get quoted


# ---------------------------------------------------------------------------------------------
# Pure: an announced service → a Found.


def _text(value: bytes | str | None, limit: int = _MAX_TEXT) -> str | None:
    """Decode a TXT key or value leniently, without control characters, cut to `limit`."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = bytes(value[:_MAX_RAW_VALUE]).decode("utf-8", errors="replace")
    elif not isinstance(value, str):
        return None  # the type says bytes; a hostile mapping may hold anything
    # Control characters would let a name forge log lines; nothing legitimate uses them.
    return re.sub(r"[\x00-\x1f\x7f]", "", value[:_MAX_RAW_VALUE])[:limit].strip()


def _txt(properties: Mapping[bytes, bytes | None]) -> dict[str, str]:
    """TXT properties as lower-cased keys → stripped values; keys without a value are dropped.

    Keys are case-insensitive (RFC 6763 §6.4); the first of two spellings wins, as it says.
    """
    out: dict[str, str] = {}
    try:
        items = list(itertools.islice(properties.items(), _MAX_TXT_KEYS))
    except Exception:  # a hostile or broken mapping: treat as empty
        return out
    for raw_key, raw_value in items:
        key = _text(raw_key)
        value = _text(raw_value)
        if key and value is not None:
            out.setdefault(key.lower(), value)
    return out


def _backend_type(service_type: str, declared: str | None) -> BackendType | None:
    try:
        return BackendType((declared or "").strip().lower())
    except ValueError:
        # The service type is itself a statement: an `_ollama` service is Ollama even if its
        # `type` key is missing or a value this version does not know.
        return BackendType.OLLAMA if service_type.lower() == OLLAMA_SERVICE_TYPE else None


def _root_path(api_path: str | None) -> str:
    """``api_path`` → the API root's path: no trailing ``/`` nor ``/v1`` (adapters add it)."""
    if not api_path:
        return ""
    path = "/" + re.sub(r"/+", "/", urllib.parse.unquote(api_path.strip())).strip("/")
    # Re-quoted from scratch, so nothing but a path can come of it: no '?', '#', spaces
    # or broken escapes reach the URL, and "/a%20b" and "/a b" mean the same.
    path = urllib.parse.quote(path, safe=_PATH_SAFE)
    if path.lower().endswith("/v1"):
        path = path[:-3]
    return path.rstrip("/")


def _host(addresses: Sequence[str]) -> str | None:
    """The best address as a URL host: IPv4 first, then routable IPv6 (bracketed)."""
    ranked: list[tuple[int, str]] = []
    for text in itertools.islice(addresses, _MAX_ADDRESSES):
        if not isinstance(text, str):
            continue
        try:
            ip = ipaddress.ip_address(text.strip()[:64])
        except ValueError:
            continue
        if ip.is_unspecified or ip.is_multicast:
            continue
        if isinstance(ip, ipaddress.IPv4Address):
            ranked.append((1 if ip.is_link_local else 0, str(ip)))
        elif ip.scope_id:  # RFC 6874: '%' in a URL host is written '%25'
            ranked.append((3, f"[{str(ip).replace('%', '%25')}]"))
        elif not ip.is_link_local:  # a link-local address is useless without its scope
            ranked.append((2, f"[{ip}]"))
    return min(ranked)[1] if ranked else None


def _instance(service_type: str, name: str) -> str | None:
    """``"gpu-box._llm._tcp.local."`` → ``"gpu-box"`` (None if nothing printable is left)."""
    suffix = "." + service_type.lower()
    if name.lower().endswith(suffix):
        name = name[: -len(suffix)]
    return _text(name.rstrip(".")) or None


def found_from_service(
    service_type: str,
    name: str,
    addresses: Sequence[str],
    port: int,
    properties: Mapping[bytes, bytes | None],
) -> Found | None:
    """Turn a resolved mDNS service into a `Found`, or None if it has no usable address.

    Args:
        service_type: the browsed type, e.g. ``"_llm._tcp.local."``.
        name: the full instance name, e.g. ``"gpu-box._llm._tcp.local."``; `Found.name`
            gets the instance part (``"gpu-box"``).
        addresses: the service's addresses as text; IPv4 is preferred, IPv6 is bracketed.
        port: the SRV port; outside 1–65535 means unusable.
        properties: the TXT record (see the module docstring for the keys).

    Never raises, whatever the network sent: values are decoded as UTF-8 with replacement,
    cut to size, and unknown keys are ignored.

    Example::

        found_from_service("_llm._tcp.local.", "gpu-box._llm._tcp.local.", ["10.0.0.7"], 8000,
                           {b"type": b"vllm", b"api_path": b"/v1"})
        # Found(source="mdns", url="http://10.0.0.7:8000", type=BackendType.VLLM, name="gpu-box")
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    host = _host(addresses)
    if host is None:
        return None
    txt = _txt(properties)
    scheme = "https" if txt.get("scheme", "").lower() == "https" else "http"
    models = tuple(
        dict.fromkeys(m for m in (part.strip() for part in txt.get("models", "").split(",")) if m)
    )[:_MAX_MODELS]
    return Found(
        source="mdns",
        url=f"{scheme}://{host}:{port}{_root_path(txt.get('api_path'))}",
        type=_backend_type(service_type, txt.get("type")),
        name=_instance(service_type, name),
        version=txt.get("version") or None,
        models=models,
    )


# ---------------------------------------------------------------------------------------------
# Pure: which reports a stream of resolutions and removals turns into.


class _Ledger:
    """What each service was last reported as, so that reports are neither stale nor repeated.

    Every add or update starts a resolution tagged with a fresh, increasing generation. A
    result is used only if it is newer than what was last used for that name (a result or
    a goodbye), so a slow resolution can neither undo a later one nor revive a service that
    said goodbye; yet a service that changes faster than it resolves is still reported.
    Keys are full service names, lower-cased (DNS names are case-insensitive).
    """

    def __init__(self) -> None:
        self._counter = 0
        self._applied: dict[str, int] = {}  # newest generation used per name (or its goodbye)
        self._last: dict[str, Found] = {}

    def begin(self, key: str) -> int:
        """A resolution of `key` starts: its generation."""
        self._counter += 1
        return self._counter

    def resolved(self, key: str, generation: int, found: Found) -> list[Found]:
        """The reports a finished resolution calls for (none if stale or unchanged)."""
        if generation <= self._applied.get(key, 0):
            return []
        self._applied[key] = generation
        previous = self._last.get(key)
        if previous == found:
            return []  # zeroconf fires Updated on re-announcements that change nothing
        self._last[key] = found
        if previous is not None and previous.url != found.url:
            return [_goodbye(previous), found]  # it moved: the old address is no longer it
        return [found]

    def removed(self, key: str) -> list[Found]:
        """The reports a goodbye calls for: a `gone` for the last known URL, if any."""
        self._applied[key] = self._counter  # every resolution begun so far is now stale
        previous = self._last.pop(key, None)
        return [_goodbye(previous)] if previous is not None else []


def _goodbye(found: Found) -> Found:
    return replace(found, gone=True, version=None, models=())


# ---------------------------------------------------------------------------------------------
# I/O: zeroconf's threads → trio.


def _interfaces(interfaces: Sequence[str]) -> list[str] | zeroconf.InterfaceChoice:
    return list(interfaces) if interfaces else zeroconf.InterfaceChoice.All


@asynccontextmanager
async def open_zeroconf(interfaces: Sequence[str]) -> AsyncIterator[zeroconf.Zeroconf]:
    """A sync `zeroconf.Zeroconf` bound to `interfaces` (IP strings; empty means every one).

    Opened in a worker thread; on exit closed in one too, shielded and bounded to 5 s, so a
    cancelled caller still releases the sockets (and a closing `Zeroconf` sends goodbyes for
    anything still registered on it). Never pass an empty `interfaces` in tests: that
    multicasts on every interface of the machine.

    Raises:
        ConfigError: the sockets cannot be opened (e.g. an address this host does not have).

    Example::

        async with open_zeroconf(["127.0.0.1"]) as zc:
            info = await trio.to_thread.run_sync(zc.get_service_info, type_, name)
    """
    where = ", ".join(interfaces) if interfaces else "all interfaces"
    try:
        zc = await trio.to_thread.run_sync(
            partial(zeroconf.Zeroconf, interfaces=_interfaces(interfaces))
        )
    except OSError as exc:
        raise ConfigError(
            f"mDNS: cannot open zeroconf on {where}: {exc.strerror or exc}; set "
            "discovery.interfaces to addresses this host has (e.g. ['127.0.0.1']) "
            "or disable discovery"
        ) from exc
    try:
        yield zc
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT_SECONDS, shield=True):
            # abandon_on_cancel makes the bound real: close() can block on zeroconf's loop.
            await trio.to_thread.run_sync(zc.close, abandon_on_cancel=True)


EventKind = Literal["add", "update", "remove"]


@dataclass(frozen=True, slots=True)
class _Event:
    kind: EventKind
    service_type: str
    name: str


_KINDS: Final[Mapping[zeroconf.ServiceStateChange, EventKind]] = {
    zeroconf.ServiceStateChange.Added: "add",
    zeroconf.ServiceStateChange.Updated: "update",
    zeroconf.ServiceStateChange.Removed: "remove",
}


class _Handoff:
    """The browser's handler: runs on zeroconf's thread and only hands the event to trio.

    It never blocks for long and never raises: an exception here would kill zeroconf's
    browser thread, and with it all discovery. A full buffer or a finished trio run drops
    the event (counted in `dropped`); zeroconf will not repeat it, so a dropped add is only
    found again at the service's next change.
    """

    def __init__(self, events: trio.MemorySendChannel[_Event], token: trio.lowlevel.TrioToken):
        self._events = events
        self._token = token
        self.dropped = 0

    def __call__(
        self,
        *,
        service_type: str,
        name: str,
        state_change: zeroconf.ServiceStateChange,
        **_zeroconf: object,  # zeroconf passes its instance as `zeroconf=`; not needed
    ) -> None:
        kind = _KINDS.get(state_change)
        if kind is None:
            return
        try:
            trio.from_thread.run_sync(
                self._events.send_nowait, _Event(kind, service_type, name), trio_token=self._token
            )
        except (trio.WouldBlock, trio.RunFinishedError, trio.ClosedResourceError):
            self._drop(kind, name)
        except Exception:  # never let anything escape onto zeroconf's thread
            log.exception("mDNS: handing a %s of %r to trio failed", kind, name)
            self._drop(kind, name)

    def _drop(self, kind: EventKind, name: str) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 100 == 0:
            log.warning("mDNS: dropped %d event(s), latest a %s of %r", self.dropped, kind, name)


async def _resolve(
    zc: zeroconf.Zeroconf, limiter: trio.CapacityLimiter, event: _Event
) -> Found | None:
    """Resolve one service (SRV, TXT, addresses) in a worker thread; None if it cannot be."""
    try:
        info = await trio.to_thread.run_sync(
            partial(
                zc.get_service_info,
                event.service_type,
                event.name,
                _RESOLVE_TIMEOUT_MS,
                question_type=_QUESTION_TYPE,
            ),
            limiter=limiter,
            abandon_on_cancel=True,  # shutdown need not wait for a 3 s lookup
        )
        if info is None:
            log.debug("mDNS: %r did not resolve in time", event.name)
            return None
        found = found_from_service(
            event.service_type,
            event.name,
            info.parsed_addresses(),
            info.port or 0,
            info.properties,
        )
    except Exception as exc:  # a hostile name zeroconf rejects, a closing zeroconf, ...
        log.debug("mDNS: cannot resolve %r: %r", event.name, exc)
        return None
    if found is None:
        log.debug("mDNS: %r has no usable address or port", event.name)
    return found


async def run_mdns_browser(
    settings: DiscoverySettings,
    found: trio.MemorySendChannel[Found],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Browse mDNS for `settings.service_types` and report to `found`, until cancelled.

    zeroconf listens on `settings.interfaces` (IP strings; empty means every interface).

    Each service that appears or changes is resolved (in a worker thread, up to 3 s) and
    reported as ``Found(source="mdns", ...)``; an update that resolves to the same report
    sends nothing. A goodbye is reported as ``Found(source="mdns", url=<last URL>,
    name=..., gone=True)``; a service that moved is reported gone at its old URL first.
    Reports for one service arrive in order, and a late resolution never follows its
    service's goodbye.

    `found` is not closed: the caller owns it and may share it with other sources.
    Starts (for `nursery.start`) once browsing. Closing zeroconf on the way out is shielded
    and bounded (5 s).

    Raises:
        ConfigError: zeroconf cannot open its sockets on `settings.interfaces`.

    Example::

        announce, inbox = trio.open_memory_channel[Found](64)
        await nursery.start(run_mdns_browser, settings.discovery, announce)
    """
    token = trio.lowlevel.current_trio_token()
    events_in, events = trio.open_memory_channel[_Event](_EVENT_BUFFER)
    handoff = _Handoff(events_in, token)
    types = list(dict.fromkeys(settings.service_types))
    ledger = _Ledger()
    # One lock around "decide, then send": reports leave in the order they were decided,
    # even when the registry applies backpressure while a goodbye is waiting.
    sending = trio.Lock()
    limiter = trio.CapacityLimiter(_MAX_RESOLVING)

    async def report(reports: list[Found]) -> None:
        for item in reports:
            log.info(
                "mDNS: %s %s at %s", "goodbye from" if item.gone else "found", item.name, item.url
            )
            await found.send(item)

    async def resolve_and_report(event: _Event, key: str, generation: int) -> None:
        resolved = await _resolve(zc, limiter, event)
        if resolved is not None:
            async with sending:
                await report(ledger.resolved(key, generation, resolved))

    if not types:
        task_status.started()
        await trio.sleep_forever()
    async with open_zeroconf(settings.interfaces) as zc:
        browser = zeroconf.ServiceBrowser(
            zc, types, handlers=[handoff], question_type=_QUESTION_TYPE
        )
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                log.debug("mDNS: browsing %s on %s", types, settings.interfaces or "all")
                async for event in events:
                    key = event.name.lower()
                    if event.kind == "remove":
                        async with sending:
                            await report(ledger.removed(key))
                    else:
                        nursery.start_soon(resolve_and_report, event, key, ledger.begin(key))
        finally:
            with trio.move_on_after(_CLOSE_TIMEOUT_SECONDS, shield=True):
                # cancel() joins the browser thread, which may be waiting on trio to take an
                # event: it must run in a worker thread while trio keeps running.
                await trio.to_thread.run_sync(browser.cancel, abandon_on_cancel=True)
