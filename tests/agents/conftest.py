"""Fixtures for running real coding agents against a real ``nexus serve`` process.

The agents run here are real programs that would, left alone, talk to the internet.
``nox -s agents`` runs these tests inside a network namespace whose only interface is
loopback (``unshare -n``), and every test here first checks that it is in one: outside,
it fails rather than let an agent out.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket

import pytest

# TEST-NET-1 (RFC 5737): documentation only, never a real host. Connecting a UDP socket
# sends nothing; it only asks the kernel for a route.
OFF_MACHINE = ("192.0.2.1", 9)


@pytest.fixture(autouse=True)
def _loopback_only() -> None:
    """Fail unless this process can reach nothing but loopback."""
    interfaces = sorted(name for _, name in socket.if_nameindex())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(OFF_MACHINE)
        except OSError as exc:
            routed = exc.errno != errno.ENETUNREACH
        else:
            routed = True
    if interfaces != ["lo"] or routed:
        pytest.fail(
            f"not in a loopback-only network namespace (interfaces {interfaces}, a route to "
            f"{OFF_MACHINE[0]}: {routed}): run these tests with `nox -s agents`, which runs "
            "them under `unshare -n`"
        )


@pytest.fixture(scope="session")
def claude_bin() -> str:
    """Claude Code's binary: ``$CLAUDE_BIN`` (set by ``nox -s agents``), else ``claude``."""
    found = os.environ.get("CLAUDE_BIN") or shutil.which("claude")
    if not found:
        pytest.fail("Claude Code is missing: `nox -s agents` installs it (npm) and runs these")
    return found
