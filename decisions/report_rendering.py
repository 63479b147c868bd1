"""Rendering of the weekly report: PNG charts (matplotlib, Agg, no pyplot), the HTML page with
inline CSS (for email clients and the archive), the plain-text alternative, the markdown artifact
and the data tables (CSV and Parquet); `render_week` makes the archive's, `render_email` the
email's once the archive is done. Also the run's result (`ReportResult`). No network I/O.

Gaps stay gaps: a series is re-indexed on the week's full time grid, so an hour without data is
a break in the line, never a zero, and the page says how much is missing.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
from collections import Counter
from datetime import datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import pandas as pd
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from decisions.report_fleet import INTEGERS, FleetView, data_rows, describe, display_rows
from decisions.reporting import (
    Check,
    EndpointWeek,
    RecordedEvent,
    RecordSection,
    ReportConfig,
    ReportWeek,
    SeriesResult,
    WeekNumbers,
    error_budget_remaining,
    format_change,
    format_value,
)

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
COLOURS = {"p50": "#4c78a8", "p95": "#f58518", "p99": "#e45756", "target": "#54a24b"}
STATUS_COLOURS = {
    "met": "#1a7f37",
    "missed": "#cf222e",
    "no data": "#9a6700",
    "no traffic": "#57606a",
    "info": "#57606a",
}


def column_labels(column: str) -> dict[str, str]:
    """`{method="GET",route="/x"}` (tasks.prometheus.client.series_name) -> its labels."""
    return {k: v.replace('\\"', '"') for k, v in _LABEL.findall(column)}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def endpoint_cids(keys: list[str]) -> dict[str, str]:
    """Each endpoint's chart content id, which names its file too: `endpoint-<slug>`; endpoints
    whose keys slug alike (`/agent_runs` and `/agent-runs`, a trailing slash, case) each add a
    hash of their key, so one chart never replaces another's."""
    count = Counter(slug(k) for k in keys)
    return {
        k: f"endpoint-{slug(k)}"
        if count[slug(k)] == 1
        else f"endpoint-{slug(k)}-{hashlib.sha256(k.encode()).hexdigest()[:8]}"
        for k in keys
    }


class Chart(BaseModel):
    """A PNG chart, its content id (email) and file name (archive)."""

    cid: str
    title: str
    png: bytes
    alt: str

    @property
    def filename(self) -> str:
        return f"charts/{self.cid}.png"


class EndpointSeries(BaseModel):
    """One endpoint's series over the week on the full time grid (NaN = no data)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    key: str
    frame: pd.DataFrame  # columns p50_ms, p95_ms, p99_ms, rps, error_rate
    points_expected: int
    points_with_data: int

    @property
    def missing_share(self) -> float:
        if self.points_expected == 0:
            return 0.0
        return 1 - self.points_with_data / self.points_expected


def time_grid(week: ReportWeek, step_s: int) -> pd.DatetimeIndex:
    """The chart's time points: one per step, the first a step after the week starts."""
    return pd.date_range(
        start=week.start + pd.Timedelta(seconds=step_s),
        end=week.end,
        freq=f"{step_s}s",
        tz="UTC",
        name="time",
    )


def _endpoint_columns(frame: pd.DataFrame | None, labels: list[str]) -> dict[str, pd.Series]:
    out: dict[str, pd.Series] = {}
    if frame is None:
        return out
    for column in frame.columns:
        lab = column_labels(str(column))
        out[f"{lab.get(labels[0], '')} {lab.get(labels[1], '')}"] = frame[column]
    return out


def endpoint_series(
    frames: dict[str, pd.DataFrame | None],
    grid: pd.DatetimeIndex,
    labels: list[str],
    keys: list[str],
) -> dict[str, EndpointSeries]:
    """Per endpoint: latency quantiles (ms), throughput and error rate on `grid`."""
    parts = {
        "p50_ms": _endpoint_columns(frames.get("latency_p50"), labels),
        "p95_ms": _endpoint_columns(frames.get("latency_p95"), labels),
        "p99_ms": _endpoint_columns(frames.get("latency_p99"), labels),
        "rps": _endpoint_columns(frames.get("throughput"), labels),
        "error_rate": _endpoint_columns(frames.get("error_rate"), labels),
    }
    out: dict[str, EndpointSeries] = {}
    for key in keys:
        columns = {}
        for name, by_key in parts.items():
            series = by_key.get(key)
            values = (
                series.reindex(grid) if series is not None else pd.Series(index=grid, dtype=float)
            )
            if name.endswith("_ms"):
                values = values * 1000.0
            columns[name] = values.astype("float64")
        frame = pd.DataFrame(columns, index=grid)
        # Infinite quantiles (too few requests in a step) are not data either.
        frame = frame.where(frame.abs() != float("inf"))
        present = int(frame["rps"].notna().sum())
        out[key] = EndpointSeries(
            key=key, frame=frame, points_expected=len(grid), points_with_data=present
        )
    return out


