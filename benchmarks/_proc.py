"""What a server's process tree uses, read from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid``'s process tree (VmRSS summed; shared pages count twice)."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid``'s process tree so far."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


@contextlib.contextmanager
def cpu_share(pid: int | None) -> Iterator[dict[str, float]]:
    """Measures the share of one core that ``pid``'s tree used inside the block."""
    out: dict[str, float] = {}
    if pid is None:
        yield out
        return
    start, used = time.monotonic(), cpu_seconds(pid)
    yield out
    elapsed = time.monotonic() - start
    out["cpu_percent"] = 100 * (cpu_seconds(pid) - used) / elapsed if elapsed > 0 else 0.0


def _core_times() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per core, from /proc/stat."""
    out: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(f) for f in fields]
        idle = ticks[3] + ticks[4]  # idle, iowait
        out[name.removeprefix("cpu")] = (sum(ticks[:8]) - idle, sum(ticks[:8]))
    return out


@contextlib.contextmanager
def cores_busy() -> Iterator[dict[str, float]]:
    """How busy each core was inside the block, in percent: is the load generator's core
    the limit, and does anything else run on the server's?"""
    out: dict[str, float] = {}
    before = _core_times()
    yield out
    for core, (busy, total) in _core_times().items():
        if core in before and total > before[core][1]:
            out[f"core{core}_busy_percent"] = (
                100 * (busy - before[core][0]) / (total - before[core][1])
            )
