"""The weekly report's decisions: which week, the configuration (targets and PromQL), the week's
numbers from raw query results, met/missed per target, week over week, the three things to look
at, and what perfops itself recorded that week. Pure: no Prefect, no I/O.

A number that Prometheus did not return is `None` and is shown as "no data", never as zero; an
endpoint whose requests counter did not move is "no traffic".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from decisions.report_caches import NOTHING as CACHES_NOTHING
from decisions.report_caches import cache_lines, cache_things
from decisions.report_load import NOTHING as LOAD_NOTHING
from decisions.report_load import load_lines, load_things
from perfops.clock import as_utc
from perfops.errors import ConfigurationError
from perfops.wording import counted

WEEK = timedelta(days=7)
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
_WEEK_RE = re.compile(r"^(\d{4})-W(\d{2})$")

# ------------------------------------------------------------------------------------ the week


class ReportWeek(BaseModel):
    """An ISO week: Monday 00:00 UTC (inclusive) to the next Monday 00:00 UTC (exclusive)."""

    label: str
    start: datetime
    end: datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())

    def previous(self) -> ReportWeek:
        return week_of(self.start - WEEK)


def week_of(moment: datetime) -> ReportWeek:
    """The ISO week containing `moment` (UTC)."""
    year, week, _ = moment.astimezone(UTC).isocalendar()
    monday = date.fromisocalendar(year, week, 1)
    start = datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    return ReportWeek(label=f"{year}-W{week:02d}", start=start, end=start + WEEK)


def last_complete_week(now: datetime) -> ReportWeek:
    """The latest ISO week that has ended by `now` (on a Monday: the week before)."""
    return week_of(as_utc(now) - WEEK)


def parse_week(text: str, now: datetime) -> ReportWeek:
    """`2026-W47` -> that ISO week; a malformed, non-existent or unfinished week is an error
    naming the latest complete week."""
    now = as_utc(now)
    latest = last_complete_week(now).label
    match = _WEEK_RE.match(text.strip())
    if not match:
        raise ConfigurationError(
            f"week {text!r} is not an ISO week like 2026-W47 (YYYY-Www); latest complete week: "
            f"{latest}"
        )
    year, number = int(match.group(1)), int(match.group(2))
    try:
        monday = date.fromisocalendar(year, number, 1)
    except ValueError:
        weeks = date(year, 12, 28).isocalendar()[1]
        raise ConfigurationError(
            f"week {text!r} does not exist: {year} has weeks 01-{weeks}; latest complete week: "
            f"{latest}"
        ) from None
    week = week_of(datetime(monday.year, monday.month, monday.day, tzinfo=UTC))
    if week.end > now:
        state = "has not started" if week.start > now else "is not over"
        raise ConfigurationError(
            f"week {week.label} {state} yet (it ends {week.end:%Y-%m-%d %H:%M} UTC); latest "
            f"complete week: {latest}"
        )
    return week


# ---------------------------------------------------------------------------- configuration


class EndpointTarget(BaseModel):
    method: str = Field(description="HTTP method, as in the `method` label.")
    route: str = Field(description="Route, as in the `route` label.")
    p95_ms: float = Field(gt=0, description="p95 latency target in milliseconds.")
    rps: float = Field(gt=0, description="Designed load in requests per second.")

    @property
    def key(self) -> str:
        return f"{self.method} {self.route}"


class SloConfig(BaseModel):
    name: str = Field(pattern=r"^[\w.-]+$")
    objective: float = Field(gt=0, lt=1, description="e.g. 0.999 for 99.9%")
    sli: str = Field(description="PromQL: the share of good events in $window (0-1).")


class ResourceLimits(BaseModel):
    cpu_normal_max: float = Field(default=70, gt=0, le=100)
    cpu_peak_max: float = Field(default=90, gt=0, le=100)
    memory_normal_max: float = Field(default=80, gt=0, le=100)
    memory_peak_max: float = Field(default=95, gt=0, le=100)


class DurationMetric(BaseModel):
    name: str = Field(pattern=r"^\w+$")
    title: str
    quantile: str = Field(description="PromQL with $quantile and $window; seconds.")
    p95_ms: float | None = Field(default=None, gt=0)


REQUIRED_QUERIES = (
    "latency_quantile",
    "throughput",
    "peak_throughput",
    "error_rate",
    "cpu_percent",
    "cpu_peak_percent",
    "memory_percent",
    "memory_peak_percent",
)


class FleetLimits(BaseModel):
    """What counts as a problem in a fleet target's database (the report's Fleet section, run
    over a fleet: docs/fleet.md)."""

    cache_hit_ratio_min: float = Field(
        default=0.99,
        gt=0,
        le=1,
        description="Shared-buffer hit ratio below this is a problem (pghero's 99%).",
    )
    slow_statement_ms: float = Field(
        default=1000,
        gt=0,
        description="A statement whose mean execution time reaches this is slow (as "
        "find_slow_queries' default threshold).",
    )
    stale_ratio: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="A table whose rows changed since its last analyze reach this fraction of "
        "its rows (or never analyzed) has stale statistics (as refresh_stale_statistics).",
    )


class ReportConfig(BaseModel):
    """Targets and the PromQL behind every number (deployments/report.yaml documents it)."""

    endpoint_labels: list[str] = Field(default_factory=lambda: ["method", "route"])
    endpoints: list[EndpointTarget] = Field(default_factory=list)
    error_rate_max: float = Field(default=0.01, ge=0, le=1)
    slos: list[SloConfig] = Field(default_factory=list)
    resources: ResourceLimits = Field(default_factory=ResourceLimits)
    durations: list[DurationMetric] = Field(default_factory=list)
    queries: dict[str, str]
    chart_step_s: int = Field(default=3600, ge=60, le=86400)
    recipients: list[str] = Field(default_factory=list)
    fleet: FleetLimits = Field(default_factory=FleetLimits)

    @field_validator("endpoint_labels")
    @classmethod
    def _two_labels(cls, value: list[str]) -> list[str]:
        if len(value) != 2:
            raise ValueError("endpoint_labels names exactly two labels: method and route")
        return value

    @field_validator("queries")
    @classmethod
    def _all_queries(cls, value: dict[str, str]) -> dict[str, str]:
        missing = [q for q in REQUIRED_QUERIES if q not in value]
        if missing:
            raise ValueError(f"queries lacks {', '.join(missing)}")
        return value

    def target_for(self, method: str, route: str) -> EndpointTarget | None:
        return next((e for e in self.endpoints if (e.method, e.route) == (method, route)), None)


def load_config(path: Path) -> ReportConfig:
    """Read and check a report configuration; errors name the file and the field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(
            f"report configuration {path} does not exist (see deployments/report.yaml)"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"report configuration {path} is not valid YAML: {exc}") from None
    try:
        return ReportConfig.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigurationError(f"report configuration {path}: {where}: {first['msg']}") from None