def _axes_time(ax: Any, grid: pd.Index) -> None:
    ax.set_xlim(grid[0], grid[-1])
    ax.xaxis.set_major_locator(mdates.DayLocator())
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%a %d %b"))
    ax.grid(True, color="#d0d7de", linewidth=0.6)
    for label in ax.get_xticklabels():
        label.set_fontsize(8)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    return buffer.getvalue()


ABOVE: dict[str, Any] = {
    "loc": "lower left",
    "bbox_to_anchor": (0.0, 1.0),
    "fontsize": 8,
    "frameon": False,
    "borderaxespad": 0.2,
}
"""Legends sit above their axes, so they never hide data."""


def _line(ax: Any, values: pd.Series, **style: Any) -> None:
    """A line through `values` (NaN: a gap); a point with no neighbour on either side (sparse
    data, an hour between gaps), which a line alone leaves invisible, is drawn as a dot."""
    ax.plot(values.index, values, **style)
    present = values.notna()
    alone = present & ~present.shift(1, fill_value=False) & ~present.shift(-1, fill_value=False)
    if alone.any():
        dots = values[alone]
        colour = style.get("color")
        ax.plot(dots.index, dots, "o", markersize=3, color=colour, label="_nolegend_")


def _labelled(lines: list[Any]) -> list[Any]:
    """The lines a legend lists (not the dots of `_line`)."""
    return [line for line in lines if not str(line.get_label()).startswith("_")]


def _headroom(highest: float, target: float | None) -> float:
    """An axis top a little above the data and the target line."""
    values = [v for v in (highest, target) if v is not None and v == v and v > 0]
    return max(values) * 1.15 if values else 1.0


def _target_line(ax: Any, target: float | None, label: str) -> None:
    """The dashed target line at `target` (none without one); `label` formats the target."""
    if target is not None:
        ax.axhline(
            target,
            color=COLOURS["target"],
            linestyle="--",
            linewidth=1.2,
            label=label.format(target),
        )


def endpoint_chart(
    series: EndpointSeries, target_ms: float | None, target_rps: float | None, cid: str = ""
) -> Chart:
    """Latency p50/p95/p99 (ms) with the p95 target; throughput (rps) and error rate (%)."""
    frame = series.frame
    # Fixed margins: matplotlib's constrained layout draws every figure twice (half the time).
    fig = Figure(figsize=(7.2, 4.6))
    fig.subplots_adjust(left=0.09, right=0.91, top=0.88, bottom=0.08, hspace=0.32)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    for q in ("p50", "p95", "p99"):
        _line(top, frame[f"{q}_ms"], label=q, color=COLOURS[q], linewidth=1.2)
    _target_line(top, target_ms, "p95 target {:,.0f} ms")
    top.set_ylabel("latency (ms)")
    top.set_ylim(0, _headroom(frame[["p50_ms", "p95_ms", "p99_ms"]].max().max(), target_ms))
    top.legend(**ABOVE, ncols=4)
    fig.suptitle(f"{series.key}: per hour (UTC)", fontsize=10, x=0.01, ha="left")
    _line(bottom, frame["rps"], color="#4c78a8", linewidth=1.2, label="throughput")
    _target_line(bottom, target_rps, "designed {:,.0f} rps")
    bottom.set_ylabel("requests/s")
    bottom.set_ylim(0, _headroom(frame["rps"].max(), target_rps))
    errors = bottom.twinx()
    _line(errors, frame["error_rate"] * 100, color="#e45756", linewidth=1.0, label="error rate")
    errors.set_ylabel("errors (%)")
    errors.set_ylim(0, _headroom(frame["error_rate"].max() * 100, None))
    lines = _labelled(bottom.get_lines() + errors.get_lines())
    bottom.legend(lines, [str(line.get_label()) for line in lines], **ABOVE, ncols=3)
    _axes_time(top, frame.index)
    _axes_time(bottom, frame.index)
    return Chart(
        cid=cid or f"endpoint-{slug(series.key)}",
        title=series.key,
        png=_png(fig),
        alt=f"{series.key}: latency p50/p95/p99 in ms, throughput in requests/s, error rate in %",
    )


def endpoint_charts(
    jobs: list[tuple[EndpointSeries, float | None, float | None]], cids: dict[str, str]
) -> list[Chart]:
    """Every endpoint's chart, in order, under its content id in `cids` (`endpoint_cids`; about
    0.25 s each here; a process pool was slower: starting workers and importing matplotlib
    costs more than it saves)."""
    return [endpoint_chart(*job, cid=cids[job[0].key]) for job in jobs]


