"""Reading partitioned tables for the planner, against the real PostgreSQL: the catalog, the
default partition's rows per bucket, hash remainders, and the errors for tables perfops cannot
rotate."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql

from blocks import PostgresTarget
from decisions.partitioning import HashPolicy, PartitionPolicy, plan_hash, plan_rotation
from perfops.errors import ConfigurationError
from tasks.postgres.partitions import (
    PartitionChild,
    fetch_default_rows,
    fetch_hash_children,
    fetch_partitioned_table,
    parse_hash_bound,
    parse_range_bound,
    qualified_name,
    to_existing,
)

SCHEMA = "perfops_partitions_test"
HOSTILE_SCHEMA = "Mixed Case Schema"
HOSTILE_TABLE = 'x"; DROP TABLE y; --'
NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


@pytest.fixture(scope="module")
def schema(pg_dsn: str) -> Iterator[str]:
    """Tables of every shape this module reads, in schemas of its own (dropped after)."""
    s = sql.Identifier(SCHEMA)
    h = sql.Identifier(HOSTILE_SCHEMA)
    statements = [
        sql.SQL("drop schema if exists {} cascade").format(s),  # left by an interrupted run
        sql.SQL("drop schema if exists {} cascade").format(h),
        sql.SQL("create schema {}").format(s),
        # Monthly by timestamptz: 4 children and a default holding rows of two months.
        sql.SQL(
            "create table {}.audit_logs (id bigint, created_at timestamptz not null) "
            "partition by range (created_at)"
        ).format(s),
        *[
            sql.SQL(
                "create table {}.{} partition of {}.audit_logs for values from ({}) to ({})"
            ).format(
                s,
                sql.Identifier(f"audit_logs_p2026_{m:02d}"),
                s,
                sql.Literal(f"2026-{m:02d}-01 00:00+00"),
                sql.Literal(f"2026-{m + 1:02d}-01 00:00+00"),
            )
            for m in (9, 10, 11)
        ],
        sql.SQL(
            "create table {}.audit_logs_p2026_12 partition of {}.audit_logs "
            "for values from ('2026-12-01 00:00+00') to ('2027-01-01 00:00+00')"
        ).format(s, s),
        sql.SQL("create table {}.audit_logs_default partition of {}.audit_logs default").format(
            s, s
        ),
        sql.SQL(
            "insert into {}.audit_logs values (1, '2026-08-01 00:00+00'), "
            "(2, '2026-08-15 10:00+00'), (3, '2026-08-31 23:59:59+00'), "
            "(4, '2027-01-01 00:00+00'), (5, '2027-01-31 23:59:59+00'), (6, 'infinity')"
        ).format(s),
        # Monthly by date, aligned in Europe/Berlin.
        sql.SQL(
            "create table {}.bookings (id bigint, day date not null) partition by range (day)"
        ).format(s),
        sql.SQL(
            "create table {}.bookings_p2026_10 partition of {}.bookings "
            "for values from ('2026-10-01') to ('2026-11-01')"
        ).format(s, s),
        sql.SQL(
            "create table {}.bookings_p2026_11 partition of {}.bookings "
            "for values from ('2026-11-01') to ('2026-12-01')"
        ).format(s, s),
        sql.SQL("create table {}.bookings_default partition of {}.bookings default").format(s, s),
        sql.SQL(
            "insert into {}.bookings values (1, '2027-01-01'), (2, '2027-01-31'), (3, '2026-12-31')"
        ).format(s),
        # An unbounded (MINVALUE) child.
        sql.SQL("create table {}.metrics (ts timestamptz not null) partition by range (ts)").format(
            s
        ),
        sql.SQL(
            "create table {}.metrics_old partition of {}.metrics "
            "for values from (minvalue) to ('2026-11-01 00:00+00')"
        ).format(s, s),
        sql.SQL(
            "create table {}.metrics_p2026_11 partition of {}.metrics "
            "for values from ('2026-11-01 00:00+00') to ('2026-12-01 00:00+00')"
        ).format(s, s),
        # Hash: 32 declared, 30 created (remainders 5 and 17 missing).
        sql.SQL("create table {}.users (id bigint not null) partition by hash (id)").format(s),
        *[
            sql.SQL(
                "create table {}.{} partition of {}.users "
                "for values with (modulus 32, remainder {})"
            ).format(s, sql.Identifier(f"users_h{r:02d}"), s, sql.Literal(r))
            for r in range(32)
            if r not in (5, 17)
        ],
        # What perfops refuses.
        sql.SQL("create table {}.plain (id bigint)").format(s),
        sql.SQL("create table {}.by_int (id bigint not null) partition by range (id)").format(s),
        sql.SQL(
            "create table {}.by_two (a timestamptz not null, b int not null) "
            "partition by range (a, b)"
        ).format(s),
        sql.SQL(
            "create table {}.by_expr (a timestamp not null) partition by range ((a::date))"
        ).format(s),
        sql.SQL("create table {}.by_list (kind text) partition by list (kind)").format(s),
        sql.SQL("create table {}.by_list_a partition of {}.by_list for values in ('a')").format(
            s, s
        ),
        # A hostile name in a mixed-case schema with spaces, and the table it names.
        sql.SQL("create schema {}").format(h),
        sql.SQL("create table {}.y (id int)").format(h),
        sql.SQL("create table {}.{} (ts timestamptz not null) partition by range (ts)").format(
            h, sql.Identifier(HOSTILE_TABLE)
        ),
        sql.SQL(
            "create table {}.{} partition of {}.{} "
            "for values from ('2026-11-01 00:00+00') to ('2026-12-01 00:00+00')"
        ).format(h, sql.Identifier(HOSTILE_TABLE + "_p2026_11"), h, sql.Identifier(HOSTILE_TABLE)),
        sql.SQL("create table {}.{} partition of {}.{} default").format(
            h, sql.Identifier(HOSTILE_TABLE + " default"), h, sql.Identifier(HOSTILE_TABLE)
        ),
        sql.SQL("insert into {}.{} values ('2027-02-03 04:05+00')").format(
            h, sql.Identifier(HOSTILE_TABLE)
        ),
        sql.SQL("analyze {}.audit_logs").format(s),
    ]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    yield SCHEMA
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(s))
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(h))


pytestmark = pytest.mark.usefixtures("prefect_harness")


# --------------------------------------------------------------------------- pure parsing


@pytest.mark.parametrize(
    ("bound", "key_type", "tz", "expected"),
    [
        (
            "FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')",
            "timestamp with time zone",
            "Europe/Berlin",  # offsets win: the zone only matters for wall-time keys
            (utc(2026, 11, 1), utc(2026, 12, 1)),
        ),
        (
            "FOR VALUES FROM ('2026-11-01 00:00:00.5+05:30') TO (MAXVALUE)",
            "timestamp with time zone",
            "UTC",
            (datetime(2026, 10, 31, 18, 30, 0, 500000, tzinfo=UTC), None),
        ),
        (
            "FOR VALUES FROM (MINVALUE) TO ('2026-11-01 00:00:00-03')",
            "timestamp with time zone",
            "UTC",
            (None, utc(2026, 11, 1, 3)),
        ),
        (
            "FOR VALUES FROM ('2026-10-01') TO ('2026-11-01')",
            "date",
            "Europe/Berlin",  # summer time, then winter time (DST ends 2026-10-25)
            (utc(2026, 9, 30, 22), utc(2026, 10, 31, 23)),
        ),
        (
            "FOR VALUES FROM ('2026-03-29 00:00:00') TO ('2026-03-30 00:00:00')",
            "timestamp without time zone",
            "Europe/Berlin",
            (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
        ),
        (
            "FOR VALUES FROM ('-infinity') TO ('infinity')",
            "timestamp with time zone",
            "UTC",
            (None, None),
        ),
    ],
)
def test_parse_range_bound_gives_aware_utc_bounds(
    bound: str, key_type: str, tz: str, expected: tuple[datetime | None, datetime | None]
) -> None:
    assert parse_range_bound(bound, key_type, tz) == expected


@pytest.mark.parametrize(
    ("bound", "key_type", "message"),
    [
        ("DEFAULT", "date", "is not a range bound"),
        ("FOR VALUES FROM ('2026-11-01') TO ('2026-12-01')", "timestamp with time zone", "offset"),
        ("FOR VALUES FROM ('0044-03-15 BC') TO ('2026-12-01')", "date", "not BC"),
        ("FOR VALUES FROM ('11-01-2026') TO ('2026-12-01')", "date", "expected an ISO"),
        ("FOR VALUES FROM (1) TO (10)", "integer", "expected an ISO"),
    ],
)
def test_parse_range_bound_refuses_what_it_cannot_read(
    bound: str, key_type: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_range_bound(bound, key_type, "UTC")


def test_parse_hash_bound() -> None:
    assert parse_hash_bound("FOR VALUES WITH (modulus 32, remainder 7)") == (32, 7)
    with pytest.raises(ValueError, match="not a hash bound"):
        parse_hash_bound("DEFAULT")


def test_to_existing_maps_children_and_the_default() -> None:
    def child(name: str, bound: str, rows: int = 10) -> PartitionChild:
        return PartitionChild(
            schema_name="public",
            name=name,
            bound=bound,
            is_default=bound == "DEFAULT",
            rows_estimate=rows,
            size_bytes=8192,
            is_partitioned=False,
            detach_pending=False,
        )

    existing = to_existing(
        [
            child("t_p2026_11", "FOR VALUES FROM ('2026-11-01') TO ('2026-12-01')"),
            child("t_default", "DEFAULT", rows=-1),
        ],
        "date",
        "UTC",
    )
    assert [(e.name, e.lower, e.upper, e.is_default, e.rows_estimate) for e in existing] == [
        ("t_p2026_11", utc(2026, 11, 1), utc(2026, 12, 1), False, 10),
        ("t_default", None, None, True, -1),
    ]


# --------------------------------------------------------------------------- the catalog


def test_monthly_table_plans_the_missing_months_and_rescues_default_rows(
    pg_target: PostgresTarget, schema: str
) -> None:
    table = fetch_partitioned_table(pg_target, f"{schema}.audit_logs")
    assert (table.schema_name, table.table_name, table.strategy) == (
        schema,
        "audit_logs",
        "range",
    )
    assert table.partition_key == "RANGE (created_at)"
    assert (table.key_column, table.key_type) == ("created_at", "timestamp with time zone")
    assert [c.name for c in table.children] == [
        "audit_logs_default",
        "audit_logs_p2026_09",
        "audit_logs_p2026_10",
        "audit_logs_p2026_11",
        "audit_logs_p2026_12",
    ]
    assert table.default is not None and table.default.name == "audit_logs_default"
    assert table.default.rows_estimate == 6  # analyzed in the fixture
    assert table.default.size_bytes > 0
    assert table.children[3].bound == (
        "FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')"
    )

    policy = PartitionPolicy(table=f"{schema}.audit_logs", interval="month", premake=3)
    existing = to_existing(table.children, table.key_type, policy.timezone)
    default_rows = fetch_default_rows(
        pg_target, f"{schema}.audit_logs", "created_at", "month", policy.timezone
    )
    # The infinity row cannot be bucketed: left out, not an error.
    assert [(d.bucket_start, d.rows) for d in default_rows] == [
        (utc(2026, 8, 1), 3),
        (utc(2027, 1, 1), 2),
    ]
    plan = plan_rotation(policy, NOW, existing, default_rows)
    assert plan.problems == [] and plan.gaps == []
    assert [(p.name, p.lower, p.upper) for p in plan.create] == [
        ("audit_logs_p2026_08", utc(2026, 8, 1), utc(2026, 9, 1)),
        ("audit_logs_p2027_01", utc(2027, 1, 1), utc(2027, 2, 1)),
        ("audit_logs_p2027_02", utc(2027, 2, 1), utc(2027, 3, 1)),
    ]
    assert [(r.bucket_start, r.rows, r.into_partition_name) for r in plan.rescue] == [
        (utc(2026, 8, 1), 3, "audit_logs_p2026_08"),
        (utc(2027, 1, 1), 2, "audit_logs_p2027_01"),
    ]


def test_default_rows_by_iso_week_start_on_monday(pg_target: PostgresTarget, schema: str) -> None:
    rows = fetch_default_rows(pg_target, f"{schema}.audit_logs", "created_at", "week", "UTC")
    # 2026-08-01 is a Saturday, 2027-01-01 a Friday: their weeks start on the Monday before.
    assert [(d.bucket_start, d.rows) for d in rows] == [
        (utc(2026, 7, 27), 1),
        (utc(2026, 8, 10), 1),
        (utc(2026, 8, 31), 1),
        (utc(2026, 12, 28), 1),
        (utc(2027, 1, 25), 1),
    ]


def test_date_keyed_table_in_berlin(pg_target: PostgresTarget, schema: str) -> None:
    tz = "Europe/Berlin"
    table = fetch_partitioned_table(pg_target, f"{schema}.bookings")
    assert table.key_type == "date"
    existing = to_existing(table.children, table.key_type, tz)
    bounds = {e.name: (e.lower, e.upper) for e in existing}
    assert bounds["bookings_p2026_10"] == (utc(2026, 9, 30, 22), utc(2026, 10, 31, 23))
    assert bounds["bookings_p2026_11"] == (utc(2026, 10, 31, 23), utc(2026, 11, 30, 23))
    rows = fetch_default_rows(pg_target, f"{schema}.bookings", "day", "month", tz)
    assert [(d.bucket_start, d.rows) for d in rows] == [
        (utc(2026, 11, 30, 23), 1),  # 2026-12 in Berlin
        (utc(2026, 12, 31, 23), 2),  # 2027-01 in Berlin
    ]
    policy = PartitionPolicy(table=f"{schema}.bookings", interval="month", timezone=tz, premake=2)
    plan = plan_rotation(policy, NOW, existing, rows)
    assert plan.problems == []
    assert [p.name for p in plan.create] == ["bookings_p2026_12", "bookings_p2027_01"]
    assert [(r.rows, r.into_partition_name) for r in plan.rescue] == [
        (1, "bookings_p2026_12"),
        (2, "bookings_p2027_01"),
    ]


def test_minvalue_child_is_read_as_unbounded_and_left_alone(
    pg_target: PostgresTarget, schema: str
) -> None:
    table = fetch_partitioned_table(pg_target, f"{schema}.metrics")
    assert table.default is None
    existing = to_existing(table.children, table.key_type, "UTC")
    assert [(e.name, e.lower, e.upper) for e in existing] == [
        ("metrics_old", None, utc(2026, 11, 1)),
        ("metrics_p2026_11", utc(2026, 11, 1), utc(2026, 12, 1)),
    ]
    assert fetch_default_rows(pg_target, f"{schema}.metrics", "ts", "month", "UTC") == []
    plan = plan_rotation(
        PartitionPolicy(table=f"{schema}.metrics", interval="month"), NOW, existing, []
    )
    assert len(plan.problems) == 1 and "metrics_old" in plan.problems[0]
    assert "MINVALUE" in plan.problems[0]


def test_hash_table_missing_two_remainders(pg_target: PostgresTarget, schema: str) -> None:
    modulus, remainders = fetch_hash_children(pg_target, f"{schema}.users")
    assert modulus == 32
    assert remainders == [r for r in range(32) if r not in (5, 17)]
    plan = plan_hash(HashPolicy(table=f"{schema}.users", modulus=32), remainders, modulus)
    assert plan.missing == [5, 17]
    assert plan.names == ["users_h05", "users_h17"]
    table = fetch_partitioned_table(pg_target, f"{schema}.users")
    assert table.strategy == "hash" and len(table.children) == 30


def test_list_partitioned_table_is_read_but_not_a_hash_table(
    pg_target: PostgresTarget, schema: str
) -> None:
    table = fetch_partitioned_table(pg_target, f"{schema}.by_list")
    assert (table.strategy, table.key_type, [c.bound for c in table.children]) == (
        "list",
        "text",
        ["FOR VALUES IN ('a')"],
    )
    with pytest.raises(ConfigurationError, match="is list-partitioned, not hash-partitioned"):
        fetch_hash_children(pg_target, f"{schema}.by_list")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "plain",
            r"perfops_partitions_test\.plain is not partitioned \(a plain table\): perfops only "
            "rotates declaratively partitioned tables",
        ),
        ("by_int", r"partitioned by a non-time column id \(bigint\)"),
        ("by_two", r"range-partitioned by 2 columns \(RANGE \(a, b\)\)"),
        ("by_expr", "partitioned by an expression"),
        ("no_such_table", "perfops_partitions_test.no_such_table does not exist"),
    ],
)
def test_tables_perfops_cannot_rotate_are_refused_with_a_reason(
    pg_target: PostgresTarget, schema: str, table: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        fetch_partitioned_table.fn(pg_target, f"{schema}.{table}")


def test_missing_schema_and_malformed_names_are_configuration_errors(
    pg_target: PostgresTarget, schema: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"no_schema\.t does not exist"):
        fetch_partitioned_table.fn(pg_target, "no_schema.t")
    with pytest.raises(ConfigurationError, match="is not a valid table name"):
        fetch_partitioned_table.fn(pg_target, HOSTILE_TABLE)
    with pytest.raises(ConfigurationError, match="is not a valid table name"):
        fetch_hash_children.fn(pg_target, HOSTILE_TABLE)
    with pytest.raises(ConfigurationError, match="is not partitioned"):
        fetch_hash_children.fn(pg_target, f"{schema}.plain")
    with pytest.raises(ConfigurationError, match="interval 'fortnight'"):
        fetch_default_rows.fn(pg_target, f"{schema}.audit_logs", "created_at", "fortnight", "UTC")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        fetch_default_rows.fn(pg_target, f"{schema}.audit_logs", "created_at", "month", "Mars/Base")


def test_hostile_names_are_identifiers_not_sql(
    pg_target: PostgresTarget, pg_dsn: str, schema: str
) -> None:
    name = qualified_name(HOSTILE_SCHEMA, HOSTILE_TABLE)
    assert name == '"Mixed Case Schema"."x""; DROP TABLE y; --"'
    table = fetch_partitioned_table(pg_target, name)
    assert (table.schema_name, table.table_name) == (HOSTILE_SCHEMA, HOSTILE_TABLE)
    assert sorted(c.name for c in table.children) == [
        HOSTILE_TABLE + " default",
        HOSTILE_TABLE + "_p2026_11",
    ]
    rows = fetch_default_rows(pg_target, name, "ts", "month", "UTC")
    assert [(d.bucket_start, d.rows) for d in rows] == [(utc(2027, 2, 1), 1)]
    with psycopg.connect(pg_dsn) as conn:
        still_there = conn.execute(
            "select to_regclass(%s) is not null", (qualified_name(HOSTILE_SCHEMA, "y"),)
        ).fetchone()
    assert still_there == (True,)
