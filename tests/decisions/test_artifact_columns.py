"""Every table artifact leads with the columns that explain a row: the row's short identity, then
`result` (what happened or was decided) and `reason` (why), then the details. The Prefect UI
shows a table's columns in the order of its rows' keys and cuts off what does not fit, so the
explaining columns must not sit behind long details (DDL, statements, bounds, checksums)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from decisions.index_health import LockedTable, classify_indexes, finding_rows
from decisions.index_health import select_drops as select_index_drops
from decisions.index_suggestions import (
    BuildResult,
    IndexSuggestionReport,
    SkippedStatement,
    Suggestion,
)
from decisions.index_suggestions import artifact_rows as suggestion_rows
from decisions.indexing import Candidate, Rejection
from decisions.partition_rotation import (
    CreatedPartition,
    ExpiryOutcome,
    RotationReport,
    TableRotation,
)
from decisions.partition_rotation import artifact_rows as rotation_rows
from decisions.partitioning import PlannedExpiry, PlannedPartition, RotationPlan
from decisions.scaling_report import ScalingRun
from decisions.scaling_report import artifact_rows as scaling_rows
from decisions.slow_queries import pick_slow_statements, statement_rows
from tasks.postgres.statements import StatementStats
from tests.decisions.test_index_health import idx

JAN, FEB, MAR, APR = (datetime(2026, m, 1, tzinfo=UTC) for m in (1, 2, 3, 4))


def _rotation() -> list[dict[str, Any]]:
    plan = RotationPlan(
        table="public.audit_logs",
        interval="month",
        timezone="UTC",
        current_start=MAR,
        retention_cutoff=FEB,
        create=[PlannedPartition(name="audit_logs_p2026_04", lower=APR, upper=APR, reason="ahead")],
        expire=[
            PlannedExpiry(
                name="audit_logs_p2026_01",
                lower=JAN,
                upper=FEB,
                action="archive_then_drop",
                reason="older than 1 month",
            )
        ],
    )
    done = TableRotation(
        table="public.audit_logs",
        kind="range",
        plan=plan,
        created=[CreatedPartition(name="audit_logs_p2026_04", status="created")],
        expired=[
            ExpiryOutcome(
                partition="audit_logs_p2026_01",
                action="archive_then_drop",
                status="dropped",
                rows=10,
                uri="s3://archive/public/audit_logs/audit_logs_p2026_01.parquet",
                sha256="0" * 64,
            )
        ],
        problems=["a gap"],
    )
    failed = TableRotation(table="public.other", kind="range", error="not partitioned")
    report = RotationReport(target="db", dry_run=False, seconds=1.0, tables=[done, failed])
    return rotation_rows(report)


def _suggestions() -> list[dict[str, Any]]:
    candidate = Candidate(schema_name="public", table_name="agents", columns=["team"])
    suggestion = Suggestion(
        table="public.agents",
        columns=["name"],
        index_name="perfops_idx_agents_name",
        ddl="CREATE INDEX CONCURRENTLY perfops_idx_agents_name ON public.agents (name)",
        size_bytes=8192,
        calls=100,
        est_time_saved_ms=1234.0,
        queries=[
            {"queryid": 1, "query": "select", "calls": 100, "cost_before": 9, "cost_after": 1}
        ],
    )
    report = IndexSuggestionReport(
        database="db",
        statements_considered=3,
        suggestions=[suggestion, suggestion.model_copy(update={"columns": ["code"]})],
        rejected=[Rejection(candidate=candidate, reason="Need 30% cost savings")],
        skipped=[SkippedStatement(queryid=2, query="insert into t values ($1)", reason="insert")],
        builds=[
            BuildResult(
                key="public.agents(name)",
                index_name="perfops_idx_agents_name",
                status="created",
                detail="built in 0.1 s",
            )
        ],
    )
    return suggestion_rows(report)


def _index_health() -> list[dict[str, Any]]:
    catalog = [idx("agents_name_idx", "name", scans=0), idx("agents_name_team_idx", "name", "team")]
    findings = classify_indexes(catalog)
    plan = select_index_drops(findings, catalog, ["public.agents_name_idx", "gone"], apply=False)
    locked = [LockedTable(schema_name="s", table_name="t", index_names=["i"], reason="locked")]
    return finding_rows(findings, plan.outcomes, locked)


def _scaling() -> list[dict[str, Any]]:
    times = pd.date_range("2026-11-20", periods=3, freq="5min", tz="UTC")
    run = ScalingRun(
        group="web",
        mode="forecast",
        dry_run=True,
        current=4,
        desired=6,
        action="scale_out",
        reason="forecast peak needs 6",
        demands={"forecast": 6, "target tracking": 5},
    )
    return scaling_rows(run, pd.Series([1.0, 2.0, 3.0], index=times), pd.Series([4.0], times[:1]))


def _slow_queries() -> list[dict[str, Any]]:
    stats = StatementStats(
        queryid=1,
        query="select * from t where id = $1",
        calls=4,
        total_ms=6000,
        mean_ms=1500,
        stddev_ms=0,
        min_ms=1000,
        max_ms=2000,
        rows=4,
        shared_blks_hit=90,
        shared_blks_read=10,
        share_of_db_time=0.5,
    )
    return statement_rows(pick_slow_statements([stats], top=1))


@pytest.mark.parametrize(
    ("rows_of", "lead"),
    [
        (_rotation, ["table", "what", "partition", "result", "reason"]),
        (_suggestions, ["table", "columns", "result", "reason"]),
        (_index_health, ["index", "result", "reason"]),
        (_scaling, ["kind", "result", "reason"]),
        (_slow_queries, ["rank", "reason"]),
    ],
    ids=[
        "partition_rotation",
        "index_suggestions",
        "index_health",
        "scaling_report",
        "slow_queries",
    ],
)
def test_rows_lead_with_identity_then_result_and_reason(
    rows_of: Callable[[], list[dict[str, Any]]], lead: list[str]
) -> None:
    rows = rows_of()
    assert rows
    for row in rows:
        assert list(row)[: len(lead)] == lead, row
    # every row of a table has the same columns, in the same order
    assert len({tuple(row) for row in rows}) == 1
    # the explaining columns are filled where the row explains something
    assert any(row.get("result") or row.get("reason") for row in rows)


def test_long_details_come_after_the_explaining_columns() -> None:
    [expire] = [r for r in _rotation() if r["what"] == "expire"]
    assert expire["result"] == "dropped; 10 rows"
    assert expire["archive"].endswith("sha256 " + "0" * 64)
    [decision] = [r for r in _scaling() if r["kind"] == "decision"]
    assert decision["result"] == "scale_out: would set 6 (from 4) (dry run)"
    assert decision["reason"] == "forecast peak needs 6"
    built, suggested, rejected, skipped = _suggestions()
    assert (built["result"], built["detail"]) == ("created", "built in 0.1 s")
    assert suggested["detail"] == "dry run: pass apply=True to build"
    assert (rejected["result"], rejected["reason"]) == ("rejected", "Need 30% cost savings")
    assert skipped["result"] == "statement skipped" and skipped["detail"].startswith("insert")