def resources_chart(cpu: pd.Series, memory: pd.Series, config: ReportConfig) -> Chart:
    """CPU and memory use (% of the limit) with the normal and peak limits."""
    limits = config.resources
    fig = Figure(figsize=(7.2, 3.6))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.80, bottom=0.09, wspace=0.06)
    ax_cpu, ax_mem = fig.subplots(1, 2, sharey=True)
    for ax, values, normal, peak, what in (
        (ax_cpu, cpu, limits.cpu_normal_max, limits.cpu_peak_max, "CPU"),
        (ax_mem, memory, limits.memory_normal_max, limits.memory_peak_max, "memory"),
    ):
        _line(ax, values, color="#4c78a8", linewidth=1.2, label=f"{what} used")
        ax.axhline(
            normal, color="#9a6700", linestyle="--", linewidth=1, label=f"normal {normal:.0f}%"
        )
        ax.axhline(peak, color="#cf222e", linestyle="--", linewidth=1, label=f"peak {peak:.0f}%")
        ax.set_ylim(0, 100)
        ax.set_title(f"{what} (% of limit, hourly, UTC)", fontsize=10, loc="left", pad=24)
        ax.legend(**{**ABOVE, "fontsize": 7}, ncols=3)
        _axes_time(ax, values.index)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%a"))
    ax_cpu.set_ylabel("percent")
    return Chart(
        cid="resources",
        title="Resources",
        png=_png(fig),
        alt="CPU and memory use in percent of the limit over the week, with the limits",
    )


def scaling_chart(events: list[RecordedEvent], week: ReportWeek) -> Chart | None:
    """Capacity (current, desired) against load from perfops.scaling.decided events."""
    decided = sorted(
        (e for e in events if e.event == "perfops.scaling.decided"), key=lambda e: e.occurred
    )
    if not decided:
        return None
    groups = sorted({str(e.payload.get("group")) for e in decided})
    fig = Figure(figsize=(7.2, 3.2))
    fig.subplots_adjust(left=0.08, right=0.9, top=0.88, bottom=0.1)
    ax: Any = fig.subplots()
    load_ax: Any = ax.twinx()
    for group in groups:
        mine = [e for e in decided if str(e.payload.get("group")) == group]
        times = [e.occurred for e in mine]
        current = [e.payload.get("current") for e in mine]
        (step,) = ax.step(times, current, where="post", label=f"{group} capacity")
        if len(mine) == 1:  # a step through one point draws nothing: show it as a dot
            ax.plot(times, current, "o", markersize=4, color=step.get_color(), label="_nolegend_")
        ax.plot(
            times,
            [e.payload.get("desired") for e in mine],
            "o",
            markersize=3,
            label=f"{group} desired",
        )
        loads = [e.payload.get("load") for e in mine]
        if any(isinstance(x, int | float) for x in loads):
            load_ax.plot(
                times,
                [x if isinstance(x, int | float) else float("nan") for x in loads],
                color="#9a6700",
                linewidth=1,
                label=f"{group} load",
            )
    ax.set_ylabel("instances")
    load_ax.set_ylabel("load (as recorded)")
    ax.set_xlim(week.start, week.end)
    ax.set_title("Capacity vs load (perfops.scaling.decided)", fontsize=10, loc="left")
    lines = _labelled(ax.get_lines() + load_ax.get_lines())
    ax.legend(lines, [str(line.get_label()) for line in lines], fontsize=7, loc="upper left")
    ax.xaxis.set_major_locator(mdates.DayLocator())
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%a %d %b"))
    ax.grid(True, color="#d0d7de", linewidth=0.6)
    return Chart(
        cid="scaling",
        title="Scaling",
        png=_png(fig),
        alt="Instances (current and desired) and load as recorded by perfops scaling decisions",
    )


# ------------------------------------------------------------------------------------ report


class WeeklyReport(BaseModel):
    """Everything the page, the email, the artifact and the archive show."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    week: ReportWeek
    previous_week: str
    generated_at: datetime
    source: str
    checks: list[Check]
    current: WeekNumbers
    previous: WeekNumbers | None
    records: list[RecordSection]
    things: list[str]
    coverage: dict[str, float] = Field(default_factory=dict)  # endpoint -> share missing
    chart_notes: dict[str, str] = Field(default_factory=dict)  # section -> why no chart
    objectives: dict[str, float] = Field(default_factory=dict)
    fleet: FleetView | None = None  # the Fleet section, when run over a fleet

    @property
    def met(self) -> int:
        return sum(c.status == "met" for c in self.checks)

    @property
    def missed(self) -> int:
        return sum(c.status == "missed" for c in self.checks)

    @property
    def headline(self) -> str:
        unknown = sum(c.status in ("no data", "no traffic") for c in self.checks)
        return f"{self.week.label}: {self.met} targets met, {self.missed} missed" + (
            f", {unknown} without data" if unknown else ""
        )


class RenderedReport(BaseModel):
    """The rendered files, by archive key, plus what the email attaches (its page and text are
    rendered once the archive is done: `render_email`)."""

    report: WeeklyReport
    files: dict[str, bytes]
    charts: list[Chart]
    csv: dict[str, bytes]


class RenderedEmail(BaseModel):
    """The email's HTML page (charts as `cid:` images) and its plain-text alternative."""

    html: str
    text: str