def promql(template: str, *, window_s: int, quantile: float | None = None) -> str:
    """Fill `$window` (and `$quantile`) in a PromQL template."""
    values = {"window": f"{window_s}s"}
    if quantile is not None:
        values["quantile"] = repr(quantile)
    try:
        return Template(template).substitute(values)
    except (KeyError, ValueError) as exc:
        raise ConfigurationError(
            f"PromQL template {template!r}: unknown placeholder {exc}"
        ) from None


def week_queries(config: ReportConfig, window_s: int) -> dict[str, str]:
    """Every query of one figure per quantity over `window_s` seconds, by name."""
    q = config.queries
    out: dict[str, str] = {}
    for name, value in QUANTILES.items():
        out[f"latency_{name}"] = promql(q["latency_quantile"], window_s=window_s, quantile=value)
        for d in config.durations:
            out[f"duration_{d.name}_{name}"] = promql(d.quantile, window_s=window_s, quantile=value)
    for name in REQUIRED_QUERIES[1:]:
        out[name] = promql(q[name], window_s=window_s)
    for slo in config.slos:
        out[f"slo_{slo.name}"] = promql(slo.sli, window_s=window_s)
    return out


def chart_queries(config: ReportConfig) -> dict[str, str]:
    """Range queries for the charts: each point covers one chart step."""
    step = config.chart_step_s
    q = config.queries
    out = {
        f"latency_{name}": promql(q["latency_quantile"], window_s=step, quantile=value)
        for name, value in QUANTILES.items()
    }
    out["throughput"] = promql(q["throughput"], window_s=step)
    out["error_rate"] = promql(q["error_rate"], window_s=step)
    out["cpu_percent"] = promql(q["cpu_percent"], window_s=step)
    out["memory_percent"] = promql(q["memory_percent"], window_s=step)
    return out


# ------------------------------------------------------------------------- the week's numbers

Sample = tuple[dict[str, str], float]
"""One series of an instant query: its labels and its value."""


