"""Medians and the Markdown report of a side-by-side benchmark.

Why medians and a per-run column: on a shared, noisy machine one run is an anecdote and the mean
is dragged by the one run a neighbour disturbed. The median of N alternating runs is the headline,
and the individual runs are printed next to it so the spread is visible. Runs with wrk errors or
with origin traffic during the run (i.e. not pure HITs) are flagged rather than hidden.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .wrk import WrkResult

#: Objects at or below this size are judged on req/s, larger ones on bytes/s (the targets in
#: docs/overview.md).
REQS_METRIC_MAX_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Run:
    """One wrk run against one server, and how many origin requests happened meanwhile."""

    result: WrkResult
    origin_fetches: int

    @property
    def flagged(self) -> bool:
        return self.result.error_count > 0 or self.origin_fetches > 0


@dataclass(slots=True)
class Series:
    """All runs for one (object, server) pair."""

    object_name: str
    object_size: int
    server_key: str
    server_label: str
    runs: list[Run] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # runs where wrk itself failed

    def median(self, attr: str) -> float | None:
        values = [getattr(r.result, attr) for r in self.runs]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    @property
    def headline_metric(self) -> str:
        return "requests_per_sec" if self.object_size <= REQS_METRIC_MAX_SIZE else "bytes_per_sec"


def fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def fmt_mbps(bytes_per_sec: float | None) -> str:
    return "—" if bytes_per_sec is None else f"{bytes_per_sec / 1e6:,.1f}"


def fmt_latency(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_size(size: int) -> str:
    if size >= 1024 * 1024 and size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def _notes(series: Series) -> str:
    notes = []
    n = len(series.runs) + len(series.failures)
    if series.failures:
        notes.append(f"⚠ wrk failed in {len(series.failures)}/{n} runs")
    errored = [r for r in series.runs if r.result.error_count]
    if errored:
        worst = max(errored, key=lambda r: r.result.error_count).result.error_summary()
        notes.append(f"⚠ errors in {len(errored)}/{n} runs (worst: {worst})")
    fetches = sum(r.origin_fetches for r in series.runs)
    if fetches:
        notes.append(f"⚠ {fetches} origin fetches during runs (not all HITs)")
    return "; ".join(notes)


def _ratio(series: Series, reference: Series | None) -> str:
    if reference is None or reference is series:
        return "—"
    metric = series.headline_metric
    ours, theirs = series.median(metric), reference.median(metric)
    if ours is None or not theirs:
        return "—"
    unit = "req/s" if metric == "requests_per_sec" else "bytes/s"
    suspect = any(s.failures or any(r.flagged for r in s.runs) for s in (series, reference))
    return f"**{ours / theirs:.2f}** ({unit})" + (" ⚠" if suspect else "")


def markdown_table(all_series: Sequence[Series], reference_key: str, subject_key: str) -> str:
    """The results table; the ratio column is subject/reference on the object's headline metric.

    ``runs`` lists each run's headline value in run order; ⚠ marks a run with wrk errors or
    with origin traffic during the run.
    """
    header = (
        f"| object | server | req/s | MB/s | p99 latency | {subject_key}/{reference_key} "
        "| runs | notes |\n|---|---|---:|---:|---:|---:|---|---|"
    )
    rows = [header]
    for series in all_series:
        reference = next(
            (
                s
                for s in all_series
                if s.object_name == series.object_name and s.server_key == reference_key
            ),
            None,
        )
        ratio = _ratio(series, reference) if series.server_key == subject_key else "—"
        metric = series.headline_metric
        if metric == "requests_per_sec":
            values, unit = [r.result.requests_per_sec for r in series.runs], "req/s"
        else:
            values, unit = [r.result.bytes_per_sec / 1e6 for r in series.runs], "MB/s"
        per_run = " · ".join(
            f"{v:,.0f}" + (" ⚠" if r.flagged else "")
            for v, r in zip(values, series.runs, strict=True)
        )
        rows.append(
            f"| {fmt_size(series.object_size)} (`/obj/{series.object_name}`) "
            f"| {series.server_label} "
            f"| {fmt_rate(series.median('requests_per_sec'))} "
            f"| {fmt_mbps(series.median('bytes_per_sec'))} "
            f"| {fmt_latency(series.median('latency_p99'))} "
            f"| {ratio} "
            f"| {per_run + ' ' + unit if per_run else '—'} "
            f"| {_notes(series)} |"
        )
    return "\n".join(rows)