class ReportResult(BaseModel):
    """What the run produced and where it went."""

    week: str
    headline: str
    things: list[str]
    met: int
    missed: int
    missing_sections: dict[str, str]
    archive: str
    html_location: str
    folder: str | None = None
    files: int
    archive_action: str = Field(
        default="write",
        description="write, keep (a report already archived for the week was kept), replace "
        "or failed.",
    )
    archive_note: str = Field(default="", description="What was done with the archive.")
    recipients: list[str]
    accepted: list[str] = Field(default_factory=list)
    refused: dict[str, str] = Field(default_factory=dict)
    delivery: str
    seconds: float
    fleet: list[dict[str, str]] = Field(
        default_factory=list, description="The Fleet section's rows, worst first (over a fleet)."
    )
    fleet_unreachable: list[str] = Field(default_factory=list)


def run_failure(
    report: WeeklyReport,
    result: ReportResult,
    source: str,
    not_emailed: str | None,
    not_archived: str | None = None,
    not_copied: str | None = None,
    kept: str | None = None,
    not_cleaned: str | None = None,
) -> str | None:
    """The run's Failed message, or None when everything succeeded. It starts with where the
    report is archived (or why it is not: `not_archived` the archive refused it, `kept` a
    report already archived for the week was kept), then says each thing that failed: no
    target scored (`source` answered nothing), sections missing, no or refused recipients,
    fleet targets unreachable, the browsable copy not written (`not_copied`), the earlier
    report's files not all removed after a replacement (`not_cleaned`); `not_emailed` is why
    the email could not be sent."""
    failed = [
        f"0 of {len(report.checks)} targets scored: no figures for {report.week.label} from "
        f"{source}"
        if report.met + report.missed == 0
        else "",
        f"sections missing: {', '.join(sorted(result.missing_sections))}"
        if result.missing_sections
        else "",
        result.delivery if not result.recipients or result.refused else "",
        (report.fleet.failure or "") if report.fleet is not None else "",
        not_copied or "",
        not_cleaned or "",
    ]
    if not any(failed) and not_emailed is None and not_archived is None:
        return None
    if not_archived is not None:
        archived = f"weekly report {report.week.label} NOT archived at {result.archive}: "
        archived += not_archived
    elif kept is not None:  # kept: the link is the earlier report's, said in `kept`
        archived = f"weekly report {report.week.label} {kept}"
        if not_emailed is not None:
            archived = f"weekly report {report.week.label} not emailed: {not_emailed}; {kept}"
        return "; ".join([archived, *filter(None, failed)])
    else:
        archived = f"weekly report {report.week.label} archived at {result.archive}"
    archived += f" but not emailed: {not_emailed}" if not_emailed is not None else ""
    return "; ".join([archived, *filter(None, failed)])


ROWS_SHOWN = 30  # rows of a record section's table on the page; the data files hold all
EMAIL_HTML_MAX = 100_000
"""Bytes of the email's HTML part: Gmail clips a message whose HTML is over 102 KB ('[Message
clipped]'), hiding the sections after the cut. Past it the email shows fewer table rows
(`EMAIL_ROWS`); the archived page and the attached data keep them all."""
EMAIL_ROWS: tuple[tuple[int, int | None], ...] = ((ROWS_SHOWN, None), (10, 10), (3, 3))
"""(record rows, fleet rows; None: all) the email tries in turn until its HTML fits."""
_CELL = "padding:4px 8px;border-bottom:1px solid #d0d7de;text-align:left;font-size:13px;"
_HEAD = _CELL + "background:#f6f8fa;font-weight:600;"
_FONT = "font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#1f2328;"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list[str]], raw: bool = False) -> str:
    head = "".join(f'<th style="{_HEAD}">{_e(h)}</th>' for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL}">{c if raw else _e(c)}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return (
        '<table role="presentation" cellspacing="0" cellpadding="0" '
        f'style="border-collapse:collapse;width:100%;max-width:760px;margin:8px 0 16px 0;">'
        f"<tr>{head}</tr>{body}</table>"
    )


