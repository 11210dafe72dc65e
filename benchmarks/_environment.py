"""What a run ran on and with: the machine, Nexus's source, the tools' versions."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import _contenders as procs
from _load import wrk_binary


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory / 1e9, 1),
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "pinning": (
            f"servers on core {procs.SERVER_CORE}; upstream and load on core {procs.CLIENT_CORE}"
            if procs.pin(0)
            else "none (one core, or no taskset)"
        ),
    }


def nexus_source() -> dict[str, Any]:
    import nexus_trio

    where = Path(nexus_trio.__file__).parent
    out: dict[str, Any] = {"version": nexus_trio.__version__, "path": str(where)}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(where)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        if head.returncode == 0:
            out["commit"] = head.stdout.strip()
            dirty = subprocess.run(
                [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True
            )
            out["uncommitted_changes"] = bool(dirty.stdout.strip())
    # An installed copy is not a work tree: then say which commit the suite itself is at.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        suite = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
        )
        if suite.returncode == 0:
            out["suite_commit"] = suite.stdout.strip()
    return out


def tools() -> dict[str, Any]:
    wrk = wrk_binary()
    tools = {
        "wrk": (
            procs.version_of([wrk, "-v"]).split(" [")[0] if wrk else None,
            None if wrk else "wrk is not installed (Debian: apt-get install wrk)",
        ),
        "taskset": (shutil.which("taskset"), None if shutil.which("taskset") else "not found"),
    }
    return {name: {"version": v, "missing": why} for name, (v, why) in tools.items()}
