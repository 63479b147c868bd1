"""The weekly report's Fleet section, when the report runs over a fleet (docs/fleet.md): one row
per target, worst first. Pure: no Prefect, no I/O.

What a row holds, per target:

- **Its PostgreSQL, read when the report runs** (`DatabaseFigures`, read-only): size, the
  shared-buffer cache hit ratio since the statistics were last reset, the tables whose planner
  statistics are stale (rows changed since the last analyze >= `stale_ratio`, or never
  analyzed), and from pg_stat_statements (since its last reset) how many statements have a mean
  time >= `slow_statement_ms` and the slowest one. These are a snapshot at report time, not the
  week's figures; week over week they are compared with the fleet table archived with last
  week's report (`data/fleet.csv`).
- **Its own Prometheus, if the fleet file gives the target a `prometheus` block**: the report's
  own targets (deployments/report.yaml) evaluated against it, met / missed, and week over week
  from the same PromQL at last week's end. Without one the row says so; the report's other
  sections are the platform-wide figures of the main Prometheus, which has no per-database label.
- **What perfops recorded about its database this week**: the `perfops.*` events whose resource
  is the database (`perfops.postgres.<host>:<port>/<db>`, or a table of it): statistics refresh
  failures and partition problems count as problems.

The order, worst first (`worst_first`):

1. targets that could not be reached (we cannot say how they are);
2. most of the report's targets missed on the target's own Prometheus;
3. most problems (cache hit ratio under its minimum, stale tables, slow statements, sections its
   Prometheus did not answer, failures recorded this week);
4. the biggest regression week over week (the largest relative worsening of one figure);
5. the target's name.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from decisions.fleet import Target, targets_message
from decisions.reporting import (
    Check,
    FleetLimits,
    RecordedEvent,
    format_value,
)
from decisions.staleness import StatisticsPolicy, TableStats, decide
from perfops.errors import ConfigurationError

FleetResult = Literal["unreachable", "attention", "ok"]
QUERY_SHOWN = 120


class DatabaseFigures(BaseModel):
    """One target's PostgreSQL as the report reads it (tasks.postgres.report_figures)."""

    server: str = Field(description="e.g. PostgreSQL 15.8, primary")
    size_bytes: int
    blks_hit: int
    blks_read: int
    stats_reset: datetime | None = None
    tables: list[TableStats] = Field(default_factory=list)
    statements_note: str | None = Field(
        default=None, description="Why there are no statement figures (no pg_stat_statements)."
    )
    slow_statements: int | None = None
    slowest_mean_ms: float | None = None
    slowest_calls: int | None = None
    slowest_query: str = ""

    @property
    def cache_hit_ratio(self) -> float | None:
        total = self.blks_hit + self.blks_read
        return self.blks_hit / total if total else None


# The systems of a target the Fleet section reads; a target with neither (a cache, an Auto
# Scaling group scaled on the platform's Prometheus) has no row: nothing about it is read.
REPORTED_SYSTEMS = ("postgres", "prometheus")


def selection_label(selection: list[str] | str) -> str:
    """How the report names a selection (`targets`): a name, or the names joined."""
    return selection if isinstance(selection, str) else ", ".join(selection)


def _systems(target: Target) -> str:
    systems = sorted(target.blocks) + (["autoscaling"] if target.has("autoscaling") else [])
    return f"{target.name} ({', '.join(systems)})"


def reported_targets(targets: list[Target], selection: str) -> list[Target]:
    """The selected targets the Fleet section reads (a `postgres` or `prometheus` block), in
    the fleet's order; none raises ConfigurationError naming the selection and what its
    targets have. The flow checks this before any query, so a selection of caches alone fails
    at once, not after the report's Prometheus queries."""
    reported = [t for t in targets if any(t.has(s) for s in REPORTED_SYSTEMS)]
    if not reported:
        shown = ", ".join(_systems(t) for t in targets[:5]) + (", ..." if len(targets) > 5 else "")
        raise ConfigurationError(
            f"no target of {selection} has a postgres or prometheus block in the fleet file "
            f"({shown}): the Fleet section has nothing to read. Caches are in the report's "
            "Caches section (from collect_cache_stats' events) without --fleet / targets; "
            "select targets with a postgres or prometheus block for a Fleet section"
        )
    return reported