def _status(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#57606a")
    return f'<span style="color:{colour};font-weight:600;">{_e(status)}</span>'


def _h2(text: str) -> str:
    style = "font-size:18px;margin:24px 0 8px 0;border-bottom:2px solid #d0d7de;"
    return f'<h2 style="{style}">{_e(text)}</h2>'


def _p(text: str, style: str = "") -> str:
    return f'<p style="font-size:14px;margin:4px 0;{style}">{_e(text)}</p>'


def _section(report: WeeklyReport, title: str, section: str) -> list[str]:
    """A section's heading, then what is missing from it when Prometheus did not answer."""
    out = [_h2(title)]
    if section in report.current.missing:
        why = report.current.missing[section]
        out.append(_p(f"Missing: Prometheus did not answer ({why}).", "color:#9a6700;"))
    return out


def _img(chart: Chart, src: str) -> str:
    return (
        f'<img src="{_e(src)}" alt="{_e(chart.alt)}" width="691" '
        'style="display:block;width:100%;max-width:691px;height:auto;border:0;margin:8px 0;">'
    )


def _endpoint_rows(report: WeeklyReport, config: ReportConfig) -> list[list[str]]:
    rows = []
    for e in report.current.endpoints:
        target = config.target_for(e.method, e.route)
        before = report.previous.endpoint(e.key) if report.previous else None
        if e.status != "ok":
            rows.append([_e(e.key), _status(e.status), "", "", "", "", "", "", ""])
            continue
        p95_status = ""
        if target is not None and e.p95_ms is not None:
            p95_status = _status("met" if e.p95_ms <= target.p95_ms else "missed")
        rows.append(
            [
                _e(e.key),
                _e(format_value(e.p50_ms, "ms")),
                _e(format_value(e.p95_ms, "ms")) + (f" {p95_status}" if p95_status else ""),
                _e(format_value(e.p99_ms, "ms")),
                _e(format_value(target.p95_ms, "ms") if target else "-"),
                _e(format_value(e.rps, "rps")),
                _e(format_value(e.peak_rps, "rps"))
                + (_e(f" / {target.rps:,.0f} designed") if target else ""),
                _e(format_value(e.error_rate, "ratio")),
                _e(format_value(before.p95_ms, "ms") if before else "-"),
            ]
        )
    return rows


def render_html(
    report: WeeklyReport,
    config: ReportConfig,
    charts: list[Chart],
    src: dict[str, str],
    link: str | None = None,
    not_archived: str | None = None,
    rows_shown: int = ROWS_SHOWN,
    fleet_rows: int | None = None,
    kept: str | None = None,
    replacing: str = "",
) -> str:
    """The report page. `src` maps a chart's cid to its image URL (`cid:...` in the email, a
    relative file in the archive). The email's page says where the archived copy is (`link`),
    or that the report is not archived and why (`not_archived`; `kept`: a report already
    archived for the week was kept, this one not written over it; `replacing`: what this one
    replaced there, said after the link). A record section's table shows
    its first `rows_shown` rows, the Fleet table its first `fleet_rows` (None: all); each says
    when it shows fewer than it has."""
    by_cid = {c.cid: c for c in charts}
    cids = endpoint_cids([e.key for e in report.current.endpoints])
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Weekly performance report {_e(report.week.label)}</title></head>",
        f'<body style="margin:0;padding:16px;background:#ffffff;{_FONT}">',
        f'<div style="max-width:760px;margin:0 auto;{_FONT}">',
        '<h1 style="font-size:22px;margin:0 0 4px 0;">'
        f"Weekly performance report {_e(report.week.label)}</h1>",
        _p(
            f"{report.week.start:%a %d %b %Y} - {report.week.end:%a %d %b %Y} 00:00 UTC, compared "
            f"with {report.previous_week}. Metrics: {report.source}. Generated "
            f"{report.generated_at:%Y-%m-%d %H:%M} UTC.",
            "color:#57606a;",
        ),
    ]
    if not_archived is not None:
        out.append(
            f'<p style="font-size:14px;margin:4px 0;color:{STATUS_COLOURS["missed"]};">'
            f"{_e(archive_line(link, not_archived))}</p>"
        )
    elif kept is not None:
        out.append(
            f'<p style="font-size:14px;margin:4px 0;color:{STATUS_COLOURS["no data"]};">'
            f"{_e(archive_line(link, None, kept))}</p>"
        )
    elif link:
        out.append(
            '<p style="font-size:14px;margin:4px 0;">Archived copy: '
            f'<a href="{_e(link)}">{_e(link)}</a>{_e(replacing)}</p>'
        )
    # Summary: one screen.
    out.append(_h2("Summary"))
    out.append(
        f'<p style="font-size:16px;margin:4px 0;"><b>{report.met}</b> targets met, '
        f'<b style="color:{STATUS_COLOURS["missed"]};">{report.missed}</b> missed.</p>'
    )
    out.append(_p("Three things to look at:", "font-weight:600;margin-top:8px;"))
    out.append(
        '<ol style="font-size:14px;margin:4px 0 8px 20px;padding:0;">'
        + "".join(f"<li>{_e(t)}</li>" for t in report.things)
        + "</ol>"
    )
    out.append(
        _table(
            ["target", "this week", "objective", "status", "last week", "week over week"],
            [
                [
                    _e(c.name),
                    _e(format_value(c.value, c.unit))
                    + (f"<br><small>{_e(c.detail)}</small>" if c.detail else ""),
                    _e(("<= " if c.better == "lower" else ">= ") + format_value(c.target, c.unit))
                    if c.target is not None
                    else "-",
                    _status(c.status),
                    _e(format_value(c.previous, c.unit) if c.previous is not None else "-"),
                    _e(format_change(c)),
                ]
                for c in report.checks
            ],
            raw=True,
        )
    )
    out += _fleet_html(report.fleet, fleet_rows)
    # Endpoints.
    out += _section(report, "Endpoints: latency, throughput, errors", "endpoints")
    out.append(
        _table(
            [
                "endpoint",
                "p50",
                "p95",
                "p99",
                "p95 target",
                "mean load",
                "peak load",
                "errors",
                "p95 last week",
            ],
            _endpoint_rows(report, config),
            raw=True,
        )
    )
    for e in report.current.endpoints:
        chart = by_cid.get(cids[e.key])
        if e.status == "no traffic":
            out.append(
                _p(
                    f"{e.key}: no traffic this week (no requests counted), nothing to plot.",
                    "color:#57606a;",
                )
            )
        elif e.status == "no data":
            out.append(
                _p(
                    f"{e.key}: no data in Prometheus for this week, nothing plotted.",
                    "color:#9a6700;",
                )
            )
        elif chart is not None:
            share = report.coverage.get(e.key, 0.0)
            if share > 0:
                out.append(
                    _p(
                        f"{e.key}: data missing for {share:.0%} of the week's hours; gaps show "
                        "as breaks in the lines, not as zeros.",
                        "color:#9a6700;",
                    )
                )
            out.append(_img(chart, src[chart.cid]))
    # Availability.
    out += _section(report, "Availability and error budget", "availability")
    rows = []
    for name, sli in report.current.slis.items():
        objective = report.objectives.get(name)
        budget = error_budget_remaining(sli, objective) if objective is not None else None
        rows.append(
            [
                name,
                format_value(sli, "ratio"),
                format_value(objective, "ratio"),
                "no data" if budget is None else f"{budget:.0%}",
            ]
        )
    out.append(
        _table(["SLO", "this week", "objective", "error budget left"], rows)
        if rows
        else _p("No SLO configured.")
    )
    # Resources.
    out += _section(report, "Resources", "resources")
    res = [c for c in report.checks if c.section == "resources"]
    out.append(
        _table(
            ["figure", "this week", "limit", "status"],
            [
                [
                    _e(c.name),
                    _e(format_value(c.value, c.unit)),
                    _e(format_value(c.target, c.unit)),
                    _status(c.status),
                ]
                for c in res
            ],
            raw=True,
        )
    )
    if "resources" in by_cid:
        out.append(_img(by_cid["resources"], src["resources"]))
    elif "resources" in report.chart_notes:
        out.append(_p(report.chart_notes["resources"], "color:#9a6700;"))
    # Durations.
    if report.current.durations:
        out.append(_h2("Agent execution and workflow completion"))
        out.append(
            _table(
                ["what", "p50", "p95", "p99"],
                [
                    [
                        d.title,
                        format_value(d.p50_ms, "ms"),
                        format_value(d.p95_ms, "ms"),
                        format_value(d.p99_ms, "ms"),
                    ]
                    for d in report.current.durations
                ],
            )
        )
    # perfops' record.
    for section in report.records:
        out.append(_h2(section.title))
        for line in section.lines:
            out.append(_p(line, "color:#57606a;" if section.empty else ""))
        if section.key == "scaling" and "scaling" in by_cid:
            out.append(_img(by_cid["scaling"], src["scaling"]))
        if section.rows:
            headers = list(section.rows[0].keys())
            shown = section.rows[:rows_shown]
            out.append(_table(headers, [[str(r.get(h, "")) for h in headers] for r in shown]))
            if len(section.rows) > rows_shown:
                out.append(
                    _p(
                        f"First {rows_shown} of {len(section.rows):,} rows; all of them in the "
                        f"data files ({records_table(section.key)}.csv and .parquet).",
                        "color:#57606a;font-size:12px;",
                    )
                )
    out.append(
        _p(
            "perfops weekly report: numbers from Prometheus (PromQL in deployments/report.yaml) "
            "and perfops' own events; data attached as CSV.",
            "color:#57606a;font-size:12px;margin-top:24px;",
        )
    )
    out.append("</div></body></html>")
    return "\n".join(out)


