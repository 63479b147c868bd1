"""The partition writer tasks on the real PostgreSQL and a folder store: Parquet archives keep
every type and NULL apart from '', restore round-trips exactly (as a table and reattached), a
tampered archive is refused, a drop refuses a count mismatch and a table it did not detach, the
rescue limit, and the advisory lock held by another run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.filesystems import LocalFileSystem
from psycopg import sql

from blocks import PostgresTarget
from decisions.partition_rotation import Expiring, ToDrop
from decisions.partitioning import PlannedPartition
from perfops.errors import ChecksumMismatch, ConfigurationError, LockBusy
from tasks.partition_archives import (
    ArchiveSource,
    Manifest,
    _as_py,
    archive_keys,
    archive_partition,
    dump_table_to_parquet,
    fetch_archive,
    load_archive,
    parse_archive_source,
    spool,
    verify_archive,
)
from tasks.postgres.partition_changes import (
    create_partitions,
    detach_partitions,
    drop_detached_tables,
    expired_comment,
    fetch_detached,
    lock_name,
)
from tasks.postgres.server import advisory_lock

COLUMNS = (
    "id bigint not null, at timestamptz not null, local_at timestamp, day date, small smallint, "
    "n integer, r real, d double precision, ok boolean, amount numeric(20,6), note text, "
    "tag varchar(20), doc jsonb, uid uuid, tags text[]"
)
ROWS = """
    (1, '2025-09-01 00:00:00.123456+00', '2025-09-01 02:00', '2025-09-01', 1, 10, 1.5, 2.25, true,
     12345678901234.123456, 'plain', 'a', '{"k": [1, "two", null]}',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{x,"y z"}'),
    (2, '2025-09-30 23:59:59.999999+00', null, null, null, null, null, null, false, null, '',
     null, null, null, null),
    (3, '2025-09-15 12:00:00+00', '2025-09-15 12:00', '2025-09-15', -32768, -2147483648,
     'NaN', '-Infinity', null, -0.000001, e'line1\\nline2,"quoted"\\ttab', '', '"str"', null, '{}')
"""


@pytest.fixture()
def schema(pg_dsn: str) -> Iterator[str]:
    name = f"arch_{uuid.uuid4().hex[:8]}"
    s = sql.Identifier(name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(s))
        conn.execute(
            sql.SQL("create table {}.logs ({}) partition by range (at)").format(s, sql.SQL(COLUMNS))
        )
        conn.execute(
            sql.SQL(
                "create table {}.logs_p2025_09 partition of {}.logs "
                "for values from ('2025-09-01 00:00+00') to ('2025-10-01 00:00+00')"
            ).format(s, s)
        )
        conn.execute(
            sql.SQL("create table {}.logs_default partition of {}.logs default").format(s, s)
        )
        conn.execute(
            sql.Composed([sql.SQL("insert into {}.logs values ").format(s), sql.SQL(ROWS)])
        )
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema {} cascade").format(s))


def rows_of(dsn: str, schema: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            # As text: exact, and NaN equals NaN.
            sql.SQL("select t::text from {} t order by id").format(sql.Identifier(schema, table))
        ).fetchall()


def detach(target: PostgresTarget, schema: str, lower: datetime | None = None) -> None:
    upper = datetime(2025, 10, 1, tzinfo=UTC) if lower else None
    [done] = detach_partitions.fn(
        target, schema, "logs", [Expiring(name="logs_p2025_09", lower=lower, upper=upper)]
    )
    assert done.error is None, done.error


def archive(target: PostgresTarget, schema: str, store: LocalFileSystem, tmp: Path) -> Manifest:
    detach(target, schema, datetime(2025, 9, 1, tzinfo=UTC))
    record = archive_partition.fn(
        target,
        store,
        ArchiveSource(
            schema_name=schema,
            parent="logs",
            partition="logs_p2025_09",
            key_column="at",
            lower=datetime(2025, 9, 1, tzinfo=UTC),
            upper=datetime(2025, 10, 1, tzinfo=UTC),
        ),
        spool_bytes=1 << 20,
        spool_dir=str(tmp),
    )
    manifest = record.manifest
    assert manifest.rows == 3
    assert manifest.object_key == archive_keys(schema, "logs", "logs_p2025_09")[0]
    assert record.uri == str(tmp / "archive" / manifest.object_key)
    return manifest


def test_parquet_keeps_types_and_null_apart_from_empty(
    pg_dsn: str, pg_target: PostgresTarget, schema: str, tmp_path: Path
) -> None:
    with (tmp_path / "x.parquet").open("w+b") as sink:
        sink.write(b"left over from an earlier attempt")  # a retried dump starts over
        dump = dump_table_to_parquet(pg_target, schema, "logs_p2025_09", "at", sink, 1000)
    assert dump.rows == 3
    assert dump.bytes == (tmp_path / "x.parquet").stat().st_size
    assert dump.min_key == "2025-09-01T00:00:00.123456+00:00"
    assert dump.max_key == "2025-09-30T23:59:59.999999+00:00"
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.schema.field("at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("local_at").type == pa.timestamp("us")
    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("small").type == pa.int16()
    assert table.schema.field("ok").type == pa.bool_()
    assert table.schema.field("amount").type == pa.string()  # numeric stays exact
    assert table.schema.field("amount").metadata == {b"pg_type": b"numeric(20,6)"}
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert by_id[2]["note"] == "" and by_id[2]["tag"] is None and by_id[3]["tag"] == ""
    assert by_id[1]["amount"] == "12345678901234.123456"
    assert by_id[3]["note"] == 'line1\nline2,"quoted"\ttab'
    assert by_id[1]["doc"] == '{"k": [1, "two", null]}'
    assert by_id[1]["tags"] == '{x,"y z"}'


def test_archive_restores_exactly_as_table_and_reattached(
    pg_dsn: str, pg_target: PostgresTarget, schema: str, tmp_path: Path
) -> None:
    before = rows_of(pg_dsn, schema, "logs_p2025_09")
    store = LocalFileSystem(basepath=str(tmp_path / "archive"))
    manifest = archive(pg_target, schema, store, tmp_path)
    record = verify_archive.fn(store, schema, "logs", "logs_p2025_09")
    assert record is not None and record.manifest.rows == 3
    [dropped] = drop_detached_tables.fn(
        pg_target, schema, "logs", [ToDrop(name="logs_p2025_09", expected_rows=3)]
    )
    assert (dropped.rows, dropped.error) == (3, None)

    root, key = parse_archive_source(str(tmp_path / "archive" / manifest.object_key))
    fetched = fetch_archive.fn(LocalFileSystem(basepath=root), key, str(tmp_path / "r.parquet"))
    assert fetched.sha256 == manifest.sha256
    loaded = load_archive.fn(pg_target, fetched, str(tmp_path / "r.parquet"), schema, "restored")
    assert loaded == 3
    assert rows_of(pg_dsn, schema, "restored") == before

    load_archive.fn(pg_target, fetched, str(tmp_path / "r.parquet"), schema, "logs_p2025_09", True)
    with psycopg.connect(pg_dsn) as conn:
        n = conn.execute(
            sql.SQL("select count(*) from {}.logs where at < '2025-10-01'").format(
                sql.Identifier(schema)
            )
        ).fetchone()
    assert n == (3,)
    # The way out it names is an option `perfops partitions restore` has (--table, not --into).
    with pytest.raises(ConfigurationError, match=r"already exists: .*\(--table SCHEMA\.NAME\)"):
        load_archive.fn(pg_target, fetched, str(tmp_path / "r.parquet"), schema, "restored")


def test_tampered_archive_is_refused(
    pg_target: PostgresTarget, schema: str, tmp_path: Path
) -> None:
    store = LocalFileSystem(basepath=str(tmp_path / "archive"))
    manifest = archive(pg_target, schema, store, tmp_path)
    path = tmp_path / "archive" / manifest.object_key
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ChecksumMismatch):
        verify_archive.fn(store, schema, "logs", "logs_p2025_09")
    with pytest.raises(ChecksumMismatch):
        fetch_archive.fn(store, manifest.object_key, str(tmp_path / "r.parquet"))


def test_drop_refuses_count_mismatch_and_tables_it_did_not_detach(
    pg_dsn: str, pg_target: PostgresTarget, schema: str
) -> None:
    detach(pg_target, schema)
    [found] = fetch_detached.fn(pg_target, schema, "logs")
    assert found.name == "logs_p2025_09"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # marked, but by another parent's run
        conn.execute(
            sql.SQL("create table {} (id int)").format(sql.Identifier(schema, "other_p2025_01"))
        )
        conn.execute(
            sql.SQL("comment on table {} is {}").format(
                sql.Identifier(schema, "other_p2025_01"),
                sql.Literal(expired_comment(schema, "other", None, None)),
            )
        )
    mismatch, not_ours, elsewhere, gone = drop_detached_tables.fn(
        pg_target,
        schema,
        "logs",
        [
            ToDrop(name="logs_p2025_09", expected_rows=2),
            ToDrop(name="logs_default"),
            ToDrop(name="other_p2025_01"),
            ToDrop(name="logs_p1999_01"),
        ],
    )
    assert mismatch.rows is None
    assert "holds 3 rows but its verified archive has 2" in (mismatch.error or "")
    assert "not a table detached by a perfops rotation" in (not_ours.error or "")
    assert "not a table detached by a perfops rotation" in (elsewhere.error or "")
    assert "does not exist" in (gone.error or "")
    assert len(rows_of(pg_dsn, schema, "logs_p2025_09")) == 3
    [dropped] = drop_detached_tables.fn(
        pg_target, schema, "logs", [ToDrop(name="logs_p2025_09", expected_rows=3)]
    )
    assert dropped.rows == 3


def test_rescue_limit_and_lock_held_by_another_run(
    pg_dsn: str, pg_target: PostgresTarget, schema: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "insert into {}.logs (id, at) select g, '2025-10-05+00' from "
                "generate_series(100, 109) g"
            ).format(sql.Identifier(schema))
        )
    october = PlannedPartition(
        name="logs_p2025_10",
        lower=datetime(2025, 10, 1, tzinfo=UTC),
        upper=datetime(2025, 11, 1, tzinfo=UTC),
        reason="test",
    )
    args = (pg_target, schema, "logs", "at", "timestamp with time zone", "UTC", [october])
    with (
        psycopg.connect(pg_dsn, autocommit=True) as other,
        advisory_lock(other, lock_name(schema, "logs")),
        pytest.raises(LockBusy),
    ):
        create_partitions.fn(*args)
    [skipped] = create_partitions.fn(*args, rescue_max_rows=5)
    assert skipped.status == "skipped" and "more than rescue_max_rows=5" in skipped.detail
    [created] = create_partitions.fn(*args)
    assert (created.status, created.moved_rows) == ("created", 10)
    assert len(rows_of(pg_dsn, schema, "logs_p2025_10")) == 10
    assert len(rows_of(pg_dsn, schema, "logs_default")) == 0
    [again] = create_partitions.fn(*args)
    assert again.status == "existed"


def test_archive_larger_than_memory_spills_to_a_temporary_file(
    pg_target: PostgresTarget, schema: str, tmp_path: Path
) -> None:
    detach(pg_target, schema)
    body = spool(64, str(tmp_path))  # a few rows' Parquet is well over 64 bytes
    dump = dump_table_to_parquet(pg_target, schema, "logs_p2025_09", "at", body)
    assert body._rolled  # type: ignore[attr-defined]
    assert dump.bytes > 64 and dump.rows == 3
    body.close()
    assert not list(tmp_path.glob("perfops-archive-*"))  # the spill file goes when closed


@pytest.mark.parametrize(
    ("value", "arrow_type"),
    [
        (datetime(2025, 9, 1, 0, 0, 0, 123456, tzinfo=UTC), pa.timestamp("us", tz="UTC")),
        (datetime(1969, 12, 31, 23, 59, 59, 999999), pa.timestamp("us")),
        (datetime(2024, 2, 29, 12, 30, 1, 5000, tzinfo=UTC), pa.timestamp("ms", tz="UTC")),
        (datetime(2024, 2, 29, 12, 30, 1), pa.timestamp("s")),
        (date(1900, 2, 28), pa.date32()),
        (None, pa.timestamp("us", tz="UTC")),
    ],
)
def test_key_scalars_convert_like_pyarrow_without_pandas(value: Any, arrow_type: Any) -> None:
    scalar = pa.scalar(value, type=arrow_type)
    assert _as_py(scalar) == value == scalar.as_py()


def test_one_partition_failing_to_detach_does_not_stop_the_others(
    pg_target: PostgresTarget, schema: str
) -> None:
    missing, present = detach_partitions.fn(
        pg_target,
        schema,
        "logs",
        [Expiring(name="logs_p1999_01"), Expiring(name="logs_p2025_09")],
    )
    assert missing.mode is None and "neither a partition of" in (missing.error or "")
    assert present.error is None and present.mode in ("plain", "concurrently")
    [found] = fetch_detached.fn(pg_target, schema, "logs")
    assert found.name == "logs_p2025_09"
    [again] = detach_partitions.fn(pg_target, schema, "logs", [Expiring(name="logs_p2025_09")])
    assert again.mode == "already detached"
