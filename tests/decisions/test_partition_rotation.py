"""A rotation run's bookkeeping, tested directly: what is retired, what each detach and drop did,
what a dry run says, and the events a run ends with."""

from __future__ import annotations

from datetime import UTC, datetime

from decisions.partition_rotation import (
    CreatedPartition,
    Detached,
    Dropped,
    ExpiredTable,
    ExpiryOutcome,
    RotationReport,
    TableRotation,
    artifact_rows,
    planned_outcomes,
    record_detaches,
    record_drops,
    record_failure,
    rotation_events,
    to_retire,
)
from decisions.partitioning import (
    HealthFinding,
    KeptPartition,
    PartitionPolicy,
    PlannedExpiry,
    PlannedPartition,
    RotationPlan,
)

JAN, FEB, MAR = (datetime(2025, m, 1, tzinfo=UTC) for m in (1, 2, 3))


def policy(action: str = "archive_then_drop") -> PartitionPolicy:
    archive = "s3://bucket/archive" if action == "archive_then_drop" else None
    return PartitionPolicy.model_validate(
        {
            "table": "public.audit_logs",
            "interval": "month",
            "retention": "12 months",
            "expired_action": action,
            "archive": archive,
        }
    )


def plan(*names: str, action: str = "archive_then_drop") -> RotationPlan:
    return RotationPlan(
        table="public.audit_logs",
        interval="month",
        timezone="UTC",
        current_start=MAR,
        retention_cutoff=FEB,
        expire=[
            PlannedExpiry(
                name=n, lower=JAN, upper=FEB, action=action, reason="older than 12 months"
            )
            for n in names
        ],
    )


def leftover(name: str) -> ExpiredTable:
    return ExpiredTable(name=name, lower=JAN, upper=FEB, attached=False)


def test_this_runs_expired_partitions_come_first_then_leftovers_each_once() -> None:
    retiring = to_retire(plan("p_jan", "p_feb"), [leftover("p_feb"), leftover("p_old")])
    assert [(t.name, t.attached) for t in retiring] == [
        ("p_jan", True),
        ("p_feb", True),
        ("p_old", False),
    ]


def test_a_failed_detach_keeps_the_partition_attached_and_goes_no_further() -> None:
    result = TableRotation(table="public.audit_logs", kind="range")
    retiring = to_retire(plan("p_jan", "p_feb"), [leftover("p_old")])
    detached = {
        "p_jan": Detached(name="p_jan", mode="plain"),
        "p_feb": Detached(name="p_feb", error="lock timeout"),
    }
    ready = record_detaches(result, policy(), retiring, detached, lock_timeout_ms=2_000)

    assert [(o.partition, t.name) for o, t in ready] == [("p_jan", "p_jan"), ("p_old", "p_old")]
    by_name = {o.partition: o for o in result.expired}
    assert by_name["p_jan"].status == "detached" and by_name["p_jan"].detach_mode == "plain"
    assert "refuses DETACH CONCURRENTLY" in by_name["p_jan"].detail
    assert "2000 ms" in by_name["p_jan"].detail
    assert by_name["p_feb"].status == "failed"
    assert by_name["p_feb"].detail == "lock timeout; nothing dropped, p_feb stays attached"
    assert by_name["p_old"].status == "detached" and by_name["p_old"].detach_mode is None
    assert result.problems == [
        "detaching p_feb failed: lock timeout; nothing dropped, p_feb stays attached"
    ]


def test_detach_only_detaches_and_retires_nothing_further() -> None:
    result = TableRotation(table="public.audit_logs", kind="range")
    retiring = to_retire(plan("p_jan", action="detach_only"), [])
    detached = {"p_jan": Detached(name="p_jan", mode="concurrently")}
    assert record_detaches(result, policy("detach_only"), retiring, detached, 2_000) == []
    assert [o.status for o in result.expired] == ["detached"]


def test_a_refused_drop_keeps_a_verified_archive_and_fails_a_plain_drop() -> None:
    for action, kept_status in (("archive_then_drop", "archived, not dropped"), ("drop", "failed")):
        result = TableRotation(table="public.audit_logs", kind="range")
        status = "archived, not dropped" if action == "archive_then_drop" else "detached"
        outcomes = [
            ExpiryOutcome(partition=n, action=action, status=status, rows=10)
            for n in ("p_jan", "p_feb")
        ]
        dropped = [
            Dropped(name="p_jan", rows=10),
            Dropped(name="p_feb", error="row count 11 differs from the archive's 10"),
        ]
        done = record_drops(result, policy(action), outcomes, dropped)

        assert [o.partition for o in done] == ["p_jan"]
        assert outcomes[0].status == "dropped" and outcomes[0].rows == 10
        assert outcomes[1].status == kept_status, action
        assert outcomes[1].detail == (
            "row count 11 differs from the archive's 10; nothing dropped, p_feb stays detached"
        )
        assert result.problems == [f"expiring p_feb failed: {outcomes[1].detail}"]


