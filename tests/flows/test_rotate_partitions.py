"""rotate_partitions on the real PostgreSQL and a real archive store (a folder, and moto's S3
server): the dry run, create ahead with default-partition rescue, detach/archive/verify/drop,
each crash point completed by the next run (rows in the database plus rows in archives equal the
rows before, by count and by a checksum of the ids), S3 down or the archive block missing (the
preflight fails: nothing detached, the run Failed), one failing table of several (Failed), a role
that does not own the table (nothing changed), hash children, bad input, and the record (artifact
and events).

Every test builds its own schema (dropped after) and plans for a fixed `now`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow.parquet as pq
import pytest
from prefect.filesystems import LocalFileSystem
from psycopg import sql
from pydantic import SecretStr

from blocks import PostgresTarget
from blocks.resolve import resolve_archive_store
from decisions.partition_rotation import Expiring, RotationReport, RotationSettings, Timeouts
from decisions.partitioning import HashPolicy, PartitionPolicy, PlannedPartition
from flows.rotate_partitions import rotate_partitions
from perfops.errors import ConfigurationError, report_of
from tasks.partition_archives import ArchiveSource, Manifest, archive_keys, archive_partition
from tasks.postgres.partition_changes import detach_partitions, expired_comment
from tests.records import artifact_rows, superuser_fix
from tests.servers import MotoServer

pytestmark = pytest.mark.usefixtures("prefect_harness")

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
ROWS_PER_MONTH = 50
# Two archive threads: the CLI tests and the demo run the default of one.
FAST = RotationSettings(lock_timeout_ms=1_000, statement_timeout_ms=30_000, archive_parallelism=2)


def months(start: tuple[int, int], count: int) -> list[tuple[int, int]]:
    y, m = start
    out = []
    for _ in range(count):
        out.append((y, m))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _next(y: int, m: int) -> tuple[int, int]:
    return (y + 1, 1) if m == 12 else (y, m + 1)


@pytest.fixture()
def schema(pg_dsn: str) -> Iterator[str]:
    name = f"rot_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(name)))


def make_audit_logs(
    dsn: str,
    schema: str,
    *,
    with_default: bool = True,
    default_rows: dict[tuple[int, int], int] | None = None,
) -> None:
    """audit_logs monthly 2025-09..2026-11 (15 children), ROWS_PER_MONTH rows each with a jsonb
    payload, an index on the parent, and optionally a default partition holding rows."""
    s = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create table {}.audit_logs (id bigint not null, created_at timestamptz not null, "
                "actor text, ok boolean, amount numeric(12,2), payload jsonb) "
                "partition by range (created_at)"
            ).format(s)
        )
        conn.execute(sql.SQL("create index on {}.audit_logs (actor)").format(s))
        for y, m in months((2025, 9), 15):
            ny, nm = _next(y, m)
            conn.execute(
                sql.SQL("create table {} partition of {} for values from ({}) to ({})").format(
                    sql.Identifier(schema, f"audit_logs_p{y}_{m:02d}"),
                    sql.Identifier(schema, "audit_logs"),
                    sql.Literal(f"{y}-{m:02d}-01 00:00+00"),
                    sql.Literal(f"{ny}-{nm:02d}-01 00:00+00"),
                )
            )
        if with_default:
            conn.execute(
                sql.SQL(
                    "create table {}.audit_logs_default partition of {}.audit_logs default"
                ).format(s, s)
            )
        next_id = 1
        for y, m in months((2025, 9), 15) + list((default_rows or {}).keys()):
            n = (default_rows or {}).get((y, m), ROWS_PER_MONTH)
            conn.execute(
                sql.SQL(
                    "insert into {}.audit_logs select g, {}::timestamptz + (g - {}) * interval "
                    "'1 minute', case when g % 7 = 0 then null when g % 5 = 0 then '' else "
                    "'user' || g end, g % 2 = 0, g * 1.25, jsonb_build_object('n', g, 's', "
                    "'it''s \"quoted\", ok') from generate_series({}, {}) g"
                ).format(
                    s,
                    sql.Literal(f"{y}-{m:02d}-02 00:00+00"),
                    sql.Literal(next_id),
                    sql.Literal(next_id),
                    sql.Literal(next_id + n - 1),
                )
            )
            next_id += n


def db_ids(dsn: str, schema: str) -> list[int]:
    """Ids in the partitioned table plus any table left detached by a rotation."""
    with psycopg.connect(dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = %s and c.relkind = 'r' and not c.relispartition",
                (schema,),
            )
        ]
        ids = [
            r[0]
            for r in conn.execute(
                sql.SQL("select id from {}.audit_logs").format(sql.Identifier(schema))
            )
        ]
        for t in tables:
            ids += [
                r[0]
                for r in conn.execute(
                    sql.SQL("select id from {}").format(sql.Identifier(schema, t))
                )
            ]
    return ids


def archived_ids(folder: Path) -> list[int]:
    ids: list[int] = []
    for path in folder.rglob("*.parquet"):
        ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
    return ids


def fingerprint(ids: list[int]) -> tuple[int, str]:
    return len(ids), hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()


def policy(schema: str, archive: str | None, **kw: Any) -> PartitionPolicy:
    return PartitionPolicy(
        table=f"{schema}.audit_logs",
        interval="month",
        premake=3,
        retention="12 months",
        archive=archive,
        **kw,
    )


def children(dsn: str, schema: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                "where i.inhparent = to_regclass(%s) order by 1",
                (f'"{schema}".audit_logs',),
            )
        ]


@pytest.fixture()
def emitted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    import flows.rotate_partitions
    import tasks.partition_retirement
    import tasks.partition_rotation

    calls: list[tuple[str, dict[str, Any]]] = []
    real_emit = flows.rotate_partitions.emit

    def record(event: str, resource_id: str, payload: dict[str, Any], **labels: str) -> None:
        calls.append((event, payload))
        real_emit(event, resource_id, payload, **labels)

    for module in (flows.rotate_partitions, tasks.partition_rotation, tasks.partition_retirement):
        monkeypatch.setattr(module, "emit", record)
    return calls


def run(target: PostgresTarget, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> RotationReport:
    monkeypatch.setenv("PERFOPS_DSN", target.dsn.get_secret_value())
    return rotate_partitions(now=NOW, settings=FAST, **kw)


def run_failed(
    target: PostgresTarget, monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> tuple[RotationReport, str]:
    """A run that must end Failed: its report (what the CLI prints) and its state message."""
    monkeypatch.setenv("PERFOPS_DSN", target.dsn.get_secret_value())
    state = rotate_partitions(now=NOW, settings=FAST, return_state=True, **kw)
    assert state.is_failed(), state
    report = report_of(state.result(raise_on_failure=False))
    assert isinstance(report, RotationReport), report
    return report, state.message or ""


def test_dry_run_plans_and_changes_nothing(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emitted: list[tuple[str, dict[str, Any]]],
) -> None:
    make_audit_logs(pg_dsn, schema, default_rows={(2027, 1): 5, (2029, 1): 3})
    before = children(pg_dsn, schema)
    report = run(
        target=pg_target, monkeypatch=monkeypatch, policies=[policy(schema, str(tmp_path))]
    )
    assert report.dry_run
    [t] = report.tables
    assert t.plan is not None
    assert [p.name for p in t.plan.create] == [
        "audit_logs_p2026_12",
        "audit_logs_p2027_01",
        "audit_logs_p2027_02",
    ]
    assert [e.partition for e in t.expired] == ["audit_logs_p2025_09", "audit_logs_p2025_10"]
    assert all(e.status == "would archive then drop" for e in t.expired)
    assert "archive to" in t.plan.expire[0].reason
    assert t.default_rows == 8
    assert children(pg_dsn, schema) == before
    assert not list(tmp_path.iterdir())
    names = [e for e, _ in emitted]
    assert "perfops.partitions.default_rows" in names
    assert "perfops.partitions.dropped" not in names and "perfops.partitions.created" not in names
    health = {p["kind"]: p["detail"] for e, p in emitted if e == "perfops.partitions.health"}
    assert set(health) == {"premade_short", "default_rows", "far_future_rows"}
    assert health["premade_short"].startswith("0 of 3 months after 2026-11")
    assert "3 rows in the default partition for month 2029-01" in health["far_future_rows"]
    [rotated] = [p for e, p in emitted if e == "perfops.partitions.rotated"]
    assert rotated["dry_run"] and rotated["would_expire"] == [
        "audit_logs_p2025_09",
        "audit_logs_p2025_10",
    ]


def test_a_later_now_applied_is_refused_before_anything_changes(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`now` is for previews: a later day through the API with apply expired partitions still
    inside their retention today (the CLI's --at was refused; the flow's parameter was not)."""
    make_audit_logs(pg_dsn, schema)
    before = children(pg_dsn, schema)
    monkeypatch.setenv("PERFOPS_DSN", pg_target.dsn.get_secret_value())
    later = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=400)  # as the API sends it
    state = rotate_partitions(
        now=later,
        settings=FAST,
        policies=[policy(schema, str(tmp_path))],
        apply=True,
        return_state=True,
    )
    assert state.is_failed() and "is in the future: it previews a later run" in str(state.message)
    assert children(pg_dsn, schema) == before and not list(tmp_path.iterdir())
    preview = rotate_partitions(now=later, settings=FAST, policies=[policy(schema, str(tmp_path))])
    assert isinstance(preview, RotationReport)
    assert preview.dry_run and preview.tables[0].expired  # a preview of that day still works


