"""generate_weekly_report: the week's performance report, emailed and archived. CLI
`perfops report weekly`.

1. The week (ISO, default the last complete one) and the one before, for comparison.
2. From Prometheus, every figure by its own PromQL (deployments/report.yaml): per endpoint
   p50/p95/p99, mean and peak throughput, error rate; SLIs and error budget; CPU and memory;
   agent execution and workflow completion times; hourly series for the charts. A query that
   fails marks its section missing; the rest of the report still goes out.
2. From the Prefect API, the `perfops.*` events of the week: what perfops itself did (one query
   per section, newest first; a section whose query hit its cap says it is partial).
3. Rendered as an HTML page (inline CSS, PNG charts), plain text and CSV/Parquet data; archived
   (S3 or a folder, with a manifest of its files written last) before it is sent, so a failed
   delivery never loses the report. A report already archived for the week is kept unless
   `replace_archive` (decisions.report_archive): a rerun of an old week is usually poorer.
   Replacing deletes, once the new manifest is read back, the earlier report's files it does
   not list, and verifies the folder holds exactly the manifest's. The email is rendered after
   archiving: the archived copy's link, `Not archived: <why>`, or `Archive kept: ...`.
4. Emailed to the recipients through the prefect-email `EmailServerCredentials` block (or the
   file outbox): refused recipients are reported, the others still receive it; an SMTP server
   that stays down fails the run after the retries, with the report archived.
5. A markdown artifact `perfops-weekly-report` with the summary and the link, and the event
   `perfops.report.generated` (or `perfops.report.delivery_failed`).
6. The run ends Failed, the report archived all the same and the message saying why, when no
   target could be scored (Prometheus answered nothing), no recipients are configured, or the
   email could not be sent; and, unless `allow_partial`, when a section is missing, a recipient
   was refused, a fleet target could not be reached or the `out_dir` copy could not be
   written; and when the archive refused the report (emailed and recorded all the same).

Over a fleet (`targets`, docs/fleet.md): the same one report, with a Fleet section, one row per
target worst first (tasks.fleet_report, decisions.report_fleet).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.resolve import check_block_names, resolve_archive, resolve_email, resolve_metrics
from decisions.recipients import check_recipients
from decisions.report_archive import ArchivePlan, ReportManifest, plan_archive, removal_line
from decisions.report_fleet import (
    FleetView,
    display_rows,
    fleet_things,
    reported_targets,
    selection_label,
)
from decisions.report_rendering import (
    ReportResult,
    WeeklyReport,
    render_email,
    render_markdown,
    render_week,
    run_failure,
)
from decisions.reporting import (
    SLOW_QUERIES_ARTIFACT,
    ReportWeek,
    SlowQueries,
    WeekNumbers,
    assemble_week,
    evaluate,
    last_complete_week,
    load_config,
    parse_week,
    summarize_records,
    things_to_look_at,
)
from perfops.clock import as_utc
from perfops.errors import PerfopsError
from perfops.redaction import install_log_redaction, redact
from perfops.settings import PROJECT_DIR, get_settings
from tasks.fleet_report import read_fleet_view
from tasks.fleet_runs import load_selection
from tasks.mail import Attachment, InlineImage, SendResult, build_message, send_email
from tasks.prefect_events import read_perfops_events, read_table_artifact
from tasks.prometheus.report import query_report_figures
from tasks.records import emit, end_run, publish_markdown
from tasks.storage import (
    StoredObject,
    archive_report,
    find_archived_report,
    object_link,
    object_location,
    remove_stale_files,
    write_folder,
)

ARTIFACT_KEY = "perfops-weekly-report"
EVENT_GENERATED = "perfops.report.generated"
EVENT_DELIVERY_FAILED = "perfops.report.delivery_failed"
DEFAULT_CONFIG = PROJECT_DIR / "deployments" / "report.yaml"
ARCHIVE_PREFIX = "reports/weekly"


class ReportFailed(PerfopsError):
    """The report was archived but is incomplete or was not sent; `result` says what it holds."""

    def __init__(self, message: str, result: ReportResult | None = None):
        super().__init__(message)
        self.result = result


class ReportDeliveryFailed(ReportFailed):
    """The report was archived but could not be emailed."""


# Charts, the HTML page (archive and email flavours), text, CSV and Parquet.
render_report = task(name="render_weekly_report", cache_policy=NO_CACHE)(render_week)


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
    allow_partial: bool = False,
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    replace_archive: bool = False,
) -> ReportResult:
    """Generate, archive and send one weekly report.

    Args:
        week: ISO week like 2026-W47 (default: the last complete week, UTC).
        recipients: email addresses, one per entry (`sre@example.com`, `"Doe, John"
            <john@example.com>`; default: `recipients` in the configuration). An entry that is
            not one address fails the run before any work, naming it; none: the report is
            archived, not sent, and the run fails saying so.
        out_dir: also write a browsable copy to OUT_DIR/<week>/index.html.
        config_path: targets and PromQL (default deployments/report.yaml, or
            PERFOPS_REPORT_CONFIG).
        prometheus_block, s3_block, email_block: saved blocks (default: PERFOPS_* variables,
            else the embedded defaults).
        now: the clock (tests); default the current time.
        allow_partial: end Completed when only part failed (a section missing, a recipient
            refused, a fleet target unreachable); the report and the state message still say
            what. Default False: Failed.
        targets: also report over a fleet (docs/fleet.md): a named fleet, `all`, a label
            `key=value`, a target's name or a list of names. The report gets a Fleet section,
            one row per target, worst first; Failed (`1 of 4 targets unreachable: ...`) when a
            target cannot be read.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        replace_archive: replace a report already archived for the week. Default False: it
            is kept (a rerun of an old week, after Prefect's event retention trimmed its
            events, builds a poorer report), this one is emailed but not archived, and the
            email, artifact, event and result say so. When True the new report is written,
            then the earlier one's files it does not have are deleted (verified).
    """
    install_log_redaction()
    check_block_names(prometheus_block=prometheus_block, s3_block=s3_block, email_block=email_block)
    logger = get_run_logger()
    started = time.monotonic()
    clock = as_utc(now) if now else datetime.now(UTC)  # typed without a zone: UTC
    settings = get_settings()
    config_file = Path(config_path or os.environ.get("PERFOPS_REPORT_CONFIG") or DEFAULT_CONFIG)
    config = load_config(config_file)
    this = parse_week(week, clock) if week else last_complete_week(clock)
    before: ReportWeek = this.previous()
    to = list(recipients if recipients is not None else config.recipients)
    # a bad address fails before any query, not after the report is archived
    check_recipients(to, "recipients" if recipients is not None else f"recipients in {config_file}")
    if targets is not None:  # an unknown fleet or target, or one of caches alone, fails
        _, chosen = load_selection(targets, fleet_file)  # before any query
        reported_targets(chosen, selection_label(targets))

    metrics = resolve_metrics(prometheus_block)
    current_raw, previous_raw, series = query_report_figures(
        metrics.value, metrics.description, config, this
    )
    current: WeekNumbers = assemble_week(this.label, current_raw, config)
    previous: WeekNumbers = assemble_week(before.label, previous_raw, config)
    for section, why in current.missing.items():
        logger.warning("section %s is missing: %s", section, why)

    read = read_perfops_events(this.start, this.end)
    events = read.events
    for cut in read.partial:
        logger.warning("section %s is partial: %s", cut.section, cut.line)
    latest_slow = read_table_artifact(SLOW_QUERIES_ARTIFACT, this.start, this.end)
    slow = SlowQueries(checked_at=latest_slow[0], rows=latest_slow[1]) if latest_slow else None
    records = summarize_records(events, slow, read.partial)
    checks = evaluate(current, previous, config)
    store = resolve_archive(s3_block)
    prefix = f"{ARCHIVE_PREFIX}/{this.label}"
    fleet: FleetView | None = None
    if targets is not None:
        last = f"{ARCHIVE_PREFIX}/{before.label}"
        fleet = read_fleet_view(targets, fleet_file, config, this, events, store.value, last, clock)
        logger.info("fleet: %s", fleet.summary)
    report = WeeklyReport(
        week=this,
        previous_week=before.label,
        generated_at=clock,
        source=metrics.description,
        checks=checks,
        current=current,
        previous=previous,
        records=records,
        things=things_to_look_at(checks, current, records, extra=fleet_things(fleet)),
        objectives={s.name: s.objective for s in config.slos},
        fleet=fleet,
    )
    index_location = object_location(store.value, f"{prefix}/index.html")
    link = object_link(store.value, f"{prefix}/index.html")
    rendering = time.monotonic()
    rendered = render_report(report, config, series, events)
    report = rendered.report
    logger.info(
        "rendered %d charts, %d tables and the page in %.1f s",
        len(rendered.charts),
        len(rendered.csv),
        time.monotonic() - rendering,
    )

    not_archived: str | None = None
    plan: ArchivePlan | None = None
    stored: list[StoredObject] = []
    manifest: ReportManifest | None = None
    removed: list[str] = []
    not_cleaned: str | None = None  # replaced, but the earlier report's files not all removed
    try:
        # A report already archived for the week is kept unless replace_archive.
        plan = plan_archive(
            this.label, link, find_archived_report(store.value, prefix), replace_archive
        )
        if plan.action == "keep":
            logger.warning("%s", plan.line)
        else:
            stored, manifest = archive_report(
                store.value, prefix, rendered.files, this.label, clock
            )
    except Exception as exc:  # noqa: BLE001 - said in the artifact and the state, then Failed
        stored, not_archived = [], redact(str(exc))
        logger.error("archiving the report to %s failed: %s", link, not_archived)
    if plan is not None and plan.action == "replace" and manifest is not None:
        try:
            removed = remove_stale_files(store.value, prefix, manifest)
        except Exception as exc:  # noqa: BLE001 - the report is archived; said, then Failed
            not_cleaned = redact(
                f"the earlier report's files were not all removed from {prefix}/: {exc}"
            )
            logger.error("%s", not_cleaned)
    kept = plan.line if plan is not None and plan.action == "keep" else None
    archive_note = (
        f"NOT archived: {not_archived}"
        if not_archived is not None
        else (plan.line if plan is not None else "") + removal_line(removed)
    )
    folder: str | None = None
    not_copied: str | None = None  # the --out copy, when it could not be written
    if out_dir:
        try:
            folder = write_folder(Path(out_dir) / this.label, rendered.files)
        except OSError as exc:  # said in the artifact and the state; the email still goes
            not_copied = redact(f"copy to {Path(out_dir) / this.label} not written: {exc}")
            logger.error("%s", not_copied)
    logger.info("%s; %s", report.headline, archive_note)

    replacing = plan.replacing + removal_line(removed) if plan is not None and not kept else ""
    email = render_email(rendered, config, link, not_archived, kept, replacing)  # and why
    result_args: dict[str, Any] = {}
    delivery_error: BaseException | None = None
    if not to:
        delivery = (
            "not sent: no recipients; set recipients (CLI --to) or `recipients` in "
            f"{config_file.name}"
        )
    else:
        sink = resolve_email(email_block)
        try:
            message = build_message(
                sender=settings.email_from,
                to=to,
                subject=f"Weekly performance report {report.headline}",
                text=email.text,
                html=email.html,
                inline_images=[InlineImage(cid=c.cid, content=c.png) for c in rendered.charts],
                attachments=[
                    Attachment(filename=name, content=data, mime_type="text/csv")
                    for name, data in rendered.csv.items()
                ],
            )
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
        render_markdown(
            report,
            link,
            "; ".join(
                filter(
                    None,
                    [archive_note, not_cleaned, not_copied, delivery],
                )
            ),
        ),
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
        archive_action=(
            "failed" if not_archived is not None else plan.action if plan is not None else "write"
        ),
        archive_note=archive_note,
        recipients=to,
        delivery=delivery,
        seconds=round(time.monotonic() - started, 3),
        fleet=display_rows(fleet) if fleet else [],
        fleet_unreachable=[r.target for r in fleet.unreachable] if fleet else [],
        **result_args,
    )
    payload = {
        "week": this.label,
        "met": report.met,
        "missed": report.missed,
        "missing_sections": sorted(current.missing),
        "archive": link if not_archived is None else f"NOT archived: {not_archived}",
        "archive_action": result.archive_action,
        **({"archive_removed": removed} if removed else {}),
        "recipients": len(to),
        "accepted": len(result.accepted),
        "refused": sorted(result.refused),
        **({"fleet": fleet.selection, "unreachable": result.fleet_unreachable} if fleet else {}),
    }
    resource = f"perfops.report.weekly.{this.label}"
    if delivery_error is not None:
        emit(EVENT_DELIVERY_FAILED, resource, {**payload, "error": redact(str(delivery_error))})
    else:
        emit(EVENT_GENERATED, resource, payload)
    not_emailed = redact(str(delivery_error)) if delivery_error is not None else None
    failure = run_failure(
        report,
        result,
        metrics.description,
        not_emailed,
        not_archived,
        not_copied,
        kept=kept,
        not_cleaned=not_cleaned,
    )
    error = (ReportDeliveryFailed if delivery_error is not None else ReportFailed)(
        failure or "", result
    )
    return end_run(
        result,
        failure,
        partial=report.met + report.missed > 0
        and bool(result.accepted)  # someone got it
        and delivery_error is None
        and not_archived is None,
        allow_partial=allow_partial,
        error=error,
    )
