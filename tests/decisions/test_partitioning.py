"""Partition rotation planning, tested directly: policies, alignment, names, plans and reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from decisions.partitioning import (
    DefaultRows,
    ExistingPartition,
    HashPolicy,
    PartitionPolicy,
    PolicyError,
    add_intervals,
    floor_to_interval,
    load_policies,
    partition_name,
    plan_hash,
    plan_rotation,
    split_table,
)

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 27, 7, 30, tzinfo=UTC)

SEED = """
policies:
  - table: public.audit_logs
    interval: month
    premake: 3
    retention: 12 months
    expired_action: archive_then_drop
    archive: s3-block:perfops-archive
  - table: public.user_activities
    modulus: 32
"""


def utc(year: int, month_: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month_, day, hour, minute, tzinfo=UTC)


def month(year: int, month_: int, name: str | None = None, rows: int = 0) -> ExistingPartition:
    lower = utc(year, month_, 1)
    upper = add_intervals(lower, "month", 1)
    return ExistingPartition(
        name=name or partition_name("audit_logs", lower, "month", "UTC"),
        lower=lower,
        upper=upper,
        rows_estimate=rows,
    )


DEFAULT = ExistingPartition(name="audit_logs_default", is_default=True)


def policy(**overrides: object) -> PartitionPolicy:
    fields: dict[str, object] = {"table": "public.audit_logs", "interval": "month"}
    fields.update(overrides)
    return PartitionPolicy.model_validate(fields)


# --------------------------------------------------------------------------- policies


def test_seed_file_loads_both_kinds() -> None:
    audit, activities = load_policies(SEED)
    assert isinstance(audit, PartitionPolicy)
    assert (audit.table_name, audit.interval, audit.premake) == ("audit_logs", "month", 3)
    assert audit.retention_span == (12, "month")
    assert audit.archive_block == "perfops-archive"
    assert audit.archive_folder is None
    assert isinstance(activities, HashPolicy)
    assert activities.modulus == 32


def test_defaults_are_conservative() -> None:
    p = policy()
    assert (p.premake, p.expired_action, p.timezone, p.max_created_per_run) == (
        3,
        "archive_then_drop",
        "UTC",
        24,
    )
    assert p.retention is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"retention": "2 weeks"},
            "retention '2 weeks' is shorter than one interval ('month')",
        ),
        ({"retention": "30 days"}, "retention '30 days' is shorter than one interval ('month')"),
        ({"interval": "day", "retention": "12 hours"}, "shorter than one interval ('day')"),
        ({"premake": -1}, "premake\n  Input should be greater than or equal to 0"),
        ({"interval": "fortnight"}, "Input should be 'hour', 'day', 'week', 'month' or 'year'"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"retention": "a year"}, "retention 'a year' is not '<n> <unit>'"),
        ({"retention": "0 months"}, "with n >= 1"),
        ({"retention": "12 moons"}, "unit one of hour(s), day(s)"),
        ({"table": "audit_logs"}, "must be schema-qualified"),
        ({"retention": "12 months"}, "'archive_then_drop' needs archive"),
        ({"archive": "s3-block:Bad Name"}, "an S3Bucket block name is lower case"),
        ({"max_created_per_run": 0}, "greater than or equal to 1"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_policies_are_rejected_with_a_message(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        policy(**overrides)
    assert message in str(info.value)


def test_retention_spelled_several_ways_is_accepted() -> None:
    assert policy(retention="1 Year", expired_action="drop").retention_span == (1, "year")
    assert policy(retention="5 weeks", expired_action="detach_only").retention_span == (5, "week")
    assert policy(interval="week", retention="7 days", archive="/srv/archive").archive_folder == (
        "/srv/archive"
    )


def test_load_errors_name_the_table_and_the_field() -> None:
    bad = "- table: public.audit_logs\n  interval: month\n  premake: -2\n"
    with pytest.raises(PolicyError, match=r"policy 1 \(public.audit_logs\): premake: Input"):
        load_policies(bad)
    both = "- table: public.x\n  interval: day\n  modulus: 4\n"
    with pytest.raises(PolicyError, match=r"policy 1 \(public.x\): give `interval`"):
        load_policies(both)
    hashed = "- {table: public.y, modulus: 1}\n"
    with pytest.raises(PolicyError, match=r"policy 1 \(public.y\): modulus: Input should be"):
        load_policies(hashed)
    dup = "- {table: public.z, interval: day}\n- {table: public.z, interval: week}\n"
    with pytest.raises(PolicyError, match=r"public\.z has more than one policy"):
        load_policies(dup)
    # one table spelled two ways (as SQL reads them both) is one table with two policies
    spelled = '- {table: public.z, interval: day}\n- {table: \'"public"."Z"\', interval: day}\n'
    assert len(load_policies(spelled)) == 2  # "Z" keeps its capital: another table
    twice = '- {table: public.z, interval: day}\n- {table: \'"public"."z"\', interval: week}\n'
    with pytest.raises(
        PolicyError,
        match=r'^policy 2 \("public"\."z"\): table "public"\."z" has more than one policy '
        r"\(also policy 1, public\.z\): keep one$",
    ):
        load_policies(twice)
    with pytest.raises(PolicyError, match="must be a list"):
        load_policies("table: public.audit_logs")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policies("- [unclosed")
    assert load_policies("") == []


# --------------------------------------------------------------------------- alignment


def test_day_across_berlin_spring_forward_is_23_hours() -> None:
    noon = datetime(2026, 3, 29, 12, tzinfo=BERLIN)  # clocks went 02:00 -> 03:00 this morning
    start = floor_to_interval(noon, "day", "Europe/Berlin")
    assert start == utc(2026, 3, 28, 23)  # local midnight, still CET (+01:00)
    end = add_intervals(start, "day", 1, "Europe/Berlin")
    assert end == utc(2026, 3, 29, 22)  # next local midnight, CEST (+02:00)
    assert end - start == timedelta(hours=23)
    assert add_intervals(end, "day", -1, "Europe/Berlin") == start


def test_month_across_berlin_fall_back_keeps_local_midnight() -> None:
    start = floor_to_interval(utc(2026, 10, 20, 12), "month", "Europe/Berlin")
    assert start == utc(2026, 9, 30, 22)  # 2026-10-01 00:00 +02:00
    end = add_intervals(start, "month", 1, "Europe/Berlin")
    assert end == utc(2026, 10, 31, 23)  # 2026-11-01 00:00 +01:00
    assert end.astimezone(BERLIN).hour == 0
    # Midnight between the two local dates belongs to the new month.
    assert floor_to_interval(utc(2026, 10, 31, 23), "month", "Europe/Berlin") == end
    assert floor_to_interval(utc(2026, 10, 31, 22, 59), "month", "Europe/Berlin") == start


def test_week_starts_monday_and_year_and_hour_align() -> None:
    saturday = utc(2026, 12, 5, 13, 45)
    assert floor_to_interval(saturday, "week") == utc(2026, 11, 30)
    assert floor_to_interval(saturday, "year") == utc(2026, 1, 1)
    assert floor_to_interval(saturday, "hour") == utc(2026, 12, 5, 13)
    assert add_intervals(utc(2026, 1, 31), "month", 1) == utc(2026, 2, 28)
    assert add_intervals(utc(2026, 12, 1), "month", 2) == utc(2027, 2, 1)
    assert add_intervals(utc(2026, 1, 1), "year", -1) == utc(2025, 1, 1)


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        floor_to_interval(datetime(2026, 1, 1), "day")


# --------------------------------------------------------------------------- names


def test_names_follow_the_convention() -> None:
    saturday = utc(2026, 12, 5, 13)
    assert partition_name("audit_logs", utc(2026, 12, 1), "month") == "audit_logs_p2026_12"
    assert partition_name("audit_logs", saturday, "day") == "audit_logs_p2026_12_05"
    assert partition_name("audit_logs", saturday, "week") == "audit_logs_p2026w49"
    assert partition_name("audit_logs", saturday, "hour") == "audit_logs_p2026_12_05_13"
    assert partition_name("audit_logs", saturday, "year") == "audit_logs_p2026"
    # ISO week year: Monday 2026-12-28 starts week 53 of 2026.
    assert partition_name("t", utc(2026, 12, 28), "week") == "t_p2026w53"
    # Names use local time in the policy's zone.
    start = floor_to_interval(utc(2026, 10, 20), "month", "Europe/Berlin")
    assert partition_name("t", start, "month", "Europe/Berlin") == "t_p2026_10"


def test_repeated_dst_hour_gets_its_own_name() -> None:
    first = datetime(2026, 10, 25, 0, tzinfo=UTC)  # 02:00 CEST
    second = add_intervals(first, "hour", 1)  # 02:00 CET again
    assert partition_name("t", first, "hour", "Europe/Berlin") == "t_p2026_10_25_02"
    assert partition_name("t", second, "hour", "Europe/Berlin") == "t_p2026_10_25_02b"


def test_long_names_fit_63_bytes_and_stay_distinct() -> None:
    long_a = "a" * 70 + "_events"
    long_b = "a" * 70 + "_others"
    name_a = partition_name(long_a, utc(2026, 12, 1), "month")
    name_b = partition_name(long_b, utc(2026, 12, 1), "month")
    assert len(name_a.encode()) <= 63
    assert name_a.endswith("_p2026_12")
    assert name_a != name_b
    assert partition_name(long_a, utc(2026, 12, 1), "month") == name_a  # deterministic


# --------------------------------------------------------------------------- creating


def test_empty_table_gets_the_current_month_and_three_ahead() -> None:
    plan = plan_rotation(policy(), NOW, [DEFAULT], [])
    assert [p.name for p in plan.create] == [
        "audit_logs_p2026_11",
        "audit_logs_p2026_12",
        "audit_logs_p2027_01",
        "audit_logs_p2027_02",
    ]
    assert (plan.create[0].lower, plan.create[0].upper) == (utc(2026, 11, 1), utc(2026, 12, 1))
    assert plan.create[0].reason == "current month 2026-11: no child covers it"
    assert plan.create[3].reason == "premake 3 of 3: month 2027-02 is not covered"
    assert [(h.kind, h.detail) for h in plan.health] == [
        (
            "premade_short",
            "0 of 3 months after 2026-11 have a partition ready; this run creates 3",
        )
    ]
    assert plan.expire == plan.gaps == plan.rescue == []
    assert plan.problems == []


def test_only_missing_partitions_are_created() -> None:
    existing = [DEFAULT, month(2026, 11), month(2026, 12)]
    plan = plan_rotation(policy(), NOW, existing, [])
    assert [p.name for p in plan.create] == ["audit_logs_p2027_01", "audit_logs_p2027_02"]
    assert plan.health[0].detail == (
        "1 of 3 months after 2026-11 have a partition ready; this run creates 2"
    )


def test_nothing_to_do_when_premade_partitions_are_ready() -> None:
    existing = [month(2026, m) for m in (11, 12)] + [month(2027, 1), month(2027, 2)]
    plan = plan_rotation(policy(), NOW, existing, [])
    assert plan.create == plan.health == plan.problems == []
    assert not plan.changes


def test_berlin_monthly_bounds_are_local_midnights() -> None:
    p = policy(timezone="Europe/Berlin", premake=1)
    plan = plan_rotation(p, utc(2026, 10, 20), [], [])
    assert [(c.name, c.lower, c.upper) for c in plan.create] == [
        ("audit_logs_p2026_10", utc(2026, 9, 30, 22), utc(2026, 10, 31, 23)),
        ("audit_logs_p2026_11", utc(2026, 10, 31, 23), utc(2026, 11, 30, 23)),
    ]


def test_cap_defers_the_rest_with_a_reason() -> None:
    p = PartitionPolicy(table="public.events", interval="hour", premake=48, max_created_per_run=5)
    plan = plan_rotation(p, NOW, [], [])
    assert [c.name for c in plan.create] == [
        "events_p2026_11_27_07",
        "events_p2026_11_27_08",
        "events_p2026_11_27_09",
        "events_p2026_11_27_10",
        "events_p2026_11_27_11",
    ]
    assert len(plan.deferred) == 44
    assert plan.deferred[0].name == "events_p2026_11_27_12"
    assert plan.deferred[0].reason == (
        "premake 5 of 48: hour 2026-11-27 12:00 is not covered; over max_created_per_run=5, "
        "a later run creates it"
    )


# --------------------------------------------------------------------------- expiring


def _two_years() -> list[ExistingPartition]:
    """24 monthly children, 2024-11 .. 2026-10."""
    start = utc(2024, 11, 1)
    return [
        ExistingPartition(
            name=partition_name("audit_logs", lower, "month"),
            lower=lower,
            upper=add_intervals(lower, "month", 1),
        )
        for lower in (add_intervals(start, "month", i) for i in range(24))
    ]


def test_twelve_months_retention_expires_exactly_twelve() -> None:
    p = policy(retention="12 months", archive="s3-block:perfops-archive")
    plan = plan_rotation(p, utc(2026, 11, 15), [DEFAULT, *_two_years()], [])
    assert plan.retention_cutoff == utc(2025, 11, 1)
    assert [e.name for e in plan.expire] == [
        f"audit_logs_p{y}_{m:02d}"
        for y, m in [(2024, 11), (2024, 12)] + [(2025, m) for m in range(1, 11)]
    ]
    assert {e.action for e in plan.expire} == {"archive_then_drop"}
    assert plan.expire[-1].reason == (
        "ends 2025-11-01T00:00:00+00:00 <= cutoff 2025-11-01T00:00:00+00:00 "
        "(2026-11 minus 12 months): detach, archive to s3-block:perfops-archive, verify the "
        "checksum and row count, then drop"
    )
    assert "audit_logs_default" not in [e.name for e in plan.expire]
    assert plan.kept == []
    # The current month and three ahead are still made.
    assert [c.name for c in plan.create] == [
        "audit_logs_p2026_11",
        "audit_logs_p2026_12",
        "audit_logs_p2027_01",
        "audit_logs_p2027_02",
    ]


def test_detach_only_and_drop_say_so() -> None:
    children = _two_years()
    detach = plan_rotation(
        policy(retention="12 months", expired_action="detach_only"), NOW, children, []
    )
    assert detach.expire[0].reason.endswith("detach and keep it as a standalone table")
    drop = plan_rotation(policy(retention="1 year", expired_action="drop"), NOW, children, [])
    assert drop.expire[0].action == "drop"
    assert drop.expire[0].reason.endswith("detach and drop (no archive)")


def test_never_drops_the_last_child() -> None:
    """The children a run left after creating its partitions (`after_changes`): when none of
    them was made (they all failed), the newest expired child is the last one and stays."""
    p = policy(retention="1 month", expired_action="drop")
    plan = plan_rotation(p, NOW, [DEFAULT, month(2020, 1), month(2020, 2)], [], after_changes=True)
    assert [e.name for e in plan.expire] == ["audit_logs_p2020_01"]
    assert [k.name for k in plan.kept] == ["audit_logs_p2020_02"]
    assert plan.kept[0].reason == (
        "expired (ends 2020-03-01T00:00:00+00:00 <= cutoff 2026-10-01T00:00:00+00:00) but it "
        "is the last child: never drops the last child"
    )


def test_an_expired_child_is_not_the_last_when_the_run_creates_newer_ones_first() -> None:
    """The run creates the current month and three ahead before anything expires: the newest
    expired child was kept as "the last child" although it no longer was once they existed."""
    p = policy(retention="1 month", expired_action="drop")
    plan = plan_rotation(p, NOW, [DEFAULT, month(2020, 1), month(2020, 2)], [])
    assert plan.create[0].name == "audit_logs_p2026_11"
    assert [e.name for e in plan.expire] == ["audit_logs_p2020_01", "audit_logs_p2020_02"]
    assert plan.kept == []


def test_the_last_child_stays_when_nothing_newer_can_be_made() -> None:
    """premake 0, and the current month's name is taken by an old child: nothing is created,
    so the newest expired child is the last one."""
    p = policy(retention="1 month", expired_action="drop", premake=0)
    taken = month(2020, 2, name="audit_logs_p2026_11")
    plan = plan_rotation(p, NOW, [DEFAULT, month(2020, 1), taken], [])
    assert plan.create == [] and "is taken by a child with other bounds" in plan.problems[0]
    assert [e.name for e in plan.expire] == ["audit_logs_p2020_01"]
    assert [k.name for k in plan.kept] == ["audit_logs_p2026_11"]


def test_after_changes_the_findings_say_what_is_left_for_a_later_run() -> None:
    """The state an applied run leaves: still short of premade months (two of three failed to
    be created) and rows still waiting in the default partition."""
    existing = [DEFAULT, month(2026, 11), month(2026, 12)]
    waiting = [DefaultRows(bucket_start=utc(2027, 1, 1), rows=5)]
    found = plan_rotation(policy(), NOW, existing, waiting)
    left = plan_rotation(policy(), NOW, existing, waiting, after_changes=True)
    assert [(h.kind, h.detail) for h in found.health] == [
        ("premade_short", "1 of 3 months after 2026-11 have a partition ready; this run creates 2"),
        (
            "default_rows",
            # the plan as found (a dry run's report): nothing has moved yet
            "5 rows in the default partition belong to month 2027-01: this run moves them to "
            "audit_logs_p2027_01",
        ),
    ]
    assert [(h.kind, h.detail) for h in left.health] == [
        (
            "premade_short",
            "1 of 3 months after 2026-11 have a partition ready after this run; the next run "
            "creates 2",
        ),
        (
            "default_rows",
            "5 rows in the default partition belong to month 2027-01: the next run moves them "
            "to audit_logs_p2027_01",
        ),
    ]


# --------------------------------------------------------------------------- adopting


def test_children_with_other_names_are_adopted_by_their_bounds() -> None:
    existing = [
        month(2025, 9, name="audit_logs_sep2025"),
        month(2026, 11, name="audit_nov"),
        month(2026, 12, name="audit_logs_2026_december"),
    ]
    p = policy(retention="12 months", expired_action="detach_only")
    plan = plan_rotation(p, NOW, existing, [])
    assert plan.problems == []
    assert [c.name for c in plan.create] == ["audit_logs_p2027_01", "audit_logs_p2027_02"]
    assert [e.name for e in plan.expire] == ["audit_logs_sep2025"]
    assert plan.gaps[0].lower == utc(2025, 10, 1)


def test_misaligned_child_is_a_problem_and_left_alone() -> None:
    odd = ExistingPartition(name="audit_logs_mid", lower=utc(2026, 11, 15), upper=utc(2026, 12, 15))
    p = policy(retention="1 month", expired_action="drop")
    plan = plan_rotation(p, NOW, [DEFAULT, month(2020, 1), odd], [])
    assert plan.problems == [
        "cannot adopt: child audit_logs_mid has bounds [2026-11-15T00:00:00+00:00, "
        "2026-12-15T00:00:00+00:00) not aligned to month in UTC; left alone",
        "cannot create audit_logs_p2026_11 for 2026-11: it would overlap child audit_logs_mid "
        "[2026-11-15T00:00:00+00:00, 2026-12-15T00:00:00+00:00)",
        "cannot create audit_logs_p2026_12 for 2026-12: it would overlap child audit_logs_mid "
        "[2026-11-15T00:00:00+00:00, 2026-12-15T00:00:00+00:00)",
    ]
    assert [c.name for c in plan.create] == ["audit_logs_p2027_01", "audit_logs_p2027_02"]
    # The old aligned child may expire: the misaligned one remains, so it is not the last.
    assert [e.name for e in plan.expire] == ["audit_logs_p2020_01"]


def test_utc_children_are_misaligned_for_a_berlin_policy() -> None:
    plan = plan_rotation(policy(timezone="Europe/Berlin"), NOW, [month(2026, 11)], [])
    assert plan.problems[0] == (
        "cannot adopt: child audit_logs_p2026_11 has bounds [2026-11-01T01:00:00+01:00, "
        "2026-12-01T01:00:00+01:00) not aligned to month in Europe/Berlin; left alone"
    )


def test_unbounded_child_and_overlaps_are_reported() -> None:
    tail = ExistingPartition(name="audit_logs_rest", lower=utc(2026, 12, 1), upper=None)
    dup = month(2026, 11, name="audit_logs_copy")
    plan = plan_rotation(policy(premake=0), NOW, [month(2026, 11), dup, tail], [])
    assert plan.problems[0].startswith("cannot adopt: child audit_logs_rest has bounds ")
    assert "MAXVALUE" in plan.problems[0]
    assert plan.problems[1] == (
        "overlapping ranges: child audit_logs_p2026_11 [2026-11-01T00:00:00+00:00, "
        "2026-12-01T00:00:00+00:00) overlaps audit_logs_copy [2026-11-01T00:00:00+00:00, "
        "2026-12-01T00:00:00+00:00)"
    )


def test_gaps_between_children_say_where_rows_go() -> None:
    existing = [month(2026, 8), month(2026, 10), month(2026, 11)]
    with_default = plan_rotation(policy(premake=0), NOW, [DEFAULT, *existing], [])
    assert [(g.lower, g.upper) for g in with_default.gaps] == [(utc(2026, 9, 1), utc(2026, 10, 1))]
    assert with_default.gaps[0].reason == (
        "no child covers [2026-09-01T00:00:00+00:00, 2026-10-01T00:00:00+00:00) between "
        "audit_logs_p2026_08 and audit_logs_p2026_10: rows in it go to the default partition "
        "audit_logs_default"
    )
    without = plan_rotation(policy(premake=0), NOW, existing, [])
    assert without.gaps[0].reason.endswith("inserts in it fail (no default partition)")


# --------------------------------------------------------------------------- default rows


def test_default_rows_are_rescued_or_flagged_as_far_future() -> None:
    p = policy(retention="12 months", expired_action="detach_only")
    existing = [DEFAULT, month(2026, 10), month(2026, 11)]
    rows = [
        DefaultRows(bucket_start=utc(2026, 12, 1), rows=40),  # premade partition about to exist
        DefaultRows(bucket_start=utc(2026, 10, 1), rows=5),  # existing child
        DefaultRows(bucket_start=utc(2026, 10, 1), rows=2),  # merged with the above
        DefaultRows(bucket_start=utc(2026, 6, 1), rows=9),  # no child yet: made for them
        DefaultRows(bucket_start=utc(2024, 1, 1), rows=3),  # past retention
        DefaultRows(bucket_start=utc(2031, 1, 1), rows=7),  # far future
    ]
    plan = plan_rotation(p, NOW, existing, rows)
    assert [(r.bucket_start, r.rows, r.into_partition_name) for r in plan.rescue] == [
        (utc(2026, 6, 1), 9, "audit_logs_p2026_06"),
        (utc(2026, 10, 1), 7, "audit_logs_p2026_10"),
        (utc(2026, 12, 1), 40, "audit_logs_p2026_12"),
    ]
    assert plan.rescue[1].reason == (
        "7 rows in the default partition belong to month 2026-10: move them into existing "
        "partition audit_logs_p2026_10"
    )
    assert plan.rescue[2].reason.endswith("move them into new partition audit_logs_p2026_12")
    assert [c.name for c in plan.create] == [
        "audit_logs_p2026_06",
        "audit_logs_p2026_12",
        "audit_logs_p2027_01",
        "audit_logs_p2027_02",
    ]
    assert plan.create[0].reason == "9 rows in the default partition belong to month 2026-06"
    kinds = [(h.kind, h.detail) for h in plan.health]
    assert kinds[0][0] == "premade_short"
    assert kinds[1] == (
        "default_rows",
        "3 rows in the default partition belong to month 2024-01: 2024-01 is past retention "
        "(ends at or before 2025-11-01T00:00:00+00:00): no partition is made for it; not moved",
    )
    assert kinds[-1] == (
        "far_future_rows",
        "7 rows in the default partition for month 2031-01, more than 12 months after 2026-11: "
        "not rescued (likely bad timestamps; check the writer's clock)",
    )
    assert utc(2031, 1, 1) not in [r.bucket_start for r in plan.rescue]
    assert [h.kind for h in plan.health].count("default_rows") == 4


def test_rescue_waits_when_its_partition_is_deferred() -> None:
    p = policy(premake=0, max_created_per_run=1)
    rows = [DefaultRows(bucket_start=utc(2026, 5, 1), rows=4)]
    plan = plan_rotation(p, NOW, [DEFAULT], rows)
    assert [c.name for c in plan.create] == ["audit_logs_p2026_11"]
    assert [d.name for d in plan.deferred] == ["audit_logs_p2026_05"]
    assert plan.rescue == []
    assert plan.health[-1].detail == (
        "4 rows in the default partition belong to month 2026-05: its partition waits for a "
        "later run (max_created_per_run); not moved yet"
    )


def test_far_future_limit_is_a_parameter() -> None:
    rows = [DefaultRows(bucket_start=utc(2027, 6, 1), rows=1)]
    near = plan_rotation(policy(), NOW, [DEFAULT], rows, max_future_intervals=12)
    assert [r.into_partition_name for r in near.rescue] == ["audit_logs_p2027_06"]
    far = plan_rotation(policy(), NOW, [DEFAULT], rows, max_future_intervals=3)
    assert far.rescue == []
    assert far.health[-1].kind == "far_future_rows"


# --------------------------------------------------------------------------- hash


def test_hash_plan_lists_missing_remainders() -> None:
    p = HashPolicy(table="public.user_activities", modulus=32)
    plan = plan_hash(p, [r for r in range(32) if r not in (3, 17)], 32)
    assert plan.missing == [3, 17]
    assert plan.names == ["user_activities_h03", "user_activities_h17"]
    assert plan.problems == []
    assert plan.reason == "30 of 32 partitions exist; create remainders 3, 17"
    empty = plan_hash(p, [], None)
    assert len(empty.missing) == 32
    assert empty.names[-1] == "user_activities_h31"
    assert plan_hash(p, list(range(32)), 32).reason == "all 32 partitions exist"


def test_hash_plan_refuses_a_different_modulus() -> None:
    p = HashPolicy(table="public.user_activities", modulus=32)
    plan = plan_hash(p, list(range(16)), 16)
    assert plan.missing == plan.names == []
    assert plan.problems == [
        "cannot plan public.user_activities: its partitions use modulus 16, the policy says 32; "
        "changing the modulus needs a rebuild (not done here)"
    ]


def test_hash_plan_reports_odd_remainders() -> None:
    p = HashPolicy(table="public.t", modulus=4)
    plan = plan_hash(p, [0, 0, 1, 9], 4)
    assert plan.missing == [2, 3]
    assert plan.problems == [
        "remainder 0 appears more than once",
        "remainder 9 is outside 0..3 for modulus 4",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("public.audit_logs", ("public", "audit_logs")),
        ("Public.Audit_Logs", ("public", "audit_logs")),  # unquoted folds, as in SQL
        ('"My Schema"."Audit Logs"', ("My Schema", "Audit Logs")),
        ('app."x""; DROP TABLE y; --"', ("app", 'x"; DROP TABLE y; --')),
        ('"a.b"."c.d"', ("a.b", "c.d")),
        (' public."t" ', ("public", "t")),
    ],
)
def test_split_table_reads_names_as_postgresql_does(text: str, expected: tuple[str, str]) -> None:
    assert split_table(text) == expected
    policy = PartitionPolicy(table=text, interval="month")
    assert (policy.schema_name, policy.table_name) == expected


@pytest.mark.parametrize(
    "text",
    ["audit_logs", "public.a-b", 'public."unclosed', 'public.""', "a.b.c", "public." + "x" * 64],
)
def test_split_table_refuses_what_is_not_one_qualified_name(text: str) -> None:
    with pytest.raises(ValueError, match=r"schema-qualified|at most 63 bytes"):
        split_table(text)
    with pytest.raises(ValidationError):
        PartitionPolicy(table=text, interval="month")