def test_apply_creates_rescues_archives_and_drops(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emitted: list[tuple[str, dict[str, Any]]],
) -> None:
    make_audit_logs(pg_dsn, schema, default_rows={(2027, 1): 5})
    before = fingerprint(db_ids(pg_dsn, schema))
    report = run(
        target=pg_target,
        monkeypatch=monkeypatch,
        policies=[policy(schema, str(tmp_path))],
        apply=True,
    )
    [t] = report.tables
    assert t.error is None and not report.failed, t.problems
    assert t.created_names == ["audit_logs_p2026_12", "audit_logs_p2027_01", "audit_logs_p2027_02"]
    rescued = next(c for c in t.created if c.name == "audit_logs_p2027_01")
    assert rescued.moved_rows == 5
    assert [(e.partition, e.status, e.rows, e.detach_mode) for e in t.expired] == [
        ("audit_logs_p2025_09", "dropped", ROWS_PER_MONTH, "plain"),
        ("audit_logs_p2025_10", "dropped", ROWS_PER_MONTH, "plain"),
    ]
    assert "DEFAULT partition" in t.expired[0].detail
    kids = children(pg_dsn, schema)
    assert "audit_logs_p2025_09" not in kids and "audit_logs_p2027_02" in kids
    with psycopg.connect(pg_dsn) as conn:
        left = conn.execute(
            sql.SQL("select count(*) from {}.audit_logs_default").format(sql.Identifier(schema))
        ).fetchone()
        assert left == (0,)
        # Indexes follow the parent.
        idx = conn.execute(
            "select count(*) from pg_indexes where schemaname = %s and tablename = %s",
            (schema, "audit_logs_p2027_01"),
        ).fetchone()
        assert idx == (1,)
    assert fingerprint(db_ids(pg_dsn, schema) + archived_ids(tmp_path)) == before
    manifest_path = next(tmp_path.rglob("audit_logs_p2025_09.manifest.json"))
    manifest = Manifest.model_validate_json(manifest_path.read_text())
    assert manifest.rows == ROWS_PER_MONTH
    assert manifest.min_key is not None and manifest.min_key.startswith("2025-09-02")
    assert [c.name for c in manifest.columns][:2] == ["id", "created_at"]
    events = [e for e, _ in emitted]
    for name in ("created", "detached", "archived", "dropped", "default_rows", "rotated"):
        assert f"perfops.partitions.{name}" in events
    archived = [p for e, p in emitted if e == "perfops.partitions.archived"]
    assert {p["partition"] for p in archived} == {"audit_logs_p2025_09", "audit_logs_p2025_10"}
    assert all(p["rows"] == ROWS_PER_MONTH and len(p["sha256"]) == 64 for p in archived)

    # A second run has nothing left to do.
    again = run(
        target=pg_target,
        monkeypatch=monkeypatch,
        policies=[policy(schema, str(tmp_path))],
        apply=True,
    )
    assert again.tables[0].created == [] and again.tables[0].expired == []