class TargetFigures(BaseModel):
    """Everything the report gathered about one target (tasks.fleet_report)."""

    target: str
    labels: dict[str, str] = Field(default_factory=dict)
    cluster: str = ""
    database: DatabaseFigures | None = None
    checks: list[Check] | None = Field(
        default=None, description="The report's targets on its own Prometheus; None: no block."
    )
    missing_sections: dict[str, str] = Field(default_factory=dict)
    unreachable: list[str] = Field(
        default_factory=list, description="One line per system that did not answer, and why."
    )
    events: list[RecordedEvent] = Field(default_factory=list)


class FleetRow(BaseModel):
    """One target's row of the Fleet section."""

    target: str
    result: FleetResult
    reason: str
    missed: int | None = None
    met: int | None = None
    problems: list[str] = Field(default_factory=list)
    regression: float | None = Field(
        default=None, description="Largest relative worsening week over week (0.3 = 30% worse)."
    )
    regression_of: str = ""
    size_bytes: int | None = None
    cache_hit_ratio: float | None = None
    stale_tables: int | None = None
    slow_statements: int | None = None
    slowest_mean_ms: float | None = None
    slowest_query: str = ""
    recorded: int = Field(default=0, description="perfops events about its database this week.")
    labels: dict[str, str] = Field(default_factory=dict)
    cluster: str = ""


def worst_first(row: FleetRow) -> tuple[int, int, int, float, str]:
    """The sort key of the Fleet section: unreachable, most missed targets, most problems,
    biggest regression week over week, then the name (see the module's docstring)."""
    return (
        0 if row.result == "unreachable" else 1,
        -(row.missed or 0),
        -len(row.problems),
        -(row.regression or 0.0),
        row.target,
    )


def rank(rows: list[FleetRow]) -> list[FleetRow]:
    """The rows, worst first."""
    return sorted(rows, key=worst_first)


def _change(now: float | None, before: float | None, better: str) -> float | None:
    """How much worse `now` is than `before`, relatively (None when not worse or unknown)."""
    if now is None or before is None or before == 0 or not math.isfinite(before):
        return None
    change = (now - before) / abs(before)
    worse = change if better == "lower" else -change
    return worse if worse > 0 else None


def _regression(
    figures: TargetFigures, row: FleetRow, previous: dict[str, float | None] | None
) -> tuple[float | None, str]:
    """The figure that worsened most week over week, and by how much."""
    candidates: list[tuple[float, str]] = []
    for c in figures.checks or []:
        worse = _change(c.value, c.previous, c.better)
        if worse is not None:
            candidates.append((worse, c.name))
    if previous:
        miss = None if row.cache_hit_ratio is None else 1 - row.cache_hit_ratio
        before_hit = previous.get("cache_hit_ratio")
        before_miss = None if before_hit is None else 1 - before_hit
        for worse, name in (
            (
                _change(row.slowest_mean_ms, previous.get("slowest_mean_ms"), "lower"),
                "slowest statement mean",
            ),
            (_change(miss, before_miss, "lower"), "cache misses"),
            (
                _change(
                    None if row.slow_statements is None else float(row.slow_statements),
                    previous.get("slow_statements"),
                    "lower",
                ),
                "slow statements",
            ),
        ):
            if worse is not None:
                candidates.append((worse, name))
    if not candidates:
        return None, ""
    worse, name = max(candidates)
    return worse, name


def _problems(figures: TargetFigures, row: FleetRow, limits: FleetLimits) -> list[str]:
    out: list[str] = []
    db = figures.database
    if db is not None:
        hit = db.cache_hit_ratio
        if hit is not None and hit < limits.cache_hit_ratio_min:
            out.append(
                f"cache hit ratio {hit:.1%} < {limits.cache_hit_ratio_min:.0%}"
                + (f" since {db.stats_reset:%Y-%m-%d}" if db.stats_reset else "")
            )
        if row.stale_tables:
            out.append(
                f"{row.stale_tables} tables with stale statistics (>= "
                f"{limits.stale_ratio:.0%} rows changed since the last analyze, or never)"
            )
        if db.slow_statements:
            out.append(
                f"{db.slow_statements} statements with mean >= {limits.slow_statement_ms:,.0f} "
                f"ms (slowest {format_value(db.slowest_mean_ms, 'ms')})"
            )
    for section, why in figures.missing_sections.items():
        out.append(f"its Prometheus did not answer for {section}: {why}")
    failed = sum(
        int(e.payload.get("failed") or 0)
        for e in figures.events
        if e.event == "perfops.stats.refreshed"
    )
    if failed:
        out.append(f"statistics refresh failed on {failed} tables this week")
    partition = [
        f"{e.payload.get('table')}: {p}"
        for e in figures.events
        if e.event == "perfops.partitions.rotated"
        for p in e.payload.get("problems") or []
    ] + [
        f"{e.payload.get('table')}: {e.payload.get('rows')} rows in the default partition"
        for e in figures.events
        if e.event == "perfops.partitions.default_rows"
    ]
    if partition:
        out.append(f"partition problems this week: {'; '.join(partition[:2])}")
    return out