def test_a_failed_archive_fails_the_outcome_and_says_nothing_was_dropped() -> None:
    result = TableRotation(table="public.audit_logs", kind="range")
    outcome = ExpiryOutcome(partition="p_jan", action="archive_then_drop", status="detached")
    record_failure(result, outcome, "S3 upload failed")
    assert outcome.status == "failed"
    assert outcome.detail == "S3 upload failed; nothing dropped, p_jan stays detached"
    assert result.problems == [f"expiring p_jan failed: {outcome.detail}"]


def test_a_dry_run_says_what_would_happen_to_each_partition_and_leftover() -> None:
    outcomes = planned_outcomes(plan("p_jan"), ["p_old"], policy())
    assert [(o.partition, o.status, o.detail) for o in outcomes] == [
        ("p_jan", "would archive then drop", "older than 12 months"),
        ("p_old", "would archive then drop", "detached by an earlier run"),
    ]
    # detach_only: a leftover is already detached, so nothing more would happen to it.
    only = planned_outcomes(plan("p_jan", action="detach_only"), ["p_old"], policy("detach_only"))
    assert [(o.partition, o.status) for o in only] == [("p_jan", "would detach")]


def test_a_run_ends_with_one_rotated_event_per_table_and_its_findings() -> None:
    applied = TableRotation(
        table="public.audit_logs",
        kind="range",
        plan=plan("p_jan"),
        default_rows=7,
        expired=[
            ExpiryOutcome(
                partition="p_jan",
                action="archive_then_drop",
                status="dropped",
                uri="s3://bucket/archive/p_jan.parquet",
                rows=10,
            )
        ],
        problems=["a gap"],
    )
    failed = TableRotation(table="public.other", kind="hash", error="not partitioned")
    report = RotationReport(target="db", dry_run=False, seconds=1.0, tables=[applied, failed])

    events = rotation_events(report)
    assert [(name, table) for name, table, _ in events] == [
        ("perfops.partitions.default_rows", "public.audit_logs"),
        ("perfops.partitions.rotated", "public.audit_logs"),
        ("perfops.partitions.rotated", "public.other"),
    ]
    rotated = events[1][2]
    assert rotated["archived"] == ["p_jan"] and rotated["dropped"] == ["p_jan"]
    assert rotated["would_create"] == [] and rotated["would_expire"] == []
    assert rotated["problems"] == ["a gap"]
    assert events[2][2]["problems"] == ["not partitioned"]
    assert events[0][2] == {"table": "public.audit_logs", "rows": 7}


def test_an_applied_run_reports_the_state_it_left_not_the_one_it_found() -> None:
    """Found short of premade partitions with an expired last child; the run created them and
    planned again (`after`): its artifact and events say neither any more."""
    found = plan("p_jan")
    found.health = [HealthFinding(kind="premade_short", detail="0 of 3 months ready")]
    found.kept = [KeptPartition(name="p_feb", lower=FEB, upper=MAR, reason="it is the last child")]
    found.create = [PlannedPartition(name="p_apr", lower=MAR, upper=MAR, reason="premake 1")]
    after = plan("p_jan", "p_feb")
    after.expire[1].reason = "older than 12 months, and no longer the last child"
    applied = TableRotation(
        table="public.audit_logs",
        kind="range",
        plan=found,
        after=after,
        created=[CreatedPartition(name="p_apr", status="created")],
        expired=[
            ExpiryOutcome(partition=n, action="archive_then_drop", status="dropped", rows=1)
            for n in ("p_jan", "p_feb")
        ],
    )
    report = RotationReport(target="db", dry_run=False, seconds=1.0, tables=[applied])
    rows = artifact_rows(report)
    assert [(r["what"], r["partition"], r["result"]) for r in rows] == [
        ("create", "p_apr", "created"),
        ("expire", "p_jan", "dropped; 1 rows"),
        ("expire", "p_feb", "dropped; 1 rows"),
    ]
    assert rows[2]["reason"] == "older than 12 months, and no longer the last child"
    assert [n for n, _, _ in rotation_events(report)] == ["perfops.partitions.rotated"]
    # a dry run (no `after`) still reports what it found
    dry = RotationReport(
        target="db", dry_run=True, seconds=1.0, tables=[applied.model_copy(update={"after": None})]
    )
    assert {"health", "keep"} <= {r["what"] for r in artifact_rows(dry)}
    assert "perfops.partitions.health" in [n for n, _, _ in rotation_events(dry)]