def test_an_applied_run_reports_the_table_as_it_left_it(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    emitted: list[tuple[str, dict[str, Any]]],
) -> None:
    """A table with one old month only. The --apply run created the current month and three
    ahead, yet its report still said `premade_short` (0 of 3 ready) and kept the old month as
    "the last child": it described the table as the run found it, and left the old month for
    the next run."""
    s = sql.Identifier(schema)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create table {}.audit_logs (id bigint not null, created_at timestamptz not null)"
                " partition by range (created_at)"
            ).format(s)
        )
        conn.execute(
            sql.SQL(
                "create table {}.audit_logs_p2024_01 partition of {}.audit_logs for values from "
                "('2024-01-01 00:00+00') to ('2024-02-01 00:00+00')"
            ).format(s, s)
        )
        conn.execute(
            sql.SQL("create table {}.audit_logs_default partition of {}.audit_logs default").format(
                s, s
            )
        )
        conn.execute(
            sql.SQL("insert into {}.audit_logs values (1, '2024-01-05'), (2, '2024-01-06')").format(
                s
            )
        )
    dry = run(
        target=pg_target,
        monkeypatch=monkeypatch,
        policies=[policy(schema, None, expired_action="drop")],
    )
    assert [e.partition for e in dry.tables[0].expired] == ["audit_logs_p2024_01"]
    emitted.clear()
    report = run(
        target=pg_target,
        monkeypatch=monkeypatch,
        policies=[policy(schema, None, expired_action="drop")],
        apply=True,
    )
    [t] = report.tables
    assert not report.failed, t.problems
    made = ["audit_logs_p2026_11", "audit_logs_p2026_12", "audit_logs_p2027_01"]
    assert t.created_names == [*made, "audit_logs_p2027_02"]
    assert [(e.partition, e.status, e.rows) for e in t.expired] == [
        ("audit_logs_p2024_01", "dropped", 2)
    ]
    assert children(pg_dsn, schema) == ["audit_logs_default", *made, "audit_logs_p2027_02"]
    assert t.plan is not None and t.plan.health[0].kind == "premade_short"  # as it was found
    assert t.after is not None and t.after.health == [] and t.after.kept == []
    rows = artifact_rows("perfops-partitions-rotate")
    assert [r for r in rows if r["what"] in ("health", "keep")] == []
    assert [(r["what"], r["partition"], r["result"]) for r in rows if r["what"] == "expire"] == [
        ("expire", "audit_logs_p2024_01", "dropped; 2 rows")
    ]
    assert [p for e, p in emitted if e == "perfops.partitions.health"] == []
    again = run(
        target=pg_target,
        monkeypatch=monkeypatch,
        policies=[policy(schema, None, expired_action="drop")],
        apply=True,
    )
    assert again.tables[0].created == [] and again.tables[0].expired == []
    assert again.tables[0].after is None and again.tables[0].state == again.tables[0].plan
    assert again.tables[0].plan is not None and again.tables[0].plan.health == []