def stale_table_count(tables: list[TableStats], limits: FleetLimits) -> int:
    """Tables refresh_stale_statistics would ANALYZE at `stale_ratio` (stale or never analyzed)."""
    policy = StatisticsPolicy(analyze_threshold=limits.stale_ratio)
    return sum(d.acts for d in decide(tables, policy))


def fleet_row(
    figures: TargetFigures,
    limits: FleetLimits,
    previous: dict[str, float | None] | None = None,
) -> FleetRow:
    """One target's row from what was gathered, against `limits`, compared with `previous`
    (its row of last week's archived fleet table, when there is one)."""
    db = figures.database
    checks = figures.checks
    row = FleetRow(
        target=figures.target,
        result="ok",
        reason="",
        missed=None if checks is None else sum(c.status == "missed" for c in checks),
        met=None if checks is None else sum(c.status == "met" for c in checks),
        size_bytes=db.size_bytes if db else None,
        cache_hit_ratio=db.cache_hit_ratio if db else None,
        stale_tables=stale_table_count(db.tables, limits) if db else None,
        slow_statements=db.slow_statements if db else None,
        slowest_mean_ms=db.slowest_mean_ms if db else None,
        slowest_query=" ".join((db.slowest_query if db else "").split())[:QUERY_SHOWN],
        recorded=len(figures.events),
        labels=dict(figures.labels),
        cluster=figures.cluster,
    )
    row.problems = _problems(figures, row, limits)
    row.regression, row.regression_of = _regression(figures, row, previous)
    if figures.unreachable:
        row.result = "unreachable"
        row.reason = "; ".join(figures.unreachable)
        return row
    parts: list[str] = []
    if row.missed:
        assert checks is not None
        worst = max(
            (c for c in checks if c.status == "missed"), key=lambda c: c.worse_by, default=None
        )
        parts.append(
            f"{row.missed} of {len([c for c in checks if c.status in ('met', 'missed')])} "
            "targets missed"
            + (
                f" (worst: {worst.name} {format_value(worst.value, worst.unit)} against "
                f"{format_value(worst.target, worst.unit)})"
                if worst
                else ""
            )
        )
    parts += row.problems
    if parts:
        row.result = "attention"
        row.reason = "; ".join(parts)
    else:
        row.reason = "nothing missed or over its limit"
    if row.regression is not None:
        row.reason += f"; {row.regression_of} {row.regression:+.0%} week over week"
    return row


class FleetView(BaseModel):
    """The Fleet section: the selection and its rows, worst first."""

    selection: str
    read_at: datetime
    rows: list[FleetRow]
    compared_with: str = Field(
        description="What the week-over-week PostgreSQL figures compare with, or why nothing."
    )

    @property
    def unreachable(self) -> list[FleetRow]:
        return [r for r in self.rows if r.result == "unreachable"]

    @property
    def summary(self) -> str:
        counts = {k: sum(r.result == k for r in self.rows) for k in ("unreachable", "attention")}
        return (
            f"{len(self.rows)} targets: {counts['unreachable']} unreachable, "
            f"{counts['attention']} need attention, "
            f"{len(self.rows) - sum(counts.values())} ok"
        )

    @property
    def failure(self) -> str | None:
        """`1 of 4 targets unreachable: down: cannot connect ...`, or None."""
        down = [(r.target, r.reason) for r in self.unreachable]
        return targets_message(down, self.rows, "unreachable")


def build_view(
    selection: str,
    read_at: datetime,
    gathered: list[TargetFigures],
    limits: FleetLimits,
    previous: dict[str, dict[str, float | None]],
    compared_with: str,
) -> FleetView:
    """The Fleet section from every target's figures, worst first."""
    rows = [fleet_row(f, limits, previous.get(f.target)) for f in gathered]
    return FleetView(
        selection=selection, read_at=read_at, rows=rank(rows), compared_with=compared_with
    )


# ---------------------------------------------------------------------------- tables and text

