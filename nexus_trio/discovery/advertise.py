"""Announcing LLM servers over mDNS, so that a Nexus elsewhere finds them.

The announcement is what `nexus_trio.discovery.mdns` browses for: ``<instance>._llm._tcp.local.``
(``_ollama._tcp.local.`` for Ollama) with TXT ``type``, ``api_path``, ``version``, ``models``
and, for TLS, ``scheme=https``. Used by ``nexus advertise`` and by ``nexus serve --demo``,
which announces its simulated fleet on loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import urllib.parse
from collections.abc import Sequence
from functools import partial
from typing import Final

import trio
import zeroconf

from nexus_trio.config import BackendType
from nexus_trio.discovery.mdns import LLM_SERVICE_TYPE, OLLAMA_SERVICE_TYPE, open_zeroconf
from nexus_trio.errors import ConfigError

__all__ = ["advertise", "service_info_for"]

log = logging.getLogger("nexus.discovery.advertise")

_TXT_MAX: Final = 255  # bytes in one TXT string, "key=value" (RFC 6763 §6.1)
_LABEL_MAX: Final = 63  # bytes in one DNS label (RFC 1035 §2.3.4)
_GOODBYE_TIMEOUT_SECONDS: Final = 5.0


def _label(name: str) -> str:
    """An instance name that is a DNS label: ASCII letters, digits and '-', at most 63."""
    label = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:_LABEL_MAX].strip("-")
    return label or "nexus"


def _fit(key: str, value: str) -> str:
    """`value` cut (at a character boundary) so that ``key=value`` fits one TXT string."""
    budget = _TXT_MAX - len(key.encode()) - 1
    return value.encode()[:budget].decode("utf-8", errors="ignore")


def _fit_models(models: Sequence[str]) -> str:
    """As many whole model ids as fit one ``models=`` TXT string, comma-joined.

    An id containing a comma cannot be told apart from two; it is left out.
    """
    budget = _TXT_MAX - len(b"models=")
    chosen: list[str] = []
    used = -1  # no comma before the first id
    for model in dict.fromkeys(m.strip() for m in models):
        size = len(model.encode()) + 1
        if not model or "," in model or used + size > budget:
            continue
        chosen.append(model)
        used += size
    return ",".join(chosen)


def _addresses_of(host: str) -> list[str]:
    """The IP addresses to announce for `host` (an IP literal, ``localhost`` or a name)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if ip.is_unspecified:
            raise ConfigError(
                f"advertise: {host} is not an address others can reach; pass the addresses "
                "to announce explicitly"
            )
        return [str(ip)]
    if host.lower() in ("localhost", "localhost."):
        return ["127.0.0.1"]  # not ::1 as well: loopback browsers here listen on IPv4
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(
            f"advertise: cannot resolve {host!r}: {exc}; use an IP address in the URL"
        ) from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def service_info_for(
    url: str,
    type: BackendType | None,
    name: str,
    *,
    version: str | None = None,
    models: Sequence[str] = (),
    addresses: Sequence[str] | None = None,
) -> zeroconf.ServiceInfo:
    """The mDNS announcement of the server at `url`, for `advertise`.

    Args:
        url: the server's API root as clients reach it, e.g. ``http://10.0.0.7:8000/v1``; its
            path becomes the TXT ``api_path`` (omitted for ``/``), its host and port the
            service's address.
        type: the backend type (TXT ``type``), or None to let the browser fingerprint it.
            Ollama is announced as ``_ollama._tcp.local.``, everything else as
            ``_llm._tcp.local.``.
        name: the instance name; sanitised to a DNS label (ASCII letters, digits, '-',
            at most 63), e.g. ``"GPU box #2"`` → ``"GPU-box-2"``.
        version: TXT ``version``. models: TXT ``models``, as many whole ids as fit 255 bytes.
        addresses: the IPs to announce; by default the URL's host if it is an IP,
            127.0.0.1 for ``localhost``, else the host name resolved (blocking DNS).

    Raises:
        ConfigError: `url` is not an http(s) URL with a host, or its host cannot be resolved
            or is unspecified (0.0.0.0) and `addresses` is not given.

    Example::

        info = service_info_for("http://127.0.0.1:8000/v1", BackendType.VLLM, "gpu-box")
        # gpu-box._llm._tcp.local. → 127.0.0.1:8000, TXT type=vllm api_path=/v1
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"advertise: {url!r} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"advertise: {url!r} must be an http:// or https:// URL with a host, "
            "like 'http://127.0.0.1:8000/v1'"
        )
    if port is None:
        port = 443 if scheme == "https" else 80
    service_type = OLLAMA_SERVICE_TYPE if type is BackendType.OLLAMA else LLM_SERVICE_TYPE
    properties: dict[str, str] = {}
    if type is not None:
        properties["type"] = type.value
    path = parts.path.rstrip("/")
    if path:
        properties["api_path"] = _fit("api_path", path)
    if version:
        properties["version"] = _fit("version", version)
    joined = _fit_models(models)
    if joined:
        properties["models"] = joined
    if scheme == "https":
        properties["scheme"] = "https"
    ips = list(addresses) if addresses is not None else _addresses_of(parts.hostname)
    try:
        return zeroconf.ServiceInfo(
            service_type,
            f"{_label(name)}.{service_type}",
            port=port,
            properties=properties,
            parsed_addresses=ips,
        )
    except (ValueError, OSError, zeroconf.Error) as exc:  # e.g. an address that is not an IP
        raise ConfigError(f"advertise: cannot announce {url!r} at {ips}: {exc}") from exc


def _instance_name(info: zeroconf.ServiceInfo) -> str:
    return info.name[: -len(info.type) - 1] if info.name.endswith("." + info.type) else info.name


async def advertise(
    infos: Sequence[zeroconf.ServiceInfo],
    interfaces: Sequence[str],
    *,
    task_status: trio.TaskStatus[tuple[str, ...]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce `infos` on `interfaces` until cancelled, then say goodbye.

    Registers every service at once (each takes ~1.7 s: zeroconf probes the name three
    times, then announces), then reports started with the instance names as registered: a
    name already taken on the network is renamed ``name-2``, ``name-3``, ... (zeroconf renames
    the `ServiceInfo` in place). On cancellation it sends goodbyes, which browsers act on at
    once, and closes zeroconf, shielded and bounded (5 s). A process killed without that
    stays "announced" until the records' TTL runs out (minutes).

    Args:
        infos: announcements from `service_info_for`; instance names must be distinct.
        interfaces: IP addresses to announce on; empty means every interface, which sends
            multicast off the machine — use ``["127.0.0.1"]`` for a fleet on this host.

    Raises:
        ConfigError: two `infos` share a name, zeroconf cannot open `interfaces`, or a
            service cannot be registered.

    Example::

        infos = [service_info_for(b.url, b.type, b.name) for b in fleet]
        names = await nursery.start(advertise, infos, ["127.0.0.1"])
    """
    seen: set[str] = set()
    for info in infos:
        if info.key in seen:
            raise ConfigError(f"advertise: {info.name!r} is announced twice; names must differ")
        seen.add(info.key)

    async with open_zeroconf(interfaces) as zc:
        failures: list[tuple[zeroconf.ServiceInfo, Exception]] = []

        async def register(info: zeroconf.ServiceInfo) -> None:
            try:
                await trio.to_thread.run_sync(
                    partial(zc.register_service, info, allow_name_change=True)
                )
            except (zeroconf.Error, OSError) as exc:
                failures.append((info, exc))  # collected so that callers see one error

        try:
            # Concurrently: a fleet of N starts in ~1.7 s instead of N × 1.7 s.
            async with trio.open_nursery() as nursery:
                for info in infos:
                    nursery.start_soon(register, info)
            if failures:
                info, exc = failures[0]
                raise ConfigError(
                    f"advertise: cannot announce {info.name!r}: {exc!r}; try another name"
                ) from exc
            names = tuple(_instance_name(info) for info in infos)
            log.info("mDNS: announcing %s on %s", ", ".join(names), interfaces or "all")
            task_status.started(names)
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(_GOODBYE_TIMEOUT_SECONDS, shield=True):
                # Goodbyes (TTL 0, sent three times) for every service registered so far;
                # close() would send them too, but this keeps the goodbye explicit.
                await trio.to_thread.run_sync(zc.unregister_all_services, abandon_on_cancel=True)
