"""generate_weekly_report: the week's performance report, emailed and archived. CLI
`perfops report weekly`.

1. The week (ISO, default the last complete one) and the one before, for comparison.
2. From Prometheus, every figure by its own PromQL (deployments/report.yaml): per endpoint
   p50/p95/p99, mean and peak throughput, error rate; SLIs and error budget; CPU and memory;
   agent execution and workflow completion times; hourly series for the charts. A query that
   fails marks its section missing; the rest of the report still goes out.
2. From the Prefect API, the `perfops.*` events of the week: what perfops itself did.
3. Rendered as an HTML page (inline CSS, PNG charts), plain text and CSV/Parquet data; archived
   (S3 or a folder) before it is sent, so a failed delivery never loses the report.
4. Emailed to the recipients through the prefect-email `EmailServerCredentials` block (or the
   file outbox): refused recipients are reported, the others still receive it; an SMTP server
   that stays down fails the run after the retries, with the report archived.
5. A markdown artifact `perfops-weekly-report` with the summary and the link, and the event
   `perfops.report.generated` (or `perfops.report.delivery_failed`).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.filesystems import LocalFileSystem
from pydantic import BaseModel, Field

from blocks import PrometheusSource
from blocks.resolve import ArchiveStore, resolve_archive, resolve_email, resolve_metrics
from decisions.report_rendering import (
    Chart,
    EndpointSeries,
    WeeklyReport,
    csv_bytes,
    data_tables,
    endpoint_charts,
    endpoint_series,
    parquet_bytes,
    render_html,
    render_markdown,
    render_text,
    resources_chart,
    scaling_chart,
    time_grid,
)
from decisions.reporting import (
    SLOW_QUERIES_ARTIFACT,
    QueryResult,
    RecordedEvent,
    ReportConfig,
    ReportWeek,
    SlowQueries,
    WeekNumbers,
    assemble_week,
    chart_queries,
    evaluate,
    last_complete_week,
    load_config,
    parse_week,
    summarize_records,
    things_to_look_at,
    week_queries,
)
from perfops.errors import PerfopsError
from perfops.redaction import install_log_redaction, redact
from perfops.settings import PROJECT_DIR, get_settings
from tasks.mail import Attachment, InlineImage, SendResult, build_message, send_email
from tasks.prefect_events import read_perfops_events, read_table_artifact
from tasks.prometheus.report import SeriesResult, query_chart_series, query_week
from tasks.records import emit, publish_markdown
from tasks.storage import StoredObject, put_object

ARTIFACT_KEY = "perfops-weekly-report"
EVENT_GENERATED = "perfops.report.generated"
EVENT_DELIVERY_FAILED = "perfops.report.delivery_failed"
DEFAULT_CONFIG = PROJECT_DIR / "deployments" / "report.yaml"
ARCHIVE_PREFIX = "reports/weekly"


class ReportDeliveryFailed(PerfopsError):
    """The report was archived but could not be emailed."""


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
    recipients: list[str]
    accepted: list[str] = Field(default_factory=list)
    refused: dict[str, str] = Field(default_factory=dict)
    delivery: str
    seconds: float


class RenderedReport(BaseModel):
    """The rendered files, by archive key, plus the email parts."""

    report: WeeklyReport
    files: dict[str, bytes]
    email_html: str
    text: str
    charts: list[Chart]
    csv: dict[str, bytes]


def _missing_everywhere(queries: dict[str, str], why: str) -> dict[str, QueryResult]:
    return {name: QueryResult(error=why) for name in queries}


@task(name="render_weekly_report", cache_policy=NO_CACHE)
def render_report(
    report: WeeklyReport,
    config: ReportConfig,
    series: dict[str, SeriesResult],
    events: list[RecordedEvent],
    link: str,
) -> RenderedReport:
    """Charts, the HTML page (archive and email flavours), text, CSV and Parquet."""
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
    started = time.monotonic()
    charts: list[Chart] = endpoint_charts(jobs)
    resources: pd.DataFrame | None = None
    cpu, memory = frames.get("cpu_percent"), frames.get("memory_percent")
    if cpu is not None and memory is not None and not (cpu.empty and memory.empty):
        resources = pd.DataFrame(
            {
                "cpu_percent": cpu.iloc[:, 0].reindex(grid) if not cpu.empty else float("nan"),
                "memory_percent": (
                    memory.iloc[:, 0].reindex(grid) if not memory.empty else float("nan")
                ),
            },
            index=grid,
        )
        charts.append(
            resources_chart(resources["cpu_percent"], resources["memory_percent"], config)
        )
    else:
        why = series.get("cpu_percent", SeriesResult()).error or "Prometheus returned no series"
        report.chart_notes["resources"] = f"No resource chart: {why}."
    scaling = scaling_chart(events, report.week)
    if scaling is not None:
        charts.append(scaling)
    tables = data_tables(report, per_endpoint, resources)
    files: dict[str, bytes] = {}
    csv: dict[str, bytes] = {}
    for name, frame in tables.items():
        csv[f"{name}.csv"] = csv_bytes(frame)
        files[f"data/{name}.csv"] = csv[f"{name}.csv"]
        files[f"data/{name}.parquet"] = parquet_bytes(frame)
    for chart in charts:
        files[chart.filename] = chart.png
    page = render_html(report, config, charts, {c.cid: c.filename for c in charts})
    files["index.html"] = page.encode()
    get_run_logger().info(
        "rendered %d charts, %d tables and the page in %.1f s",
        len(charts),
        len(tables),
        time.monotonic() - started,
    )
    email_html = render_html(report, config, charts, {c.cid: f"cid:{c.cid}" for c in charts}, link)
    return RenderedReport(
        report=report,
        files=files,
        email_html=email_html,
        text=render_text(report, link),
        charts=charts,
        csv=csv,
    )


@task(name="archive_weekly_report", cache_policy=NO_CACHE)
def archive_report(store: ArchiveStore, prefix: str, files: dict[str, bytes]) -> list[StoredObject]:
    """Write every file of the report under `prefix` (each with its SHA-256)."""
    index = {k: v for k, v in files.items() if k != "index.html"}
    stored = [put_object.fn(store, f"{prefix}/{key}", data) for key, data in index.items()]
    # The page last: once it is there, everything it points at is too.
    stored.append(put_object.fn(store, f"{prefix}/index.html", files["index.html"]))
    return stored


@task(name="write_report_folder", cache_policy=NO_CACHE)
def write_folder(folder: Path, files: dict[str, bytes]) -> str:
    """A browsable copy: FOLDER/index.html with charts/ and data/ beside it."""
    for key, data in files.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(folder / "index.html")


def _link(store: ArchiveStore, location: str) -> str:
    if isinstance(store, LocalFileSystem):
        return Path(location).resolve().as_uri()
    return location


@flow(
    name="generate_weekly_report",
    description="The week's performance report: per-endpoint latency, throughput and errors "
    "against the targets, availability and error budget, resources, agent and workflow times, "
    "and what perfops recorded (indexes, statistics, partitions, scaling, SLA alerts); charts, "
    "HTML email with CSV attachments, archived to S3 or a folder.",
    log_prints=False,
)
def generate_weekly_report(
    week: str | None = None,
    recipients: list[str] | None = None,
    out_dir: str | None = None,
    config_path: str | None = None,
    prometheus_block: str | None = None,
    s3_block: str | None = None,
    email_block: str | None = None,
    now: datetime | None = None,
) -> ReportResult:
    """Generate, archive and send one weekly report.

    Args:
        week: ISO week like 2026-W47 (default: the last complete week, UTC).
        recipients: email addresses (default: `recipients` in the configuration; none = the
            report is archived but not sent).
        out_dir: also write a browsable copy to OUT_DIR/<week>/index.html.
        config_path: targets and PromQL (default deployments/report.yaml, or
            PERFOPS_REPORT_CONFIG).
        prometheus_block, s3_block, email_block: saved blocks (default: PERFOPS_* variables,
            else the embedded defaults).
        now: the clock (tests); default the current time.
    """
    install_log_redaction()
    logger = get_run_logger()
    started = time.monotonic()
    clock = now or datetime.now(UTC)
    settings = get_settings()
    config_file = Path(config_path or os.environ.get("PERFOPS_REPORT_CONFIG") or DEFAULT_CONFIG)
    config = load_config(config_file)
    this = parse_week(week, clock) if week else last_complete_week(clock)
    before: ReportWeek = this.previous()

    metrics = resolve_metrics(prometheus_block)
    current_q = week_queries(config, this.seconds)
    previous_q = week_queries(config, before.seconds)
    series_q = chart_queries(config)
    if isinstance(metrics.value, PrometheusSource):
        source = metrics.value
        current_raw = query_week(source, current_q, this.end)
        previous_raw = query_week(source, previous_q, before.end)
        step = timedelta(seconds=config.chart_step_s)
        series = query_chart_series(source, series_q, this.start + step, this.end, step)
    else:
        why = (
            f"no Prometheus configured ({metrics.description}); set PERFOPS_PROMETHEUS_URL "
            "or a perfops-prometheus-source block"
        )
        current_raw = _missing_everywhere(current_q, why)
        previous_raw = _missing_everywhere(previous_q, why)
        series = {name: SeriesResult(error=why) for name in series_q}
    current: WeekNumbers = assemble_week(this.label, current_raw, config)
    previous: WeekNumbers = assemble_week(before.label, previous_raw, config)
    for section, why in current.missing.items():
        logger.warning("section %s is missing: %s", section, why)

    events = read_perfops_events(this.start, this.end)
    latest_slow = read_table_artifact(SLOW_QUERIES_ARTIFACT, this.start, this.end)
    slow = SlowQueries(checked_at=latest_slow[0], rows=latest_slow[1]) if latest_slow else None
    records = summarize_records(events, slow)
    checks = evaluate(current, previous, config)
    report = WeeklyReport(
        week=this,
        previous_week=before.label,
        generated_at=clock,
        source=metrics.description,
        checks=checks,
        current=current,
        previous=previous,
        records=records,
        things=things_to_look_at(checks, current, records),
        objectives={s.name: s.objective for s in config.slos},
    )
    store = resolve_archive(s3_block)
    prefix = f"{ARCHIVE_PREFIX}/{this.label}"
    if isinstance(store.value, LocalFileSystem):
        index_location = str(Path(store.value.basepath or ".") / prefix / "index.html")
    else:
        folder_part = store.value.bucket_folder.strip("/")
        key = f"{folder_part}/{prefix}/index.html" if folder_part else f"{prefix}/index.html"
        index_location = f"s3://{store.value.bucket_name}/{key}"
    link = _link(store.value, index_location)
    rendered = render_report(report, config, series, events, link)
    report = rendered.report

    stored = archive_report(store.value, prefix, rendered.files)
    folder = write_folder(Path(out_dir) / this.label, rendered.files) if out_dir else None
    logger.info("%s; archived %d files to %s", report.headline, len(stored), link)

    to = list(recipients if recipients is not None else config.recipients)
    result_args: dict[str, Any] = {}
    delivery_error: BaseException | None = None
    if not to:
        delivery = "not sent: no recipients (set recipients or --to)"
    else:
        sink = resolve_email(email_block)
        message = build_message(
            sender=settings.email_from,
            to=to,
            subject=f"Weekly performance report {report.headline}",
            text=rendered.text,
            html=rendered.email_html,
            inline_images=[InlineImage(cid=c.cid, content=c.png) for c in rendered.charts],
            attachments=[
                Attachment(filename=name, content=data, mime_type="text/csv")
                for name, data in rendered.csv.items()
            ],
        )
        try:
            sent: SendResult = send_email(sink.value, message)
        except Exception as exc:  # noqa: BLE001 - reported, then the run fails below
            delivery_error = exc
            delivery = f"FAILED to send to {', '.join(to)} via {sink.description}: {exc}"
        else:
            result_args = {"accepted": sent.accepted, "refused": sent.refused}
            delivery = f"sent to {len(sent.accepted)} of {len(to)} via {sink.description}"
            if sent.refused:
                delivery += "; refused: " + "; ".join(
                    f"{a} ({why})" for a, why in sent.refused.items()
                )
                logger.warning("recipients refused: %s", sent.refused)
    delivery = redact(delivery)
    publish_markdown(
        ARTIFACT_KEY,
        render_markdown(report, link, delivery),
        f"Weekly performance report {this.label}: {report.headline}",
    )
    result = ReportResult(
        week=this.label,
        headline=report.headline,
        things=report.things,
        met=report.met,
        missed=report.missed,
        missing_sections=current.missing,
        archive=link,
        html_location=index_location,
        folder=folder,
        files=len(stored),
        recipients=to,
        delivery=delivery,
        seconds=round(time.monotonic() - started, 3),
        **result_args,
    )
    payload = {
        "week": this.label,
        "met": report.met,
        "missed": report.missed,
        "missing_sections": sorted(current.missing),
        "archive": link,
        "recipients": len(to),
        "accepted": len(result.accepted),
        "refused": sorted(result.refused),
    }
    resource = f"perfops.report.weekly.{this.label}"
    if delivery_error is not None:
        emit(EVENT_DELIVERY_FAILED, resource, {**payload, "error": redact(str(delivery_error))})
        raise ReportDeliveryFailed(
            f"weekly report {this.label} archived at {link} but not emailed: "
            f"{redact(str(delivery_error))}"
        ) from delivery_error
    emit(EVENT_GENERATED, resource, payload)
    return result