class QueryResult(BaseModel):
    """One instant query: its samples, or the error that kept it from answering."""

    samples: list[tuple[dict[str, str], float]] = Field(default_factory=list)
    error: str | None = None


class SeriesResult(BaseModel):
    """A range query's frame (rows are times, columns are series), or why there is none."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    frame: pd.DataFrame | None = None
    error: str | None = None


class EndpointWeek(BaseModel):
    method: str
    route: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    rps: float | None = None
    peak_rps: float | None = None
    error_rate: float | None = None
    status: Literal["ok", "no traffic", "no data"] = "ok"

    @property
    def key(self) -> str:
        return f"{self.method} {self.route}"


class DurationWeek(BaseModel):
    name: str
    title: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


class WeekNumbers(BaseModel):
    """One week's figures, each from its own PromQL; `None` = Prometheus returned nothing."""

    week: str
    endpoints: list[EndpointWeek]
    slis: dict[str, float | None]
    cpu_percent: float | None = None
    cpu_peak_percent: float | None = None
    memory_percent: float | None = None
    memory_peak_percent: float | None = None
    durations: list[DurationWeek] = Field(default_factory=list)
    missing: dict[str, str] = Field(default_factory=dict)  # section -> why it has no data

    def endpoint(self, key: str) -> EndpointWeek | None:
        return next((e for e in self.endpoints if e.key == key), None)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _scalar(result: QueryResult | None) -> float | None:
    if result is None or result.error or not result.samples:
        return None
    return _finite(result.samples[0][1])


SCALAR_QUERIES = ("slo_", "cpu_", "memory_", "duration_")
"""Figures one number stands for: their query must answer one series."""


