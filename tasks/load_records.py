"""A load test run's records: its history in PostgreSQL (and a new baseline when asked), the
chart file, the artifacts `perfops-load-<test>` and `perfops-load-<test>-chart`, and the
`perfops.load.*` events. What goes in them is decided in decisions/load_report.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from blocks import PostgresTarget
from decisions.load_baseline import ComparePolicy, NoBaseline, establish_baseline
from decisions.load_charts import latency_chart
from decisions.load_report import (
    LoadTestReport,
    artifact_rows,
    chart_markdown,
    event_payload,
    history_record,
    table_description,
)
from decisions.load_results import ShareResult
from perfops.redaction import one_line
from perfops.settings import get_settings
from perfops.wording import counted
from tasks.postgres.load_runs import read_load_runs, record_load_run, save_load_baseline
from tasks.records import emit, publish_markdown, publish_table

EVENT_TESTED = "perfops.load.tested"
EVENT_REGRESSED = "perfops.load.regressed"
EVENT_ABORTED = "perfops.load.aborted"
EVENT_BASELINE = "perfops.load.baseline_established"
EVENT_REFUSED = "perfops.load.refused"
EVENT_FAILED = "perfops.load.failed"
HISTORY_FOR_BASELINE = 50


def resource(base_url: str) -> str:
    """The events' resource: `perfops.load.<host:port>`."""
    return f"perfops.load.{urlsplit(base_url).netloc}"


def keep_history(
    history: PostgresTarget,
    report: LoadTestReport,
    result: ShareResult,
    *,
    baseline: bool,
    policy: ComparePolicy,
) -> str | None:
    """Record the run; with `baseline`, establish a new baseline from the last good runs
    (noted in the report). What went wrong, in one line, or None."""
    try:
        record_load_run(history, history_record(report, result))
        if baseline:
            runs = read_load_runs(
                history, report.test, HISTORY_FOR_BASELINE, load_target=report.target
            )
            made = establish_baseline(
                report.test,
                runs,
                datetime.now(UTC),
                policy,
                target=report.target,
                definition=report.definition,
            )
            save_load_baseline(history, made)
            report.established_baseline = True
            report.baseline = (
                (report.baseline + "; ") if report.baseline else ""
            ) + f"new baseline established from {counted(len(made.run_ids), 'run')}"
    except NoBaseline as exc:
        return f"no baseline established: {exc}"
    except Exception as exc:  # noqa: BLE001 - the load test's record must still be written
        return f"history not written: {one_line(exc, empty=type(exc).__name__)}"
    return None


def write_chart(report: LoadTestReport) -> tuple[bytes, Path]:
    """The latency-over-time PNG, also written to <out>/load-tests/<test>/<time>-<run>.png."""
    png = latency_chart(report)
    folder = get_settings().out_dir / "load-tests" / report.test
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"{report.started_at:%Y%m%dT%H%M%S}-{report.run_id[:8]}.png").resolve()
    path.write_bytes(png)
    return png, path


def publish_load_run(report: LoadTestReport) -> None:
    """The chart, both artifacts, and the events of a run that sent load."""
    png, chart = write_chart(report)
    key = f"perfops-load-{report.test}"
    publish_table(key, artifact_rows(report), table_description(report, str(chart)))
    publish_markdown(
        f"{key}-chart",
        chart_markdown(report, png, str(chart)),
        f"Latency over time of load test {report.test}",
    )
    where = resource(report.target)
    labels: dict[str, Any] = {"perfops.test": report.test}
    payload = event_payload(report)
    emit(EVENT_TESTED, where, payload, **labels, **{"perfops.outcome": report.outcome})
    if report.regressed:
        emit(EVENT_REGRESSED, where, payload, **labels)
    if report.aborted:
        emit(EVENT_ABORTED, where, payload, **labels)
    if report.established_baseline:
        emit(EVENT_BASELINE, where, {"test": report.test, "run_id": report.run_id}, **labels)


def publish_refusal(test: str, base_url: str, reason: str) -> None:
    """The record of a test refused before any request was sent."""
    publish_table(
        f"perfops-load-{test}",
        [{"what": f"test {test}", "result": "refused", "reason": reason}],
        f"Load test {test} refused before any request was sent.",
    )
    emit(
        EVENT_REFUSED,
        resource(base_url),
        {"test": test, "reason": reason},
        **{"perfops.test": test},
    )


def publish_unmeasured(test: str, base_url: str, reason: str) -> None:
    """The record of a test whose load could not be measured (a generator or a share failed,
    or the shares' figures could not be merged): no figures, the reason; the event
    `perfops.load.failed` so the weekly report counts it."""
    publish_table(
        f"perfops-load-{test}",
        [{"what": f"test {test}", "result": "failed", "reason": reason}],
        f"Load test {test} failed before its figures were measured.",
    )
    emit(
        EVENT_FAILED,
        resource(base_url),
        {"test": test, "reason": reason},
        **{"perfops.test": test},
    )