NUMERIC = (
    "missed",
    "met",
    "regression",
    "size_bytes",
    "cache_hit_ratio",
    "stale_tables",
    "slow_statements",
    "slowest_mean_ms",
    "recorded",
)


INTEGERS = ("rank", "missed", "met", "size_bytes", "stale_tables", "slow_statements", "recorded")
"""Columns of `data_rows` that are whole numbers (kept whole in the CSV when some are empty)."""


def data_rows(view: FleetView) -> list[dict[str, Any]]:
    """The archived table (`data/fleet.csv`, `.parquet`): raw numbers, worst first. Next week's
    report reads it back (`previous_figures`) for week over week."""
    return [
        {
            "rank": n,
            "target": r.target,
            "result": r.result,
            "reason": r.reason,
            "missed": r.missed,
            "met": r.met,
            "regression": r.regression,
            "regression_of": r.regression_of,
            "size_bytes": r.size_bytes,
            "cache_hit_ratio": r.cache_hit_ratio,
            "stale_tables": r.stale_tables,
            "slow_statements": r.slow_statements,
            "slowest_mean_ms": r.slowest_mean_ms,
            "slowest_query": r.slowest_query,
            "recorded": r.recorded,
            "labels": " ".join(f"{k}={v}" for k, v in r.labels.items()),
            "cluster": r.cluster,
            "read_at": view.read_at.isoformat(),
        }
        for n, r in enumerate(view.rows, 1)
    ]


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value} B"


def _targets(r: FleetRow) -> str:
    if r.missed is None:
        return "-"
    return f"{r.missed} missed, {r.met} met"


def display_rows(view: FleetView) -> list[dict[str, str]]:
    """What the page, the text and the artifact show: each row leads with the target, its
    result and the reason, then the figures."""
    return [
        {
            "target": r.target,
            "result": r.result,
            "reason": r.reason,
            "targets (own Prometheus)": _targets(r),
            "worst week over week": (
                f"{r.regression_of} {r.regression:+.0%}" if r.regression is not None else "-"
            ),
            "cache hit": format_value(r.cache_hit_ratio, "ratio")
            if r.cache_hit_ratio is not None
            else "-",
            "stale tables": "-" if r.stale_tables is None else str(r.stale_tables),
            "slow statements": "-" if r.slow_statements is None else str(r.slow_statements),
            "slowest mean": format_value(r.slowest_mean_ms, "ms")
            if r.slowest_mean_ms is not None
            else "-",
            "size": _size(r.size_bytes),
            "events": str(r.recorded),
        }
        for r in view.rows
    ]


def describe(view: FleetView) -> str:
    """The line above the table: what it is, when the databases were read, the comparison."""
    return (
        f"Fleet {view.selection}: {view.summary}. Worst first: unreachable, then most targets "
        "missed on the target's own Prometheus, most problems, biggest regression week over "
        f"week. Databases read {view.read_at:%Y-%m-%d %H:%M} UTC (pg_stat_statements and the "
        f"cache hit ratio count since their last reset); week over week: {view.compared_with}."
    )


def previous_figures(data: bytes | None) -> dict[str, dict[str, float | None]]:
    """Last week's archived `data/fleet.csv`, by target: its numeric figures (empty = None)."""
    if not data:
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for row in csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"))):
        figures: dict[str, float | None] = {}
        for name in NUMERIC:
            try:
                value = float(row.get(name) or "nan")
            except ValueError:
                value = math.nan
            figures[name] = value if math.isfinite(value) else None
        if row.get("target"):
            out[row["target"]] = figures
    return out


def events_of(events: list[RecordedEvent], resource: str) -> list[RecordedEvent]:
    """The events about database `resource` (`perfops.postgres.<host>:<port>/<db>`) or one of its
    tables (`.../<db>/<table>`)."""
    return [e for e in events if e.resource == resource or e.resource.startswith(resource + "/")]


def fleet_things(view: FleetView | None) -> list[tuple[float, str]]:
    """The fleet's candidates for the three things to look at (weights as in
    `things_to_look_at`): unreachable targets after missed targets and big regressions, before
    missing sections; then the worst target that needs attention, before SLA alerts."""
    if view is None:
        return []
    out: list[tuple[float, str]] = []
    if view.failure:
        out.append((45, f"fleet: {view.failure}"))
    worst = next((r for r in view.rows if r.result == "attention"), None)
    if worst is not None:
        out.append((37, f"fleet: worst target {worst.target}: {worst.reason}"))
    return out