def test_rows_arriving_in_the_default_after_the_check_are_still_rescued(
    pg_dsn: str, pg_target: PostgresTarget, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unlocked "any rows waiting?" check can race a writer: PostgreSQL's own check of the
    default partition then refuses the plain CREATE, and the locked rescue moves the rows."""
    import tasks.postgres.partition_changes as changes

    make_audit_logs(pg_dsn, schema, default_rows={(2027, 1): 4})
    monkeypatch.setattr(changes, "_rows_waiting", lambda *args: False)  # the race, made certain
    [created] = changes.create_partitions.fn(
        pg_target,
        schema,
        "audit_logs",
        "created_at",
        "timestamp with time zone",
        "UTC",
        [
            PlannedPartition(
                name="audit_logs_p2027_01",
                lower=datetime(2027, 1, 1, tzinfo=UTC),
                upper=datetime(2027, 2, 1, tzinfo=UTC),
                reason="test",
            )
        ],
        Timeouts(lock_timeout_ms=1_000),
    )
    assert (created.status, created.moved_rows) == ("created", 4)
    with psycopg.connect(pg_dsn) as conn:
        moved = conn.execute(
            sql.SQL("select count(*) from {}").format(sql.Identifier(schema, "audit_logs_p2027_01"))
        ).fetchone()
    assert moved == (4,)


def test_detach_concurrently_without_default_partition(
    pg_dsn: str, pg_target: PostgresTarget, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_audit_logs(pg_dsn, schema, with_default=False)
    report = run(
        target=pg_target,
        monkeypatch=monkeypatch,
        policies=[policy(schema, None, expired_action="detach_only")],
        apply=True,
    )
    [t] = report.tables
    assert [(e.partition, e.status, e.detach_mode) for e in t.expired] == [
        ("audit_logs_p2025_09", "detached", "concurrently"),
        ("audit_logs_p2025_10", "detached", "concurrently"),
    ]
    with psycopg.connect(pg_dsn) as conn:
        kept = conn.execute(
            sql.SQL("select count(*) from {}.audit_logs_p2025_09").format(sql.Identifier(schema))
        ).fetchone()
    assert kept == (ROWS_PER_MONTH,)


@pytest.mark.parametrize("crash", ["after_detach", "after_upload", "partial_upload"])
def test_crash_points_are_completed_by_the_next_run(
    crash: str,
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_audit_logs(pg_dsn, schema)
    before = fingerprint(db_ids(pg_dsn, schema))
    store = LocalFileSystem(basepath=str(tmp_path))
    name = "audit_logs_p2025_09"
    # The steps a run had done when it was killed, run one by one.
    detach_partitions.fn(
        pg_target,
        schema,
        "audit_logs",
        [
            Expiring(
                name=name,
                lower=datetime(2025, 9, 1, tzinfo=UTC),
                upper=datetime(2025, 10, 1, tzinfo=UTC),
            )
        ],
    )
    if crash in ("after_upload", "partial_upload"):
        record = archive_partition.fn(
            pg_target,
            store,
            ArchiveSource(
                schema_name=schema, parent="audit_logs", partition=name, key_column="created_at"
            ),
        )
        object_key = record.manifest.object_key
        if crash == "partial_upload":  # killed mid-upload: a truncated object, no manifest
            _, manifest_key = archive_keys(schema, "audit_logs", name)
            (tmp_path / manifest_key).unlink()
            obj = tmp_path / object_key
            obj.write_bytes(obj.read_bytes()[:100])
    # At the crash point every row is still in the database (the detached table holds them).
    assert fingerprint(db_ids(pg_dsn, schema)) == before
    report = run(
        target=pg_target,
        monkeypatch=monkeypatch,
        policies=[policy(schema, str(tmp_path))],
        apply=True,
    )
    [t] = report.tables
    statuses = {e.partition: e.status for e in t.expired}
    assert statuses == {"audit_logs_p2025_09": "dropped", "audit_logs_p2025_10": "dropped"}, (
        t.problems
    )
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("select to_regclass(%s)", (f'"{schema}".{name}',)).fetchone() == (None,)
    assert fingerprint(db_ids(pg_dsn, schema) + archived_ids(tmp_path)) == before


def test_s3_down_detaches_nothing_then_next_run_completes(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    make_audit_logs(pg_dsn, schema)
    before = fingerprint(db_ids(pg_dsn, schema))
    bucket = f"rot-{schema.replace('_', '-')}"
    boto3.client("s3", **moto_server.client_kwargs()).create_bucket(Bucket=bucket)
    # S3 down: an endpoint where nothing listens (no retries inside boto, to stay fast).
    from tests.servers.ports import free_port

    monkeypatch.setenv("PERFOPS_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(
        "blocks.resolve.BOTO_RETRY_CONFIG",
        {"retries": {"mode": "standard", "max_attempts": 1}, "connect_timeout": 1},
    )
    pol = policy(schema, f"s3://{bucket}/archive")
    kids = children(pg_dsn, schema)
    report, message = run_failed(
        target=pg_target, monkeypatch=monkeypatch, policies=[pol], apply=True
    )
    [t] = report.tables
    assert report.failed
    # The archive preflight failed before any detach: the expired partitions stay attached.
    assert {e.status for e in t.expired} == {"failed"}
    assert all("not detached, nothing dropped" in e.detail for e in t.expired)
    assert all("stays attached" in e.detail for e in t.expired)
    assert [k for k in children(pg_dsn, schema) if k not in kids] == t.created_names
    assert set(kids) <= set(children(pg_dsn, schema))  # nothing detached
    assert fingerprint(db_ids(pg_dsn, schema)) == before  # nothing dropped, nothing lost
    assert message.startswith(f"1 of 1 table(s) failed: {schema}.audit_logs: archive s3://")
    assert "failed the preflight" in message and "Could not connect" in message

    monkeypatch.setenv("PERFOPS_S3_ENDPOINT_URL", moto_server.endpoint_url)
    report = run(target=pg_target, monkeypatch=monkeypatch, policies=[pol], apply=True)
    [t] = report.tables
    assert {e.status for e in t.expired} == {"dropped"}, t.problems
    assert all(e.uri and e.uri.startswith(f"s3://{bucket}/archive/") for e in t.expired)
    s3 = boto3.client("s3", **moto_server.client_kwargs())
    ids: list[int] = []
    for e in t.expired:
        key = e.uri.removeprefix(f"s3://{bucket}/") if e.uri else ""
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        local = tmp_path / f"{e.partition}.parquet"
        local.write_bytes(body)
        ids += pq.read_table(local, columns=["id"]).column("id").to_pylist()
        local.unlink()
    assert fingerprint(db_ids(pg_dsn, schema) + ids) == before


def test_hash_partitions_completed(
    pg_dsn: str, pg_target: PostgresTarget, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create table {} (user_id bigint, at timestamptz) partition by hash (user_id)"
            ).format(sql.Identifier(schema, "user_activities"))
        )
        for r in (0, 3):
            conn.execute(
                sql.SQL(
                    "create table {} partition of {} for values with (modulus 8, remainder {})"
                ).format(
                    sql.Identifier(schema, f"ua_{r}"),
                    sql.Identifier(schema, "user_activities"),
                    sql.Literal(r),
                )
            )
    pol = HashPolicy(table=f"{schema}.user_activities", modulus=8)
    dry = run(target=pg_target, monkeypatch=monkeypatch, policies=[pol])
    assert dry.tables[0].hash_plan is not None and dry.tables[0].hash_plan.missing == [
        1,
        2,
        4,
        5,
        6,
        7,
    ]
    report = run(target=pg_target, monkeypatch=monkeypatch, policies=[pol], apply=True)
    assert report.tables[0].created_names == [f"user_activities_h{r}" for r in (1, 2, 4, 5, 6, 7)]
    with psycopg.connect(pg_dsn) as conn:
        n = conn.execute(
            "select count(*) from pg_inherits where inhparent = to_regclass(%s)",
            (f'"{schema}".user_activities',),
        ).fetchone()
    assert n == (8,)


def test_not_partitioned_and_non_time_key_are_clear_errors(
    pg_dsn: str, pg_target: PostgresTarget, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (id int)").format(sql.Identifier(schema, "plain")))
        conn.execute(
            sql.SQL("create table {} (id int) partition by range (id)").format(
                sql.Identifier(schema, "by_id")
            )
        )
    for table, message in (("plain", "is not partitioned"), ("by_id", "non-time column id")):
        pol = PartitionPolicy(table=f"{schema}.{table}", interval="month")
        with pytest.raises(ConfigurationError, match=message):
            run(target=pg_target, monkeypatch=monkeypatch, policies=[pol])


def test_hostile_names_are_rotated_as_identifiers_never_as_sql(
    pg_dsn: str, pg_target: PostgresTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = f"Rot {uuid.uuid4().hex[:6]} Schema"
    table = 'Audit "Logs"; DROP TABLE y; --'
    ident = sql.Identifier(schema, table)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("create table {} (id int)").format(sql.Identifier(schema, "y")))
        conn.execute(
            sql.SQL("create table {} (id bigint, at timestamptz) partition by range (at)").format(
                ident
            )
        )
        for y, m in months((2025, 9), 15):
            ny, nm = _next(y, m)
            conn.execute(
                sql.SQL("create table {} partition of {} for values from ({}) to ({})").format(
                    sql.Identifier(schema, f"{table}_p{y}_{m:02d}"),
                    ident,
                    sql.Literal(f"{y}-{m:02d}-01 00:00+00"),
                    sql.Literal(f"{ny}-{nm:02d}-01 00:00+00"),
                )
            )
            conn.execute(
                sql.SQL("insert into {} values ({}, {})").format(
                    ident, sql.Literal(y * 100 + m), sql.Literal(f"{y}-{m:02d}-15 00:00+00")
                )
            )
    quoted = '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))
    try:
        report = run(
            target=pg_target,
            monkeypatch=monkeypatch,
            policies=[
                PartitionPolicy(
                    table=quoted,
                    interval="month",
                    premake=3,
                    retention="12 months",
                    archive=str(tmp_path),
                )
            ],
            apply=True,
        )
        [t] = report.tables
        assert t.error is None and not report.failed, t.problems
        assert t.created_names == [f"{table}_p2026_12", f"{table}_p2027_01", f"{table}_p2027_02"]
        assert [(e.partition, e.status) for e in t.expired] == [
            (f"{table}_p2025_09", "dropped"),
            (f"{table}_p2025_10", "dropped"),
        ]
        assert sorted(archived_ids(tmp_path)) == [202509, 202510]
        with psycopg.connect(pg_dsn) as conn:
            assert conn.execute(
                "select to_regclass(%s) is not null", (f'"{schema}".y',)
            ).fetchone() == (True,)
            left = conn.execute(sql.SQL("select count(*) from {}").format(ident)).fetchone()
        assert left == (13,)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))


def test_archive_s3_url_resolves_to_a_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERFOPS_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    resolved = resolve_archive_store("s3://my-bucket/some/prefix/")
    assert resolved.value.bucket_name == "my-bucket"  # type: ignore[union-attr]
    assert resolved.value.bucket_folder == "some/prefix"  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="s3://BUCKET"):
        resolve_archive_store("s3:///x")


class FlakyS3:
    """A proxy in front of moto that answers the first `failures` requests with S3's
    500 InternalError, then forwards everything (S3 having a bad minute and recovering)."""

    def __init__(self, upstream: str, failures: int) -> None:
        import http.server
        import threading

        import httpx

        self.failed = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.failed < failures:
                    proxy.failed += 1
                    error = (
                        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError"
                        b"</Code><Message>We encountered an internal error.</Message></Error>"
                    )
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                reply = httpx.request(
                    self.command, upstream + self.path, headers=headers, content=body, timeout=30
                )
                self.send_response(reply.status_code)
                for k, v in reply.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.content)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_s3_answering_500_then_recovering_is_retried(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    make_audit_logs(pg_dsn, schema)
    before = fingerprint(db_ids(pg_dsn, schema))
    bucket = f"flaky-{schema.replace('_', '-')}"
    boto3.client("s3", **moto_server.client_kwargs()).create_bucket(Bucket=bucket)
    flaky = FlakyS3(moto_server.endpoint_url, failures=3)
    try:
        monkeypatch.setenv("PERFOPS_S3_ENDPOINT_URL", flaky.url)
        pol = policy(schema, f"s3://{bucket}/archive")
        report = run(target=pg_target, monkeypatch=monkeypatch, policies=[pol], apply=True)
    finally:
        flaky.close()
    [t] = report.tables
    assert flaky.failed == 3
    assert {e.status for e in t.expired} == {"dropped"}, t.problems
    s3 = boto3.client("s3", **moto_server.client_kwargs())
    ids: list[int] = []
    for e in t.expired:
        key = e.uri.removeprefix(f"s3://{bucket}/") if e.uri else ""
        local = tmp_path / f"{e.partition}.parquet"
        local.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        ids += pq.read_table(local, columns=["id"]).column("id").to_pylist()
        local.unlink()
    assert fingerprint(db_ids(pg_dsn, schema) + ids) == before


def test_missing_archive_block_detaches_nothing_and_the_run_fails_saying_why(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    emitted: list[tuple[str, dict[str, Any]]],
) -> None:
    """deployments/partitions.yaml names s3-block:perfops-archive; without that block the daily
    run used to detach first and end Completed. Now nothing is detached and the run fails."""
    make_audit_logs(pg_dsn, schema)
    before = fingerprint(db_ids(pg_dsn, schema))
    kids = children(pg_dsn, schema)
    block = f"perfops-archive-missing-{uuid.uuid4().hex[:8]}"
    report, message = run_failed(
        target=pg_target,
        monkeypatch=monkeypatch,
        policies=[policy(schema, f"s3-block:{block}")],
        apply=True,
    )
    [t] = report.tables
    assert [(e.partition, e.status) for e in t.expired] == [
        ("audit_logs_p2025_09", "failed"),
        ("audit_logs_p2025_10", "failed"),
    ]
    assert set(kids) <= set(children(pg_dsn, schema))  # every expired partition still attached
    assert fingerprint(db_ids(pg_dsn, schema)) == before
    assert "perfops.partitions.detached" not in [e for e, _ in emitted]
    why = f"archive s3-block:{block} failed the preflight: no s3-bucket block named {block!r}"
    assert why in message
    # The artifact says why, once, and on each partition's row that it stayed attached.
    rows = artifact_rows("perfops-partitions-rotate")
    problems = [r["reason"] for r in rows if r["what"] == "problem"]
    assert [p for p in problems if why in p] == [p for p in problems if "preflight" in p]
    assert len([p for p in problems if why in p]) == 1
    expired = [r for r in rows if r["what"] == "expire"]
    assert {r["result"] for r in expired} == {"failed"}
    assert all("stays attached" in r["reason"] for r in expired)


def test_one_failing_table_of_several_fails_the_run_and_names_it(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_audit_logs(pg_dsn, schema)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (id int)").format(sql.Identifier(schema, "plain")))
    good = policy(schema, str(tmp_path))
    bad = PartitionPolicy(table=f"{schema}.plain", interval="month")
    report, message = run_failed(
        target=pg_target, monkeypatch=monkeypatch, policies=[good, bad], apply=True
    )
    ok, failed = report.tables
    assert ok.error is None and {e.status for e in ok.expired} == {"dropped"}  # the other went on
    assert failed.error is not None and "is not partitioned" in failed.error
    assert message == f"1 of 2 table(s) failed: {schema}.plain: {failed.error}"
    # An operator who accepts partial runs says so; the message still names the failure.
    monkeypatch.setenv("PERFOPS_DSN", pg_target.dsn.get_secret_value())
    state = rotate_partitions(
        now=NOW, settings=FAST, policies=[good, bad], allow_partial=True, return_state=True
    )
    assert state.is_completed() and state.message is not None
    assert state.message.startswith(f"1 of 2 table(s) failed: {schema}.plain: ")
    assert state.message.endswith("(allowed: allow_partial)")


def test_a_role_that_does_not_own_the_table_changes_nothing(
    pg_dsn: str, pg_target: PostgresTarget, schema: str, tmp_path: Path
) -> None:
    make_audit_logs(pg_dsn, schema)
    kids = children(pg_dsn, schema)
    role = f"perfops_rot_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("grant usage, create on schema {} to {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("grant select on all tables in schema {} to {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
        owner = conn.execute("select current_user").fetchone()
    assert owner is not None
    try:
        target = PostgresTarget(dsn=psycopg.conninfo.make_conninfo(pg_dsn, user=role))
        with pytest.MonkeyPatch.context() as mp:
            report, message = run_failed(
                target=target, monkeypatch=mp, policies=[policy(schema, str(tmp_path))], apply=True
            )
        [t] = report.tables
        assert t.error == f"not attempted: needs ownership (owner {owner[0]})"
        assert message == (
            f"1 of 1 table(s) failed: needs ownership of {schema}.audit_logs (owner "
            f"{owner[0]}): {superuser_fix(owner[0], role)}"
        )
        assert children(pg_dsn, schema) == kids  # nothing created, nothing detached
        assert not list(tmp_path.iterdir())
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@pytest.fixture()
def elsewhere(pg_dsn: str) -> Iterator[str]:
    """A second schema, for partitions that live outside their parent's."""
    name = f"rot_other_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(name)))


def _comment_and_count(dsn: str, schema: str, table: str) -> tuple[str | None, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("select obj_description({}::regclass, 'pg_class'), count(*) from {}").format(
                sql.Literal(f'"{schema}"."{table}"'), sql.Identifier(schema, table)
            )
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_partitions_in_another_schema_are_rotated_there_and_a_namesake_is_never_touched(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    elsewhere: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The expired partitions and the default partition live in another schema than the parent,
    and the parent's schema holds an unrelated plain table of an expired partition's name: the
    rotation detaches, archives and drops the partitions where they are, rescues the default
    partition's rows from its own schema, and never marks or drops the namesake."""
    make_audit_logs(pg_dsn, schema, default_rows={(2027, 1): 5})
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for table in ("audit_logs_p2025_09", "audit_logs_p2025_10", "audit_logs_default"):
            conn.execute(
                sql.SQL("alter table {} set schema {}").format(
                    sql.Identifier(schema, table), sql.Identifier(elsewhere)
                )
            )
        conn.execute(  # unrelated, same name as an expired partition, in the parent's schema
            sql.SQL("create table {} as select g as id from generate_series(1, 7) g").format(
                sql.Identifier(schema, "audit_logs_p2025_09")
            )
        )
    for _ in range(2):  # the second run finds nothing left and still leaves the namesake alone
        report = run(
            target=pg_target,
            monkeypatch=monkeypatch,
            policies=[policy(schema, str(tmp_path))],
            apply=True,
        )
        [t] = report.tables
        assert t.error is None and not report.failed, t.problems
        if t.expired:
            assert [(e.partition, e.status, e.rows) for e in t.expired] == [
                (f"{elsewhere}.audit_logs_p2025_09", "dropped", ROWS_PER_MONTH),
                (f"{elsewhere}.audit_logs_p2025_10", "dropped", ROWS_PER_MONTH),
            ]
            rescued = next(c for c in t.created if c.name == "audit_logs_p2027_01")
            assert (rescued.status, rescued.moved_rows) == ("created", 5)
        assert _comment_and_count(pg_dsn, schema, "audit_logs_p2025_09") == (None, 7)
    with psycopg.connect(pg_dsn) as conn:
        gone = conn.execute(
            "select to_regclass(%s), to_regclass(%s)",
            (f'"{elsewhere}".audit_logs_p2025_09', f'"{elsewhere}".audit_logs_p2025_10'),
        ).fetchone()
    assert gone == (None, None)
    # Archived under the partition's own schema, so a namesake's archive is never reused.
    manifest_path = next(tmp_path.rglob(f"{elsewhere}.audit_logs_p2025_09.manifest.json"))
    manifest = Manifest.model_validate_json(manifest_path.read_text())
    assert (manifest.schema_name, manifest.partition_schema) == (schema, elsewhere)
    assert manifest.rows == ROWS_PER_MONTH


def test_drop_action_never_marks_or_drops_a_namesake_of_a_partition_elsewhere(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    elsewhere: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reported data loss: parent in one schema, an expired partition in another, an
    unrelated table of its name beside the parent; `expired_action: drop` twice. And a table
    carrying an older perfops's mark (naming the parent but not the table) is reported, not
    dropped."""
    make_audit_logs(pg_dsn, schema, with_default=False)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("alter table {} set schema {}").format(
                sql.Identifier(schema, "audit_logs_p2025_09"), sql.Identifier(elsewhere)
            )
        )
        for name in ("audit_logs_p2025_09", "legacy_leftover"):
            conn.execute(
                sql.SQL("create table {} as select g as id from generate_series(1, 3) g").format(
                    sql.Identifier(schema, name)
                )
            )
        conn.execute(
            sql.SQL("comment on table {} is {}").format(
                sql.Identifier(schema, "legacy_leftover"),
                sql.Literal(expired_comment(schema, "audit_logs", None, None)),  # no table named
            )
        )
    for _ in range(2):
        report = run(
            target=pg_target,
            monkeypatch=monkeypatch,
            policies=[policy(schema, None, expired_action="drop")],
            apply=True,
        )
        [t] = report.tables
        assert t.error is None and not report.failed, t.problems
        assert any("legacy_leftover" in p and "older perfops" in p for p in t.problems)
        assert all(e.status == "dropped" for e in t.expired)
        assert _comment_and_count(pg_dsn, schema, "audit_logs_p2025_09") == (None, 3)
        assert _comment_and_count(pg_dsn, schema, "legacy_leftover")[1] == 3
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(
            "select to_regclass(%s)", (f'"{elsewhere}".audit_logs_p2025_09',)
        ).fetchone() == (None,)


def test_detach_only_leaves_what_an_earlier_run_detached_without_reporting_it_again(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    emitted: list[tuple[str, dict[str, Any]]],
) -> None:
    """detach_only's end state is a detached plain table: the next runs neither list it as
    'detached' again nor report it as a problem ('still there: finishing its expiry') in the
    artifact and the rotated event, run after run."""
    make_audit_logs(pg_dsn, schema, with_default=False)
    keep = policy(schema, None, expired_action="detach_only")
    first = run(target=pg_target, monkeypatch=monkeypatch, policies=[keep], apply=True)
    assert [e.partition for e in first.tables[0].expired] == [
        "audit_logs_p2025_09",
        "audit_logs_p2025_10",
    ]
    emitted.clear()
    for apply in (False, True):
        again = run(target=pg_target, monkeypatch=monkeypatch, policies=[keep], apply=apply)
        [t] = again.tables
        assert (t.expired, t.problems) == ([], [])
    rotated = [payload for event, payload in emitted if event == "perfops.partitions.rotated"]
    assert [p["problems"] for p in rotated] == [[], []]
    with psycopg.connect(pg_dsn) as conn:
        kept = conn.execute(
            sql.SQL("select count(*) from {}.audit_logs_p2025_09").format(sql.Identifier(schema))
        ).fetchone()
    assert kept == (ROWS_PER_MONTH,)


def test_a_concurrent_detach_stopped_after_its_first_step_is_reported_pending_and_finished(
    pg_dsn: str, pg_target: PostgresTarget, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DETACH CONCURRENTLY commits its first step, then waits for older snapshots under
    lock_timeout: a long transaction that read the parent makes it give up with the partition
    detach-pending (its rows no longer read through the parent). The report says so, not
    'stays attached'; the next run finishes it (FINALIZE) and drops it."""
    make_audit_logs(pg_dsn, schema, with_default=False)
    drop = policy(schema, None, expired_action="drop")
    with psycopg.connect(pg_dsn) as reader:  # an open snapshot that saw the partitions
        reader.execute("set transaction isolation level repeatable read")
        reader.execute(sql.SQL("select count(*) from {}.audit_logs").format(sql.Identifier(schema)))
        report, message = run_failed(pg_target, monkeypatch, policies=[drop], apply=True)
        [first, second] = report.tables[0].expired
        assert (first.partition, first.status) == ("audit_logs_p2025_09", "failed")
        assert first.detail.startswith("canceling statement due to lock timeout; nothing dropped")
        assert first.detail.endswith(
            "audit_logs_p2025_09 is left detach-pending (DETACH CONCURRENTLY stopped after its "
            f"first step): its rows no longer read through {schema}.audit_logs and its range "
            "takes no inserts until the next run finishes the detach (FINALIZE)"
        )
        assert message.startswith("1 of 1 table(s) failed: ")
        # PostgreSQL detaches one partition concurrently at a time: the next one stays attached
        assert second.detail.endswith("nothing dropped, audit_logs_p2025_10 stays attached")
        reader.rollback()
    again = run(target=pg_target, monkeypatch=monkeypatch, policies=[drop], apply=True)
    modes = {e.partition: (e.status, e.detach_mode) for e in again.tables[0].expired}
    assert modes["audit_logs_p2025_09"] == ("dropped", "finalized")
    assert children(pg_dsn, schema)[0] == "audit_logs_p2025_11"


def test_an_archive_another_database_wrote_is_never_overwritten(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Two databases with the same table, rotated to one archive (the same command run against
    staging, then prod): the second must not overwrite the first's archive, whose partitions
    are dropped already. Its partitions fail, stay detached and are not dropped; the first's
    archive stays as it was."""
    other_db = f"{psycopg.conninfo.conninfo_to_dict(pg_dsn)['dbname']}_other"
    other_dsn = psycopg.conninfo.make_conninfo(pg_dsn, dbname=other_db)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(other_db)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(other_db)))
    try:
        with psycopg.connect(other_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
        make_audit_logs(other_dsn, schema)
        make_audit_logs(pg_dsn, schema)
        shared = policy(schema, str(tmp_path))
        other = PostgresTarget(dsn=SecretStr(other_dsn))
        first = run(target=other, monkeypatch=monkeypatch, policies=[shared], apply=True)
        assert [e.status for e in first.tables[0].expired] == ["dropped", "dropped"]
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        manifest = json.loads(next(tmp_path.rglob("audit_logs_p2025_09.manifest.json")).read_text())
        assert manifest["database"] == f"127.0.0.1:5432/{other_db}"

        report, _ = run_failed(pg_target, monkeypatch, policies=[shared], apply=True)
        expired = report.tables[0].expired
        assert [(e.partition, e.status) for e in expired] == [
            ("audit_logs_p2025_09", "failed"),
            ("audit_logs_p2025_10", "failed"),
        ]
        assert f"already holds the archive of 127.0.0.1:5432/{other_db}'s audit_logs_p2025_09" in (
            expired[0].detail
        )
        assert expired[0].detail.endswith("nothing dropped, audit_logs_p2025_09 stays detached")
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
        assert len(db_ids(pg_dsn, schema)) == 15 * ROWS_PER_MONTH  # every row still here
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(other_db))
            )


def test_two_policies_for_one_table_are_refused_before_any_change(
    pg_dsn: str,
    pg_target: PostgresTarget,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A policy passed as a parameter and one in the policies file for the same table, spelled
    differently: the run refuses both (two rules for one table) and changes nothing."""
    make_audit_logs(pg_dsn, schema)
    before = children(pg_dsn, schema)
    policies_file = tmp_path / "policies.yaml"
    policies_file.write_text(
        f'- table: \'"{schema}"."audit_logs"\'\n  interval: day\n  premake: 2\n', encoding="utf-8"
    )
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    state = rotate_partitions(
        policies=[policy(schema, None, expired_action="drop")],
        policies_file=str(policies_file),
        apply=True,
        now=NOW,
        settings=FAST,
        return_state=True,
    )
    assert state.is_failed()
    assert state.message is not None and state.message.endswith(
        f'policy 2 ("{schema}"."audit_logs"): table "{schema}"."audit_logs" has more than one '
        f"policy (also policy 1, {schema}.audit_logs): keep one"
    )
    assert children(pg_dsn, schema) == before
