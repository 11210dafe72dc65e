"""The chart the README embeds: one panel per measure, medians with their min–max range.

matplotlib is installed by ``nox -s bench`` only; without it the suite writes no chart
and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _report import CONTENDERS, Summary

COLORS = {"direct": "#9e9e9e", "nginx": "#2e7d32", "nexus": "#1565c0", "litellm": "#c62828"}

# (title, metric, contenders, target or None, log scale)
PANELS: tuple[tuple[str, str, tuple[str, ...], float | None, bool], ...] = (
    ("Added latency p50 (ms), sequential", "latency.added_p50_ms", CONTENDERS[1:], 1.0, True),
    ("Added latency p99 (ms), sequential", "latency.added_p99_ms", CONTENDERS[1:], 3.0, True),
    ("Throughput (req/s), 64 clients", "throughput.rps", CONTENDERS, None, True),
    ("Streaming relay (chunks/s), 256 streams", "relay.chunks_per_s", CONTENDERS, 20_000, False),
    ("Added TTFT p50 (ms)", "ttft.added_ttft_p50_ms", CONTENDERS[1:], 2.0, True),
    ("RSS idle (MB), fresh process", "memory.rss_idle_mb", CONTENDERS[1:], 60.0, True),
    ("Memory per open stream (kB)", "memory.per_stream_kb", CONTENDERS[1:], 30.0, True),
)


def write_chart(
    path: Path,
    summary: Mapping[str, Mapping[str, Summary]],
    missing: Mapping[str, str],
    title: str,
) -> str | None:
    """Write the PNG; returns why not when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (nox -s bench installs it)"
    fig, axes = plt.subplots(2, 4, figsize=(20, 9.5))
    flat: list[Any] = list(axes.flat)
    for ax, (name, metric, contenders, target, log) in zip(flat, PANELS, strict=False):
        _bars(ax, name, summary.get(metric, {}), contenders, missing, target, log)
    _routing(flat[len(PANELS)], summary)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _bars(
    ax: Any,
    name: str,
    found: Mapping[str, Summary],
    contenders: tuple[str, ...],
    missing: Mapping[str, str],
    target: float | None,
    log: bool,
) -> None:
    ax.set_title(name, fontsize=10)
    xs = range(len(contenders))
    for x, contender in zip(xs, contenders, strict=True):
        value = found.get(contender)
        if value is None:
            text = "missing" if contender in missing else "not measured"
            ax.annotate(text, (x, 0.5), xycoords=("data", "axes fraction"), ha="center",
                        fontsize=8, color="#555555", rotation=90)  # fmt: skip
            continue
        low, high = value.median - value.low, value.high - value.median
        ax.bar(x, value.median, color=COLORS[contender], yerr=[[low], [high]], capsize=4)
        ax.annotate(_short(value.median), (x, value.high), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=8)  # fmt: skip
    ax.set_xticks(list(xs), list(contenders))
    if log and any(v.median > 0 for v in found.values()):
        ax.set_yscale("log")
    if target is not None:
        ax.axhline(target, color="#000000", linestyle="--", linewidth=1)
        ax.annotate(f"target {_short(target)}", (len(contenders) - 0.5, target),
                    ha="right", va="bottom", fontsize=8)  # fmt: skip
    ax.margins(y=0.15)


def _routing(ax: Any, summary: Mapping[str, Mapping[str, Summary]]) -> None:
    ax.set_title("Nexus routing decision (µs) by fleet size", fontsize=10)
    sizes = [n for n in (10, 100, 1000) if "nexus" in summary.get(f"routing.us_{n}", {})]
    if not sizes:
        ax.annotate("not measured", (0.5, 0.5), xycoords="axes fraction", ha="center")
        return
    values = [summary[f"routing.us_{n}"]["nexus"] for n in sizes]
    ax.errorbar(
        sizes,
        [v.median for v in values],
        yerr=[[v.median - v.low for v in values], [v.high - v.median for v in values]],
        marker="o", color=COLORS["nexus"], capsize=4,
    )  # fmt: skip
    for n, v in zip(sizes, values, strict=True):
        ax.annotate(_short(v.median), (n, v.median), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("backends serving the model")
    ax.axhline(20, color="#000000", linestyle="--", linewidth=1)
    ax.annotate("target at 100: 20", (10, 20), va="bottom", fontsize=8)
    ax.margins(y=0.2)


def _short(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:,.1f}k"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
