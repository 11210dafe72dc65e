"""From the raw numbers of every round to medians, targets, the table and the JSON file.

``runs[measure][contender]`` holds one dict per round, as the load functions return them.
Derived numbers (what a proxy adds to ``direct``, ratios between contenders) are computed
per round first, then summarised, so their range is the range over rounds too.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

CONTENDERS: Final = ("direct", "nginx", "nexus", "litellm")
Runs = dict[str, dict[str, list[dict[str, Any]]]]
Series = dict[tuple[str, str], list[float]]  # (metric, contender) -> one value per round


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.n}


def _per_round(runs: Runs, measure: str, contender: str, key: str) -> list[float | None]:
    out: list[float | None] = []
    for run in runs.get(measure, {}).get(contender, []):
        value = run.get(key)
        out.append(float(value) if isinstance(value, int | float) else None)
    return out


def _pairwise(
    a: list[float | None], b: list[float | None], op: Callable[[float, float], float]
) -> list[float]:
    return [op(x, y) for x, y in zip(a, b, strict=False) if x is not None and y is not None]


def series(runs: Runs, extra: Mapping[tuple[str, str], list[float]]) -> Series:
    """Every metric as one value per round, the derived ones included."""
    out: Series = {}

    def put(metric: str, contender: str, values: Sequence[float | None]) -> None:
        kept = [v for v in values if v is not None]
        if kept:
            out[metric, contender] = kept

    plain = {
        "latency": ("p50_ms", "p99_ms"),
        "throughput": ("rps", "p50_ms", "p99_ms", "cpu_percent", "core0_busy_percent"),
        "ttft": ("ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms"),
        "relay": ("chunks_per_s", "cpu_percent", "core0_busy_percent"),
        "memory": ("rss_idle_mb", "per_stream_kb", "open"),
    }
    for measure, keys in plain.items():
        for contender in CONTENDERS:
            for key in keys:
                put(f"{measure}.{key}", contender, _per_round(runs, measure, contender, key))
    for contender in CONTENDERS[1:]:
        for measure, key in (("latency", "p50_ms"), ("latency", "p99_ms"), ("ttft", "ttft_p50_ms")):
            put(
                f"{measure}.added_{key}",
                contender,
                _pairwise(
                    _per_round(runs, measure, contender, key),
                    _per_round(runs, measure, "direct", key),
                    operator.sub,
                ),
            )
    added = {c: _per_round(runs, "latency", c, "p50_ms") for c in CONTENDERS}
    direct = added["direct"]
    nexus_added = _pairwise(added["nexus"], direct, operator.sub)
    litellm_added = _pairwise(added["litellm"], direct, operator.sub)
    put(
        "ratio.litellm_over_nexus_added_p50",
        "nexus",
        [lit / nex for lit, nex in zip(litellm_added, nexus_added, strict=False) if nex > 0],
    )
    rps = {c: _per_round(runs, "throughput", c, "rps") for c in CONTENDERS}
    put("ratio.nexus_over_litellm_rps", "nexus", _pairwise(rps["nexus"], rps["litellm"], _div))
    put(
        "ratio.nexus_over_nginx_rps_percent",
        "nexus",
        [100 * r for r in _pairwise(rps["nexus"], rps["nginx"], _div)],
    )
    for contender in ("nginx", "nexus", "litellm"):
        shares = _pairwise(rps[contender], rps["direct"], _div)
        put("ratio.of_direct_rps_percent", contender, [100 * r for r in shares])
    for (metric, contender), values in extra.items():
        put(metric, contender, values)
    return out


def _div(a: float, b: float) -> float:
    return a / b if b else float("inf")


@dataclass(frozen=True)
class Target:
    label: str
    metric: str
    contender: str
    better: str  # "<=" or ">="
    threshold: float
    unit: str

    def met(self, value: float) -> bool:
        return value <= self.threshold if self.better == "<=" else value >= self.threshold

    @property
    def text(self) -> str:
        return f"{'≤' if self.better == '<=' else '≥'} {self.threshold:g} {self.unit}".strip()


TARGETS: Final = (
    Target("added latency p50", "latency.added_p50_ms", "nexus", "<=", 1.0, "ms"),
    Target("added latency p99", "latency.added_p99_ms", "nexus", "<=", 3.0, "ms"),
    Target(
        "LiteLLM's added p50 / Nexus's",
        "ratio.litellm_over_nexus_added_p50",
        "nexus",
        ">=",
        4.0,
        "×",
    ),
    Target("throughput Nexus / LiteLLM", "ratio.nexus_over_litellm_rps", "nexus", ">=", 5.0, "×"),
    Target(
        "throughput Nexus / nginx",
        "ratio.nexus_over_nginx_rps_percent",
        "nexus",
        ">=",
        40.0,
        "%",
    ),
    Target("streaming relay", "relay.chunks_per_s", "nexus", ">=", 20_000, "chunks/s"),
    Target("added TTFT p50", "ttft.added_ttft_p50_ms", "nexus", "<=", 2.0, "ms"),
    Target("RSS idle", "memory.rss_idle_mb", "nexus", "<=", 60.0, "MB"),
    Target("memory per open stream", "memory.per_stream_kb", "nexus", "<=", 30.0, "kB"),
    Target("routing, 100 backends", "routing.us_100", "nexus", "<=", 20.0, "µs"),
)

# (label, metric, unit, digits): the rows of the table, in order; None starts a section.
ROWS: Final[tuple[tuple[str, str, str, int] | None, ...]] = (
    ("latency p50, sequential", "latency.p50_ms", "ms", 3),
    ("latency p99, sequential", "latency.p99_ms", "ms", 3),
    ("added latency p50", "latency.added_p50_ms", "ms", 3),
    ("added latency p99", "latency.added_p99_ms", "ms", 3),
    ("LiteLLM's added p50 / Nexus's", "ratio.litellm_over_nexus_added_p50", "×", 1),
    None,
    ("throughput, 64 clients (wrk)", "throughput.rps", "req/s", 0),
    ("  share of direct", "ratio.of_direct_rps_percent", "%", 0),
    ("  Nexus / LiteLLM", "ratio.nexus_over_litellm_rps", "×", 1),
    ("  Nexus / nginx", "ratio.nexus_over_nginx_rps_percent", "%", 0),
    ("  latency p99 under load", "throughput.p99_ms", "ms", 2),
    ("  server CPU", "throughput.cpu_percent", "%", 0),
    ("  load core busy (wrk, upstream)", "throughput.core0_busy_percent", "%", 0),
    None,
    ("TTFT p50, sequential streams", "ttft.ttft_p50_ms", "ms", 3),
    ("added TTFT p50", "ttft.added_ttft_p50_ms", "ms", 3),
    ("inter-chunk gap p50", "ttft.gap_p50_ms", "ms", 2),
    ("inter-chunk gap p99", "ttft.gap_p99_ms", "ms", 2),
    ("relay, 256 streams", "relay.chunks_per_s", "chunks/s", 0),
    ("  server CPU", "relay.cpu_percent", "%", 0),
    ("  load core busy (client, upstream)", "relay.core0_busy_percent", "%", 0),
    None,
    ("RSS idle, fresh process warmed up", "memory.rss_idle_mb", "MB", 1),
    ("memory per open stream", "memory.per_stream_kb", "kB", 1),
    ("  streams held open (of 1,000)", "memory.open", "", 0),
    ("RSS after all the load tests", "memory.rss_after_load_mb", "MB", 1),
    ("server CPU while idle", "idle.cpu_percent", "%", 1),
    None,
    ("routing, 10 backends", "routing.us_10", "µs", 2),
    ("routing, 100 backends", "routing.us_100", "µs", 2),
    ("routing, 1,000 backends", "routing.us_1000", "µs", 1),
    ("roster rebuild after a fleet change, 100 backends", "routing.roster_us_100", "µs", 1),
    ("start-up to first answer", "startup.seconds", "s", 2),
)


def summaries(data: Series) -> dict[str, dict[str, Summary]]:
    out: dict[str, dict[str, Summary]] = {}
    for (metric, contender), values in data.items():
        out.setdefault(metric, {})[contender] = Summary.of(values)
    return out


def verdicts(summary: Mapping[str, Mapping[str, Summary]]) -> list[dict[str, Any]]:
    out = []
    for target in TARGETS:
        found = summary.get(target.metric, {}).get(target.contender)
        out.append(
            {
                "target": target.label,
                "metric": target.metric,
                "wanted": target.text,
                "value": found.as_dict() if found else None,
                "met": None if found is None else target.met(found.median),
            }
        )
    return out


def _cell(found: Summary | None, digits: int) -> str:
    if found is None:
        return ""
    if found.n == 1 or found.low == found.high:
        return f"{found.median:,.{digits}f}"
    return f"{found.median:,.{digits}f} ({found.low:,.{digits}f}–{found.high:,.{digits}f})"


def table(
    summary: Mapping[str, Mapping[str, Summary]],
    missing: Mapping[str, str],
    offered_chunks_per_s: float,
) -> str:
    """The table for the terminal: contenders side by side, then the target and verdict."""
    targets = {(t.metric, t.contender): t for t in TARGETS}
    header = ["measure", "unit", *CONTENDERS, "target", "status"]
    lines: list[list[str]] = []
    for row in ROWS:
        if row is None:
            lines.append([])
            continue
        label, metric, unit, digits = row
        cells = [label, unit]
        for contender in CONTENDERS:
            if contender in missing:
                cells.append("missing")
            else:
                cells.append(_cell(summary.get(metric, {}).get(contender), digits))
        target = targets.get((metric, "nexus"))
        found = summary.get(metric, {}).get("nexus")
        if target is None:
            cells += ["", ""]
        else:
            status = "n/a" if found is None else ("met" if target.met(found.median) else "NOT met")
            cells += [target.text, status]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines if c)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    for cells in lines:
        if not cells:
            out.append("")
            continue
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    out.append("")
    out.append(
        "Medians over rounds, (min–max) in brackets. Streaming relay offered "
        f"{offered_chunks_per_s:,.0f} chunks/s; a contender at that rate was not saturated."
    )
    for name, reason in missing.items():
        out.append(f"{name}: missing — {reason}")
    return "\n".join(out)