def _labels_text(metric: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return "{" + inner + "}"


def _several_series(name: str, result: QueryResult, labels: list[str]) -> str | None:
    """Why `result` of query `name` cannot be read as the report reads it: a figure's query
    answered several series (the first would stand for all), or an endpoint query several for
    one endpoint (labels besides `endpoint_labels`: the last would); None when it can."""
    if name.startswith(SCALAR_QUERIES):
        if len(result.samples) < 2:
            return None
        shown = ", ".join(_labels_text(m) for m, _ in result.samples[:3])
        more = f" and {len(result.samples) - 3} more" if len(result.samples) > 3 else ""
        return (
            f"answered {len(result.samples)} series ({shown}{more}), a figure needs one: "
            "aggregate it (avg, max or sum without by)"
        )
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for metric, _ in result.samples:
        key = (metric.get(labels[0], ""), metric.get(labels[1], ""))
        if key in seen:
            return (
                f"answered several series for endpoint {key[0]} {key[1]} "
                f"({_labels_text(seen[key])}, {_labels_text(metric)}): keep only the labels "
                f"{', '.join(labels)} (sum by ({', '.join(labels)}) ...)"
            )
        seen[key] = metric
    return None


def _by_endpoint(result: QueryResult | None, labels: list[str]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for metric, value in result.samples if result and not result.error else []:
        key = (metric.get(labels[0], ""), metric.get(labels[1], ""))
        out[key] = value
    return out


def _ms(seconds: float | None) -> float | None:
    seconds = _finite(seconds)
    return None if seconds is None else seconds * 1000.0


SECTION_QUERIES = {
    "endpoints": ("latency_", "throughput", "peak_throughput", "error_rate"),
    "availability": ("slo_",),
    "resources": ("cpu_", "memory_"),
    "durations": ("duration_",),
}


def assemble_week(week: str, results: dict[str, QueryResult], config: ReportConfig) -> WeekNumbers:
    """The week's figures from the instant query results named as in `week_queries`. A query
    answering more series than its figure can stand for is that query's error (its section
    missing, naming the series), never one of them taken for all."""
    labels = config.endpoint_labels
    results = dict(results)
    for name, result in list(results.items()):
        why = None if result.error else _several_series(name, result, labels)
        if why is not None:
            results[name] = QueryResult(error=why)
    per = {name: _by_endpoint(results.get(name), labels) for name in results}
    keys: set[tuple[str, str]] = {(e.method, e.route) for e in config.endpoints}
    for name in ("throughput", "latency_p95", "latency_p50", "latency_p99", "error_rate"):
        keys |= set(per.get(name, {}))
    endpoints: list[EndpointWeek] = []
    configured = [(e.method, e.route) for e in config.endpoints]
    for method, route in configured + sorted(keys - set(configured)):
        key = (method, route)
        rps = _finite(per.get("throughput", {}).get(key))
        e = EndpointWeek(
            method=method,
            route=route,
            p50_ms=_ms(per.get("latency_p50", {}).get(key)),
            p95_ms=_ms(per.get("latency_p95", {}).get(key)),
            p99_ms=_ms(per.get("latency_p99", {}).get(key)),
            rps=rps,
            peak_rps=_finite(per.get("peak_throughput", {}).get(key)),
            error_rate=_finite(per.get("error_rate", {}).get(key)),
        )
        if rps is None and e.p95_ms is None:
            e.status = "no data"
        elif rps == 0:
            e.status = "no traffic"
            e.error_rate = None  # 0/0: there were no requests to fail
        endpoints.append(e)
    missing: dict[str, str] = {}
    for section, prefixes in SECTION_QUERIES.items():
        errors = [
            f"{name}: {r.error}"
            for name, r in results.items()
            if r.error and name.startswith(prefixes)
        ]
        if errors:
            missing[section] = "; ".join(errors[:2]) + (
                f" (and {len(errors) - 2} more)" if len(errors) > 2 else ""
            )
    durations = [
        DurationWeek(
            name=d.name,
            title=d.title,
            **{f"{q}_ms": _ms(_scalar(results.get(f"duration_{d.name}_{q}"))) for q in QUANTILES},
        )
        for d in config.durations
    ]
    return WeekNumbers(
        week=week,
        endpoints=endpoints,
        slis={s.name: _scalar(results.get(f"slo_{s.name}")) for s in config.slos},
        cpu_percent=_scalar(results.get("cpu_percent")),
        cpu_peak_percent=_scalar(results.get("cpu_peak_percent")),
        memory_percent=_scalar(results.get("memory_percent")),
        memory_peak_percent=_scalar(results.get("memory_peak_percent")),
        durations=durations,
        missing=missing,
    )


# ------------------------------------------------------------------------ met / missed, trends

Status = Literal["met", "missed", "no data", "no traffic", "info"]


class Check(BaseModel):
    """One target: the week's value against it, and last week's."""

    section: str
    name: str
    value: float | None
    target: float | None
    unit: str
    better: Literal["lower", "higher"]
    status: Status
    previous: float | None = None
    detail: str = ""

    @property
    def change(self) -> float | None:
        """Relative change from the previous week (0.1 = +10%)."""
        if self.value is None or self.previous is None or self.previous == 0:
            return None
        return (self.value - self.previous) / abs(self.previous)

    @property
    def worse_by(self) -> float:
        """How far past the target, relative to it (0 when met or unknown)."""
        if self.status != "missed" or self.value is None or not self.target:
            return 0.0
        gap = self.value - self.target if self.better == "lower" else self.target - self.value
        return gap / abs(self.target)


def _check(
    section: str,
    name: str,
    value: float | None,
    target: float | None,
    unit: str,
    previous: float | None,
    *,
    better: Literal["lower", "higher"] = "lower",
    detail: str = "",
) -> Check:
    status: Status
    if value is None:
        status = "no data"
    elif target is None:
        status = "info"
    elif better == "lower":
        status = "met" if value <= target else "missed"
    else:
        status = "met" if value >= target else "missed"
    return Check(
        section=section,
        name=name,
        value=value,
        target=target,
        unit=unit,
        better=better,
        status=status,
        previous=previous,
        detail=detail,
    )


def error_budget_remaining(sli: float | None, objective: float) -> float | None:
    """Share of the error budget left: 1 = untouched, 0 = spent, negative = overspent."""
    if sli is None:
        return None
    return 1.0 - (1.0 - sli) / (1.0 - objective)


def evaluate(
    current: WeekNumbers, previous: WeekNumbers | None, config: ReportConfig
) -> list[Check]:
    """Every target of the configuration, checked against this week's figures."""
    checks: list[Check] = []
    for target in config.endpoints:
        now = current.endpoint(target.key)
        before = previous.endpoint(target.key) if previous else None
        if now is not None and now.status == "no traffic":
            checks.append(
                Check(
                    section="endpoints",
                    name=f"{target.key} p95",
                    value=None,
                    target=target.p95_ms,
                    unit="ms",
                    better="lower",
                    status="no traffic",
                    previous=before.p95_ms if before else None,
                    detail="no requests this week",
                )
            )
            continue
        load = ""
        if now is not None and now.peak_rps is not None:
            load = f"peak {now.peak_rps:,.0f} rps of {target.rps:,.0f} rps designed"
        checks.append(
            _check(
                "endpoints",
                f"{target.key} p95",
                now.p95_ms if now else None,
                target.p95_ms,
                "ms",
                before.p95_ms if before else None,
                detail=load,
            )
        )
        checks.append(
            _check(
                "endpoints",
                f"{target.key} error rate",
                now.error_rate if now else None,
                config.error_rate_max,
                "ratio",
                before.error_rate if before else None,
            )
        )
    for slo in config.slos:
        sli = current.slis.get(slo.name)
        budget = error_budget_remaining(sli, slo.objective)
        checks.append(
            _check(
                "availability",
                slo.name,
                sli,
                slo.objective,
                "ratio",
                previous.slis.get(slo.name) if previous else None,
                better="higher",
                detail="" if budget is None else f"error budget left {budget:.0%}",
            )
        )
    limits = config.resources
    for name, attr, limit in (
        ("CPU average", "cpu_percent", limits.cpu_normal_max),
        ("CPU peak", "cpu_peak_percent", limits.cpu_peak_max),
        ("memory average", "memory_percent", limits.memory_normal_max),
        ("memory peak", "memory_peak_percent", limits.memory_peak_max),
    ):
        checks.append(
            _check(
                "resources",
                name,
                getattr(current, attr),
                limit,
                "%",
                getattr(previous, attr) if previous else None,
            )
        )
    for d in config.durations:
        now_d = next((x for x in current.durations if x.name == d.name), None)
        before_d = (
            next((x for x in previous.durations if x.name == d.name), None) if previous else None
        )
        checks.append(
            _check(
                "durations",
                f"{d.title} p95",
                now_d.p95_ms if now_d else None,
                d.p95_ms,
                "ms",
                before_d.p95_ms if before_d else None,
            )
        )
    return checks


def format_value(value: float | None, unit: str) -> str:
    """A figure as a person reads it; `None` is "no data"."""
    if value is None:
        return "no data"
    if unit == "ms":
        return f"{value:,.0f} ms" if value >= 10 else f"{value:,.1f} ms"
    if unit == "ratio":
        return f"{value:.3%}" if value > 0.99 or value < 0.01 else f"{value:.1%}"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "rps":
        return f"{value:,.1f} rps"
    return f"{value:,.3g} {unit}".strip()


def format_change(check: Check) -> str:
    change = check.change
    if change is None:
        return "-" if check.previous is None else "n/a"
    if abs(change) < 0.005:
        return "unchanged"
    worse = (change > 0) == (check.better == "lower")
    return f"{change:+.0%} ({'worse' if worse else 'better'})"


# --------------------------------------------------------------------- what perfops recorded


class RecordedEvent(BaseModel):
    """A `perfops.*` event as the Prefect API returned it."""

    event: str
    occurred: datetime
    resource: str
    payload: dict[str, Any] = Field(default_factory=dict)


class RecordSection(BaseModel):
    """A report section built from perfops' own record of the week."""

    key: str
    title: str
    lines: list[str]
    rows: list[dict[str, Any]] = Field(default_factory=list)
    events: int = 0
    partial: bool = False  # some of its events were not read (a cap was hit): its lines say so

    @property
    def empty(self) -> bool:
        return self.events == 0 and not self.rows


RECORD_SECTIONS = {
    "database": ("Database", ("perfops.indexes.", "perfops.stats.", "perfops.queries.")),
    "partitions": ("Partitions", ("perfops.partitions.",)),
    "scaling": ("Scaling", ("perfops.scaling.",)),
    "sla": ("SLA alerts and incidents", ("perfops.sla.",)),
    "load": ("Load tests", ("perfops.load.",)),
    "caches": ("Caches", ("perfops.cache.",)),
}
NOTHING = {
    "database": "nothing recorded this week (find_slow_queries, suggest_indexes, "
    "check_index_health and refresh_stale_statistics emitted no events)",
    "partitions": "nothing recorded this week (no partition maintenance run emitted events)",
    "scaling": "nothing recorded this week (no scaling decision was emitted)",
    "sla": "nothing recorded this week (no SLA evaluation, alert or escalation was emitted)",
    "load": LOAD_NOTHING,
    "caches": CACHES_NOTHING,
}


# How the report reads the week's events: one query per section (its prefixes), newest first,
# at most MAX_EVENTS_PER_QUERY each; the shipped schedules emit thousands of some names a week
# (evaluate_slos about 10,080, collect_cache_stats 2,016 per Redis, scale_predictively 1,008 per
# target), so those are read apart: a name the report shows only the latest of reads one event,
# a high-volume name the report counts reads on its own, so its cap never cuts the rest.
MAX_EVENTS_PER_QUERY = 20_000
LATEST_ONLY = {"perfops.sla.evaluated": "sla"}
OWN_QUERY = {"perfops.cache.stats_collected": "caches", "perfops.scaling.decided": "scaling"}


class EventQuery(BaseModel):
    """One read of the week's events for a section: names by prefix or exact name."""

    section: str
    prefixes: list[str] = Field(default_factory=list)
    names: list[str] = Field(default_factory=list)
    exclude_names: list[str] = Field(default_factory=list)
    latest_only: bool = False  # the newest event only

    @property
    def label(self) -> str:
        return ", ".join(self.names or [f"{p}*" for p in self.prefixes])


def event_queries() -> list[EventQuery]:
    """The reads the report makes, per section of RECORD_SECTIONS."""
    apart = {**OWN_QUERY, **LATEST_ONLY}
    queries: list[EventQuery] = []
    for key, (_, prefixes) in RECORD_SECTIONS.items():
        alone = sorted(n for n, section in apart.items() if section == key)
        queries.append(EventQuery(section=key, prefixes=list(prefixes), exclude_names=alone))
        queries += [EventQuery(section=key, names=[n], latest_only=n in LATEST_ONLY) for n in alone]
    return queries


class PartialRead(BaseModel):
    """A query that hit its cap: the newest `read` of `total` matching events were read."""

    section: str
    what: str
    read: int
    total: int
    cap: int = MAX_EVENTS_PER_QUERY

    @property
    def line(self) -> str:
        return (
            f"partial: read the newest {self.read:,} of {self.total:,} {self.what} events of "
            f"the week (at most {self.cap:,} a query); older ones are not counted"
        )


class EventsRead(BaseModel):
    """The week's events (oldest first) and the queries that were cut at their cap."""

    events: list[RecordedEvent]
    partial: list[PartialRead] = Field(default_factory=list)


def _latest(events: list[RecordedEvent], name: str) -> RecordedEvent | None:
    matching = [e for e in events if e.event == name]
    return max(matching, key=lambda e: e.occurred) if matching else None


def _named(events: list[RecordedEvent], name: str) -> list[RecordedEvent]:
    return sorted((e for e in events if e.event == name), key=lambda e: e.occurred)


class SlowQueries(BaseModel):
    """The latest perfops-slow-queries table of the week (find_slow_queries' artifact)."""

    checked_at: datetime
    rows: list[dict[str, Any]]


SLOW_QUERIES_SHOWN = 5
SLOW_QUERIES_ARTIFACT = "perfops-slow-queries"


def _slow_query_rows(slow: SlowQueries | None) -> list[dict[str, Any]]:
    rows = []
    for r in (slow.rows if slow else [])[:SLOW_QUERIES_SHOWN]:
        if not isinstance(r.get("mean_ms"), int | float):
            continue
        query = " ".join(str(r.get("query", "")).split())
        rows.append(
            {
                "kind": f"slow query #{r.get('rank', '?')}",
                "what": f"mean {r['mean_ms']:,.1f} ms x {r.get('calls', '?'):,} calls "
                f"({r.get('share_of_db_time', '?')} of DB time): {query[:160]}",
            }
        )
    return rows


def _database_lines(
    events: list[RecordedEvent], slow_queries: SlowQueries | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    rows: list[dict[str, Any]] = _slow_query_rows(slow_queries)
    if rows and slow_queries is not None:
        lines.append(
            f"top {len(rows)} statements by total time at the last check "
            f"({slow_queries.checked_at:%a %d %b %H:%M} UTC, artifact perfops-slow-queries)"
        )
    slow = _named(events, "perfops.queries.slow_found")
    checked = _latest(events, "perfops.queries.checked")
    if checked is not None:
        p = checked.payload
        lines.append(
            f"slow queries: {len(slow)} of {len(_named(events, 'perfops.queries.checked'))} "
            f"checks found statements over {p.get('threshold_ms', '?')} ms; latest: "
            f"{p.get('over_threshold', 0)} over of {p.get('statements_seen', '?')} seen "
            f"({checked.occurred:%a %d %b})"
        )
    suggested = _latest(events, "perfops.indexes.suggested")
    if suggested is not None:
        items = suggested.payload.get("suggestions") or []
        lines.append(f"index suggestions (latest run): {len(items)}")
        for s in items:
            rows.append({"kind": "suggested", "what": s.get("ddl") or s.get("table", "")})
    for e in _named(events, "perfops.indexes.created"):
        for i in e.payload.get("indexes") or []:
            rows.append({"kind": "created", "what": f"{i.get('name')} ({i.get('seconds')} s)"})
    for e in _named(events, "perfops.indexes.dropped"):
        for i in e.payload.get("indexes") or []:
            rows.append({"kind": "dropped", "what": f"{i.get('index')}: {i.get('reason', '')}"})
    created = sum(
        len(e.payload.get("indexes") or []) for e in _named(events, "perfops.indexes.created")
    )
    dropped = sum(
        len(e.payload.get("indexes") or []) for e in _named(events, "perfops.indexes.dropped")
    )
    if created or dropped:
        lines.append(f"indexes created: {created}; dropped: {dropped}")
    health = _latest(events, "perfops.indexes.health_checked")
    if health is not None:
        findings = health.payload.get("findings") or {}
        found = ", ".join(f"{n} {k}" for k, n in findings.items()) or "no findings"
        wasted = health.payload.get("wasted_bytes") or 0
        lines.append(
            f"index health (latest): {health.payload.get('indexes_checked', '?')} indexes, "
            f"{found}, {wasted / 1_048_576:,.1f} MiB wasted"
        )
    refreshed = _named(events, "perfops.stats.refreshed")
    if refreshed:
        analyzed = sum(int(e.payload.get("analyzed") or 0) for e in refreshed)
        failed = sum(int(e.payload.get("failed") or 0) for e in refreshed)
        lines.append(
            f"statistics refreshed: {counted(analyzed, 'table')} analyzed in "
            f"{counted(len(refreshed), 'run')}, "
            f"{failed} failed"
        )
    return lines, rows


def _partition_lines(events: list[RecordedEvent]) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    rows: list[dict[str, Any]] = []
    rotated = _named(events, "perfops.partitions.rotated")
    by_table: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    for e in rotated:
        p = e.payload
        t = by_table.setdefault(
            str(p.get("table")), {"runs": 0, "created": 0, "archived": 0, "dropped": 0}
        )
        t["runs"] += 1
        for k in ("created", "archived", "dropped"):
            value = p.get(k) or 0
            t[k] += len(value) if isinstance(value, list) else int(value)
        problems += [f"{p.get('table')}: {x}" for x in p.get("problems") or []]
    for table, t in sorted(by_table.items()):
        rows.append({"table": table, **t})
    if rotated:
        lines.append(f"{len(rotated)} rotations over {len(by_table)} tables")
    archived = _named(events, "perfops.partitions.archived")
    if archived:
        total = sum(int(e.payload.get("rows") or 0) for e in archived)
        lines.append(f"{len(archived)} partitions archived ({total:,} rows)")
    defaults = _named(events, "perfops.partitions.default_rows")
    for e in defaults:
        problems.append(
            f"{e.payload.get('table')}: {e.payload.get('rows')} rows in the default partition"
        )
    lines += [f"problem: {p}" for p in problems]
    return lines, rows


def _scaling_lines(events: list[RecordedEvent]) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    decided = _named(events, "perfops.scaling.decided")
    applied = _named(events, "perfops.scaling.applied")
    if decided:
        changes = sum(1 for e in decided if e.payload.get("desired") != e.payload.get("current"))
        lines.append(f"{len(decided)} scaling decisions, {changes} proposing a change")
    rows = [
        {
            "time": e.occurred.strftime("%a %d %b %H:%M"),
            "group": e.payload.get("group"),
            "from": e.payload.get("from"),
            "to": e.payload.get("to"),
            "reason": e.payload.get("reason"),
        }
        for e in applied
    ]
    lines.append(f"{len(applied)} scaling actions applied")
    return lines, rows


def _sla_lines(events: list[RecordedEvent]) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    incidents = [
        e
        for e in events
        if e.event in ("perfops.sla.breached", "perfops.sla.escalated", "perfops.sla.resolved")
    ]
    counts = Counter(e.event.rpartition(".")[2] for e in incidents)
    if incidents:
        lines.append(", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
    rows = [
        {
            "time": e.occurred.strftime("%a %d %b %H:%M"),
            "what": e.event.rpartition(".")[2],
            "alert": e.payload.get("alert"),
            "slo": e.payload.get("slo"),
            "severity": e.payload.get("severity"),
            "level": e.payload.get("level"),
            "reason": e.payload.get("reason"),
        }
        for e in sorted(incidents, key=lambda e: e.occurred)
    ]
    evaluated = _latest(events, "perfops.sla.evaluated")
    if evaluated is not None:
        for slo in evaluated.payload.get("slos") or []:
            left = slo.get("budget_remaining")
            left_text = f"{left:.0%}" if isinstance(left, int | float) else "unknown"
            lines.append(
                f"SLO {slo.get('name')} (objective {slo.get('objective')}): error budget left "
                f"{left_text} at the last evaluation ({evaluated.occurred:%a %d %b %H:%M})"
            )
    return lines, rows


def summarize_records(
    events: list[RecordedEvent],
    slow_queries: SlowQueries | None = None,
    partial: list[PartialRead] | None = None,
) -> list[RecordSection]:
    """Sections of what perfops recorded in the week; an empty one says nothing was recorded.
    A section some of whose events were not read (`partial`) says so and is marked partial."""
    builders = {
        "database": lambda mine: _database_lines(mine, slow_queries),
        "partitions": _partition_lines,
        "scaling": _scaling_lines,
        "sla": _sla_lines,
        "load": load_lines,
        "caches": cache_lines,
    }
    sections = []
    for key, (title, prefixes) in RECORD_SECTIONS.items():
        mine = [e for e in events if e.event.startswith(prefixes)]
        if not mine and not (key == "database" and slow_queries and slow_queries.rows):
            sections.append(RecordSection(key=key, title=title, lines=[NOTHING[key]]))
            continue
        lines, rows = builders[key](mine)
        cut = [p.line for p in partial or [] if p.section == key]
        sections.append(
            RecordSection(
                key=key, title=title, lines=lines + cut, rows=rows, events=len(mine),
                partial=bool(cut),
            )
        )  # fmt: skip
    return sections


# ------------------------------------------------------------------ the three things to look at


def things_to_look_at(
    checks: list[Check],
    current: WeekNumbers,
    records: list[RecordSection],
    limit: int = 3,
    extra: list[tuple[float, str]] | None = None,
) -> list[str]:
    """The most important things of the week, worst first: missed targets (furthest past the
    target first), big regressions, missing data, then incidents and pending changes. `extra`
    adds weighted items (the fleet's: `decisions.report_fleet.fleet_things`)."""
    items: list[tuple[float, str]] = list(extra or [])
    for c in checks:
        if c.status == "missed":
            items.append(
                (
                    100 + c.worse_by,
                    f"{c.name} missed its target: {format_value(c.value, c.unit)} against "
                    f"{format_value(c.target, c.unit)}"
                    + (f"; {c.change:+.0%} week over week" if c.change is not None else ""),
                )
            )
        elif c.status == "met" and c.change is not None and c.better == "lower" and c.change > 0.2:
            items.append(
                (
                    50 + c.change,
                    f"{c.name} rose {c.change:.0%} week over week to "
                    f"{format_value(c.value, c.unit)} (target {format_value(c.target, c.unit)})",
                )
            )
    for section, why in current.missing.items():
        items.append((40, f"{section}: Prometheus did not answer ({why})"))
    no_data = [c.name for c in checks if c.status == "no data"]
    if no_data:
        items.append((30, f"no data for {len(no_data)} figures: {', '.join(no_data[:4])}"))
    quiet = [e.key for e in current.endpoints if e.status == "no traffic"]
    if quiet:
        items.append((20, f"no traffic on {', '.join(quiet[:4])}"))
    for r in records:
        if r.key == "sla" and r.rows:
            items.append((35, f"{len(r.rows)} SLA alert events: " + r.lines[0]))
        if r.key == "partitions" and any(line.startswith("problem:") for line in r.lines):
            first = next(line for line in r.lines if line.startswith("problem:"))
            items.append((33, f"partitions: {first.removeprefix('problem: ')}"))
        if r.key == "database":
            suggested = [row for row in r.rows if row.get("kind") == "suggested"]
            if suggested:
                items.append((10, f"{len(suggested)} index suggestions are waiting for review"))
    for r in records:
        if r.key == "load":
            items += load_things(r.rows)
        if r.key == "caches":
            items += cache_things(r.lines)
    items.sort(key=lambda x: -x[0])
    found = [text for _, text in items[:limit]]
    if not found:
        found = ["every target was met and nothing regressed by more than 20% week over week"]
    return found