def _fleet_html(view: FleetView | None, shown: int | None = None) -> list[str]:
    """The Fleet section: one row per target, worst first (the first `shown`; None: all)."""
    if view is None:
        return []
    every = display_rows(view)
    rows = every if shown is None else every[:shown]
    headers = list(rows[0]) if rows else ["target", "result", "reason"]
    colours = {"unreachable": "missed", "attention": "no data", "ok": "met"}
    cut = (
        [
            _p(
                f"First {len(rows)} of {len(every):,} targets, worst first; all of them in the "
                "data files (fleet.csv and .parquet).",
                "color:#57606a;font-size:12px;",
            )
        ]
        if len(rows) < len(every)
        else []
    )
    return [
        _h2("Fleet"),
        _p(describe(view)),
        _table(
            headers,
            [
                [
                    _status_as(r[h], colours[r["result"]]) if h == "result" else _e(r[h])
                    for h in headers
                ]
                for r in rows
            ],
            raw=True,
        ),
        *cut,
    ]


def _status_as(text: str, status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#57606a")
    return f'<span style="color:{colour};font-weight:600;">{_e(text)}</span>'


def _fleet_lines(view: FleetView | None) -> list[str]:
    if view is None:
        return []
    lines = ["", f"Fleet {view.selection}, worst first ({view.summary}):"]
    for n, r in enumerate(display_rows(view), 1):
        lines.append(f"  {n}. [{r['result']}] {r['target']}: {r['reason']}")
    return lines


def archive_line(
    link: str | None, not_archived: str | None, kept: str | None = None, replacing: str = ""
) -> str:
    """Where the email says the archived copy is (and what it replaced), or that there is none
    and why (`kept`: the report already archived for the week was kept)."""
    if not_archived is not None:
        return f"Not archived: {not_archived}"
    if kept is not None:
        return kept[:1].upper() + kept[1:]
    return f"Archived copy: {link}{replacing}" if link else ""


def render_text(
    report: WeeklyReport,
    link: str | None = None,
    not_archived: str | None = None,
    kept: str | None = None,
    replacing: str = "",
) -> str:
    """The plain-text alternative."""
    lines = [f"Weekly performance report {report.week.label}", "", report.headline]
    if archive_line(link, not_archived, kept, replacing):
        lines.append(archive_line(link, not_archived, kept, replacing))
    lines += ["", "Three things to look at:"]
    lines += [f"  {n}. {t}" for n, t in enumerate(report.things, 1)]
    lines += _fleet_lines(report.fleet)
    lines += ["", "Targets:"]
    for c in report.checks:
        target = f" (target {format_value(c.target, c.unit)})" if c.target is not None else ""
        lines.append(
            f"  [{c.status}] {c.name}: {format_value(c.value, c.unit)}{target}; "
            f"last week {format_value(c.previous, c.unit) if c.previous is not None else '-'}"
        )
    lines += ["", "Endpoints:"]
    for e in report.current.endpoints:
        if e.status != "ok":
            lines.append(f"  {e.key}: {e.status}")
        else:
            lines.append(
                f"  {e.key}: p50 {format_value(e.p50_ms, 'ms')}, "
                f"p95 {format_value(e.p95_ms, 'ms')}, "
                f"p99 {format_value(e.p99_ms, 'ms')}, {format_value(e.rps, 'rps')} mean, "
                f"errors {format_value(e.error_rate, 'ratio')}"
            )
    for section, why in report.current.missing.items():
        lines.append(f"  missing {section}: {why}")
    for s in report.records:
        lines += ["", f"{s.title}:"] + [f"  {line}" for line in s.lines]
    lines += ["", "Charts are in the HTML version; the data is attached as CSV."]
    return "\n".join(lines) + "\n"


def render_markdown(report: WeeklyReport, link: str | None, delivery: str) -> str:
    """The Prefect markdown artifact: the summary and where the full report is."""
    lines = [f"# Weekly performance report {report.week.label}", "", f"**{report.headline}**", ""]
    if link:
        lines += [f"Full report: [{link}]({link})", ""]
    lines += [f"Delivery: {delivery}", "", "## Three things to look at", ""]
    lines += [f"{n}. {t}" for n, t in enumerate(report.things, 1)]
    lines += [
        "",
        "| target | this week | objective | status | week over week |",
        "|---|---|---|---|---|",
    ]
    for c in report.checks:
        target = format_value(c.target, c.unit) if c.target is not None else "-"
        lines.append(
            f"| {c.name} | {format_value(c.value, c.unit)} | {target} | {c.status} "
            f"| {format_change(c)} |"
        )
    if report.fleet is not None:
        rows = display_rows(report.fleet)
        lines += ["", "## Fleet", "", describe(report.fleet), ""]
        if rows:
            lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(_md(v) for v in r.values()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _md(value: str) -> str:
    """A markdown table cell: no pipe or line break ends it early."""
    return " ".join(value.replace("|", "\\|").split())


# ------------------------------------------------------------------------------- data tables


def data_tables(
    report: WeeklyReport, series: dict[str, EndpointSeries], resources: pd.DataFrame | None
) -> dict[str, pd.DataFrame]:
    """The report's data: summary checks, endpoint figures (both weeks), hourly series."""
    tables: dict[str, pd.DataFrame] = {}
    tables["targets"] = pd.DataFrame(
        [
            {
                "section": c.section,
                "target": c.name,
                "value": c.value,
                "objective": c.target,
                "unit": c.unit,
                "status": c.status,
                "previous_week": c.previous,
            }
            for c in report.checks
        ]
    )
    rows: list[dict[str, Any]] = []
    for label, numbers in (
        (report.week.label, report.current),
        (report.previous_week, report.previous),
    ):
        if numbers is None:
            continue
        for e in numbers.endpoints:
            rows.append({"week": label, **_endpoint_dict(e)})
    tables["endpoints"] = pd.DataFrame(rows)
    if report.fleet is not None:
        fleet = pd.DataFrame(data_rows(report.fleet))
        tables["fleet"] = fleet.astype({c: "Int64" for c in INTEGERS if c in fleet})
    hourly = [
        s.frame.assign(endpoint=key).reset_index()
        for key, s in series.items()
        if s.points_with_data
    ]
    if hourly:
        tables["endpoint_hourly"] = pd.concat(hourly, ignore_index=True)
    if resources is not None and not resources.empty:
        tables["resources_hourly"] = resources.reset_index()
    for section in report.records:  # every row; the page shows the first ROWS_SHOWN
        if section.rows:
            tables[records_table(section.key)] = _one_type_a_column(pd.DataFrame(section.rows))
    return tables


def records_table(key: str) -> str:
    """The data file of a record section's rows (`records_scaling`, ...)."""
    return f"records_{key}"


def _one_type_a_column(frame: pd.DataFrame) -> pd.DataFrame:
    """Event payloads may mix types in a column (2 and "2"): such a column becomes text, so
    Parquet can store it."""
    for column in frame.columns:
        kinds = {
            float if type(v) is int else type(v) for v in frame[column] if v is not None
        }  # ints and floats are one kind: numbers
        if len(kinds) > 1 or kinds - {str, float, bool}:
            frame[column] = [None if v is None else str(v) for v in frame[column]]
    return frame


def _endpoint_dict(e: EndpointWeek) -> dict[str, Any]:
    return {
        "method": e.method,
        "route": e.route,
        "status": e.status,
        "p50_ms": e.p50_ms,
        "p95_ms": e.p95_ms,
        "p99_ms": e.p99_ms,
        "mean_rps": e.rps,
        "peak_rps": e.peak_rps,
        "error_rate": e.error_rate,
    }


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%SZ").encode()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- the whole report


def _resources_frame(
    frames: dict[str, pd.DataFrame | None], grid: pd.DatetimeIndex
) -> pd.DataFrame | None:
    """CPU and memory (% of the limit) on `grid`; None when Prometheus returned neither."""
    cpu, memory = frames.get("cpu_percent"), frames.get("memory_percent")
    if cpu is None or memory is None or (cpu.empty and memory.empty):
        return None
    return pd.DataFrame(
        {
            "cpu_percent": cpu.iloc[:, 0].reindex(grid) if not cpu.empty else float("nan"),
            "memory_percent": memory.iloc[:, 0].reindex(grid) if not memory.empty else float("nan"),
        },
        index=grid,
    )


def render_week(
    report: WeeklyReport,
    config: ReportConfig,
    series: dict[str, SeriesResult],
    events: list[RecordedEvent],
) -> RenderedReport:
    """Charts, the archive's HTML page, CSV and Parquet (the email: `render_email`, once the
    archive is done). Records each
    endpoint's missing share (`report.coverage`) and why a chart is absent (`report.chart_notes`)
    on `report`, which the result carries."""
    grid = time_grid(report.week, config.chart_step_s)
    frames = {name: r.frame for name, r in series.items()}
    keys = [e.key for e in report.current.endpoints]
    per_endpoint = endpoint_series(frames, grid, config.endpoint_labels, keys)
    jobs: list[tuple[EndpointSeries, float | None, float | None]] = []
    for e in report.current.endpoints:
        s = per_endpoint[e.key]
        report.coverage[e.key] = round(s.missing_share, 4)
        if e.status != "ok" or s.points_with_data == 0:
            continue
        target = config.target_for(e.method, e.route)
        jobs.append((s, target.p95_ms if target else None, target.rps if target else None))
    charts: list[Chart] = endpoint_charts(jobs, endpoint_cids(keys))
    resources = _resources_frame(frames, grid)
    if resources is not None:
        charts.append(
            resources_chart(resources["cpu_percent"], resources["memory_percent"], config)
        )
    else:
        why = series.get("cpu_percent", SeriesResult()).error or "Prometheus returned no series"
        report.chart_notes["resources"] = f"No resource chart: {why}."
    scaling = scaling_chart(events, report.week)
    if scaling is not None:
        charts.append(scaling)
    files: dict[str, bytes] = {}
    csv: dict[str, bytes] = {}
    for name, frame in data_tables(report, per_endpoint, resources).items():
        csv[f"{name}.csv"] = csv_bytes(frame)
        files[f"data/{name}.csv"] = csv[f"{name}.csv"]
        files[f"data/{name}.parquet"] = parquet_bytes(frame)
    for chart in charts:
        files[chart.filename] = chart.png
    page = render_html(report, config, charts, {c.cid: c.filename for c in charts})
    files["index.html"] = page.encode()
    return RenderedReport(report=report, files=files, charts=charts, csv=csv)


def render_email(
    rendered: RenderedReport,
    config: ReportConfig,
    link: str,
    not_archived: str | None,
    kept: str | None = None,
    replacing: str = "",
) -> RenderedEmail:
    """The email of a rendered report, after archiving it: the archived copy's `link`, or
    `Not archived: <why>` when the archive refused it (`not_archived`), or `Archive kept: ...`
    when a report already archived for the week was kept (`kept`); after the link, what it
    replaced (`replacing`). Its HTML shows fewer
    table rows when all of them would take it over EMAIL_HTML_MAX (Gmail clips it)."""
    report, charts = rendered.report, rendered.charts
    src = {c.cid: f"cid:{c.cid}" for c in charts}
    for rows_shown, fleet_rows in EMAIL_ROWS:
        html = render_html(
            report, config, charts, src, link, not_archived, rows_shown, fleet_rows, kept, replacing
        )
        if len(html.encode()) <= EMAIL_HTML_MAX:
            break
    return RenderedEmail(html=html, text=render_text(report, link, not_archived, kept, replacing))
