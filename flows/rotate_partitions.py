"""rotate_partitions: keep time-partitioned tables rotated. Plans always; changes only with
`apply=True`. CLI `perfops partitions rotate`.

Per range policy: read the table and its children, the rows in its default partition and any
table an earlier run detached; plan (`decisions.partitioning.plan_rotation`); then, with `apply`:

1. create the current and `premake` next partitions, moving rows that wait in the default
   partition into them in the same transaction;
2. for each expired partition: mark and detach it (CONCURRENTLY unless the parent has a default
   partition), then by its policy keep it (`detach_only`), drop it (`drop`), or archive it
   (`archive_then_drop`): COPY into Parquet, upload with SHA-256 and a manifest, re-read both from
   storage, and drop the table only when the archive's row count equals the table's;
3. finish what an earlier run left: detached tables still there are archived (or their verified
   archive reused) and dropped.

A failed archive never drops anything: the table stays detached and the run reports it; the next
run picks it up. Per hash policy: create missing remainders. Every run publishes a table artifact
and `perfops.partitions.*` events (created, detached, archived, dropped, default_rows, health,
rotated).
"""

from __future__ import annotations

import contextvars
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from prefect import flow, get_run_logger
from prefect.filesystems import LocalFileSystem
from pydantic import BaseModel, Field

from blocks.resolve import BOTO_RETRY_CONFIG, ArchiveStore, Resolved, load_block
from decisions.partitioning import (
    DEFAULT_MAX_FUTURE_INTERVALS,
    ExpiredAction,
    HashPlan,
    HashPolicy,
    PartitionPolicy,
    Policy,
    RotationPlan,
    load_policies,
    plan_hash,
    plan_rotation,
)
from perfops import progress
from perfops.errors import ChecksumMismatch, ConfigurationError, PerfopsError
from perfops.priority import MAX_NICENESS, lower_thread_priority
from perfops.redaction import install_log_redaction, one_line
from perfops.settings import get_settings
from tasks.partition_archives import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_SPOOL_BYTES,
    ArchiveError,
    ArchiveRecord,
    ArchiveSource,
    archive_partition,
    verify_archive,
)
from tasks.postgres.partition_changes import (
    DEFAULT_LOCK_TIMEOUT_MS,
    DEFAULT_RESCUE_MAX_ROWS,
    DEFAULT_STATEMENT_TIMEOUT_MS,
    CreatedPartition,
    Detached,
    Dropped,
    Expiring,
    Timeouts,
    ToDrop,
    count_rows,
    create_hash_partitions,
    create_partitions,
    detach_partitions,
    drop_detached_tables,
    fetch_detached,
)
from tasks.postgres.partitions import (
    fetch_default_rows,
    fetch_hash_children,
    fetch_partitioned_table,
    qualified_name,
    to_existing,
)
from tasks.records import emit, publish_table

ARTIFACT_KEY = "perfops-partitions-rotate"
EVENT = "perfops.partitions."

Status = Literal[
    "dropped",
    "detached",
    "archived, not dropped",
    "failed",
    "would archive then drop",
    "would detach",
    "would drop",
]


class RotationSettings(BaseModel):
    """Limits of one rotation run (the policies say what; these say how carefully)."""

    model_config = {"frozen": True}

    lock_timeout_ms: int = Field(
        default=DEFAULT_LOCK_TIMEOUT_MS,
        ge=1,
        le=600_000,
        description="Every DDL statement gives up after waiting this long for a lock.",
    )
    statement_timeout_ms: int = Field(
        default=DEFAULT_STATEMENT_TIMEOUT_MS,
        ge=1,
        description="Every statement (DDL, moves, COPY for archives) stops after this long.",
    )
    archive_batch_rows: int = Field(
        default=DEFAULT_BATCH_ROWS,
        ge=1_000,
        description="Rows per Parquet row group (and held in memory at once) while archiving.",
    )
    rescue_max_rows: int = Field(
        default=DEFAULT_RESCUE_MAX_ROWS,
        ge=1,
        description="At most this many default-partition rows moved into one new partition "
        "(one transaction); a larger backlog is reported, not moved.",
    )
    archive_parallelism: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Detached partitions archived at once (each on its own connection). One "
        "archive already keeps two cores busy (the server's COPY and the Parquet encoding run "
        "side by side); more only pays on a bigger machine, and costs the database's other "
        "sessions CPU.",
    )
    archive_memory_mb: int = Field(
        default=DEFAULT_SPOOL_BYTES >> 20,
        ge=1,
        le=65_536,
        description="An archive up to this size (MiB) is built, uploaded and re-read in memory, "
        "never written to local disk (whose writeback slows the database's WAL flushes when "
        "they share a disk); a larger one spills to a temporary file. Peak memory is about "
        "archive_parallelism x this.",
    )
    archive_niceness: int = Field(
        default=10,
        ge=0,
        le=MAX_NICENESS,
        description="CPU niceness (0-19; 0 leaves it) of the threads that archive (Linux). "
        "Parsing and compressing an archive keeps a core busy; when the flow runs on the "
        "database host, a positive niceness lets the database's own sessions have the CPU "
        "first. DDL that holds locks (create, detach, drop) is never slowed.",
    )
    max_future_intervals: int = Field(
        default=DEFAULT_MAX_FUTURE_INTERVALS,
        ge=0,
        description="Rows further ahead than this many intervals are far-future (reported, "
        "not rescued).",
    )

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(
            lock_timeout_ms=self.lock_timeout_ms, statement_timeout_ms=self.statement_timeout_ms
        )

    @property
    def archive_memory_bytes(self) -> int:
        return self.archive_memory_mb << 20


class ExpiryOutcome(BaseModel):
    partition: str
    action: ExpiredAction
    status: Status
    detach_mode: str | None = None
    rows: int | None = None
    uri: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    archive_seconds: float | None = None
    detail: str = ""


class TableRotation(BaseModel):
    """What one table's rotation planned and did."""

    table: str
    kind: Literal["range", "hash"]
    plan: RotationPlan | None = None
    hash_plan: HashPlan | None = None
    created: list[CreatedPartition] = Field(default_factory=list)
    expired: list[ExpiryOutcome] = Field(default_factory=list)
    default_rows: int = 0
    retire_seconds: float | None = Field(
        default=None, description="Wall time archiving and dropping the detached partitions."
    )
    problems: list[str] = Field(default_factory=list)
    error: str | None = None

    @property
    def created_names(self) -> list[str]:
        return [c.name for c in self.created if c.status == "created"]


class RotationReport(BaseModel):
    target: str
    dry_run: bool
    seconds: float
    tables: list[TableRotation]

    @property
    def failed(self) -> bool:
        return any(
            t.error
            or any(e.status in ("failed", "archived, not dropped") for e in t.expired)
            or any(c.status == "failed" for c in t.created)
            for t in self.tables
        )

    @property
    def summary(self) -> str:
        created = sum(len(t.created_names) for t in self.tables)
        dropped = sum(e.status == "dropped" for t in self.tables for e in t.expired)
        if self.dry_run:
            would_create = sum(
                len(t.plan.create) if t.plan else len(t.hash_plan.missing) if t.hash_plan else 0
                for t in self.tables
            )
            would_expire = sum(len(t.expired) for t in self.tables)
            return (
                f"dry run on {len(self.tables)} table(s): would create {would_create} and "
                f"expire {would_expire} partition(s)"
            )
        failed = sum(
            e.status in ("failed", "archived, not dropped") for t in self.tables for e in t.expired
        )
        return f"{len(self.tables)} table(s): created {created}, dropped {dropped}" + (
            f", {failed} expired partition(s) failed (kept detached)" if failed else ""
        )


def resolve_archive_store(archive: str) -> Resolved[ArchiveStore]:
    """The store behind a policy's `archive`: 's3-block:NAME' (a saved S3Bucket block),
    's3://bucket/prefix' (credentials and endpoint from the environment / PERFOPS_S3_* settings)
    or a local folder."""
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    if archive.startswith("s3-block:"):
        name = archive.removeprefix("s3-block:")
        bucket = load_block(S3Bucket, name)
        where = f"s3://{bucket.bucket_name}/{bucket.bucket_folder}"
        return Resolved("archive", "block", bucket, f"block {name}: {where}")
    if archive.startswith("s3://"):
        bucket_name, _, prefix = archive.removeprefix("s3://").partition("/")
        if not bucket_name:
            raise ConfigurationError(f"archive {archive!r} is not s3://BUCKET[/PREFIX]")
        s = get_settings()
        credentials = AwsCredentials(
            region_name=s.aws_region,
            aws_client_parameters=AwsClientParameters(
                endpoint_url=s.s3_endpoint_url, config=BOTO_RETRY_CONFIG
            ),
        )
        store = S3Bucket(
            bucket_name=bucket_name, bucket_folder=prefix.strip("/"), credentials=credentials
        )
        return Resolved("archive", "environment", store, archive)
    folder = Path(archive).expanduser().resolve()
    return Resolved("archive", "environment", LocalFileSystem(basepath=str(folder)), str(folder))


def _resource(target: Any, table: str) -> str:
    return f"{target.resource_id()}/{table}"


def _rotate_range(
    target: Any,
    policy: PartitionPolicy,
    now: datetime,
    apply: bool,
    settings: RotationSettings,
    workdir: Path,
) -> TableRotation:
    logger = get_run_logger()
    result = TableRotation(table=policy.table, kind="range")
    schema_name, table_name = policy.schema_name, policy.table_name
    qualified = qualified_name(schema_name, table_name)
    progress.report(f"{policy.table}: reading the catalog", 0, 1)
    meta = fetch_partitioned_table(target, qualified)
    if meta.strategy != "range":
        raise ConfigurationError(
            f"{policy.table} is {meta.strategy}-partitioned: a time policy (interval) needs a "
            "range-partitioned table; give a hash table `modulus` instead"
        )
    key_column = meta.key_column
    assert key_column is not None  # fetch_partitioned_table refuses anything else
    existing = to_existing(meta.children, meta.key_type, policy.timezone)
    default_rows = (
        fetch_default_rows(target, qualified, key_column, policy.interval, policy.timezone)
        if meta.default
        else []
    )
    result.default_rows = sum(d.rows for d in default_rows)
    detached = fetch_detached(target, schema_name, table_name)
    plan = plan_rotation(policy, now, existing, default_rows, settings.max_future_intervals)
    result.plan = plan
    result.problems.extend(plan.problems)
    for d in detached:
        if d.name not in {e.name for e in plan.expire}:
            result.problems.append(
                f"{d.name} was detached by an earlier run and is still there: "
                + ("finishing its expiry" if apply else "the next --apply run finishes it")
            )

    if not apply:
        verb: dict[ExpiredAction, Status] = {
            "archive_then_drop": "would archive then drop",
            "detach_only": "would detach",
            "drop": "would drop",
        }
        result.expired = [
            ExpiryOutcome(partition=e.name, action=e.action, status=verb[e.action], detail=e.reason)
            for e in plan.expire
        ] + [
            ExpiryOutcome(
                partition=d.name,
                action=policy.expired_action,
                status=verb[policy.expired_action],
                detail="detached by an earlier run",
            )
            for d in detached
            if policy.expired_action != "detach_only"
        ]
        return result

    timeouts = settings.timeouts
    if plan.create:
        progress.report(f"{policy.table}: creating {len(plan.create)} partitions", 0, 1)
        result.created = create_partitions(
            target,
            schema_name,
            table_name,
            key_column,
            meta.key_type,
            policy.timezone,
            plan.create,
            timeouts,
            settings.rescue_max_rows,
        )
        for c in result.created:
            if c.status in ("failed", "skipped"):
                result.problems.append(f"partition {c.name} not created: {c.detail}")
        if result.created_names:
            emit(
                EVENT + "created",
                _resource(target, policy.table),
                {"table": policy.table, "partitions": result.created_names},
            )

    store: ArchiveStore | None = None
    store_error: str | None = None
    if policy.expired_action == "archive_then_drop" and (plan.expire or detached):
        assert policy.archive is not None
        try:
            store = resolve_archive_store(policy.archive).value
        except (PerfopsError, ValueError) as exc:
            store_error = f"archive {policy.archive} unusable: {one_line(exc)}"

    todo: list[tuple[str, datetime | None, datetime | None, bool]] = [
        (e.name, e.lower, e.upper, True) for e in plan.expire
    ] + [
        (d.name, d.lower, d.upper, False)
        for d in detached
        if d.name not in {e.name for e in plan.expire}
    ]
    ready: list[tuple[ExpiryOutcome, datetime | None, datetime | None, bool]] = []
    to_detach = [Expiring(name=n, lower=lo, upper=hi) for n, lo, hi, attached in todo if attached]
    detached_now: dict[str, Detached] = {}
    if to_detach:
        progress.report(f"{policy.table}: detaching {len(to_detach)} expired partitions", 0, 1)
        try:
            detached_now = {
                d.name: d
                for d in detach_partitions(target, schema_name, table_name, to_detach, timeouts)
            }
        except (PerfopsError, psycopg.Error) as exc:  # the session itself: nothing was detached
            error = one_line(exc, empty="failed")
            detached_now = {e.name: Detached(name=e.name, error=error) for e in to_detach}
    for name, lower, upper, attached in todo:
        outcome = ExpiryOutcome(partition=name, action=policy.expired_action, status="detached")
        result.expired.append(outcome)
        if attached:
            done = detached_now[name]
            if done.mode is None:
                outcome.status = "failed"
                outcome.detail = f"{done.error}; nothing dropped, {name} stays attached"
                result.problems.append(f"detaching {name} failed: {outcome.detail}")
                logger.warning("detaching %s failed: %s", name, outcome.detail)
                continue
            outcome.detach_mode = done.mode
            if outcome.detach_mode == "plain":
                outcome.detail = (
                    f"{policy.table} has a DEFAULT partition, so PostgreSQL refuses DETACH "
                    f"CONCURRENTLY: detached with a plain DETACH under lock_timeout "
                    f"{settings.lock_timeout_ms} ms"
                )
            emit(
                EVENT + "detached",
                _resource(target, policy.table),
                {"table": policy.table, "partition": name, "mode": outcome.detach_mode},
            )
        if policy.expired_action != "detach_only":
            ready.append((outcome, lower, upper, attached))

    def archive(
        outcome: ExpiryOutcome, lower: datetime | None, upper: datetime | None, fresh: bool
    ) -> None:
        """Archive one detached table (verified); a failure is reported and keeps the table."""
        name = outcome.partition
        try:
            if store is None:
                raise ArchiveError(store_error or "no archive store")
            archive_started = time.monotonic()
            record = _archive(
                target, store, policy, name, key_column, lower, upper, settings, workdir, fresh
            )
            outcome.archive_seconds = round(time.monotonic() - archive_started, 3)
        except (PerfopsError, psycopg.Error, OSError) as exc:
            outcome.status = "failed"
            outcome.detail = (
                f"{one_line(exc, empty='failed')}; nothing dropped, {name} stays detached"
            )
            result.problems.append(f"expiring {name} failed: {outcome.detail}")
            logger.warning("expiring %s failed: %s", name, outcome.detail)
            return
        manifest = record.manifest
        outcome.rows, outcome.uri = manifest.rows, record.uri
        outcome.sha256, outcome.bytes = manifest.sha256, manifest.bytes
        outcome.status = "archived, not dropped"
        with archived_lock:
            archived_count[0] += 1
            progress.report(
                f"{policy.table}: archived {name} ({manifest.rows:,} rows)",
                archived_count[0],
                len(ready),
            )
        emit(
            EVENT + "archived",
            _resource(target, policy.table),
            {
                "table": policy.table,
                "partition": name,
                "rows": manifest.rows,
                "uri": record.uri,
                "sha256": manifest.sha256,
                "bytes": manifest.bytes,
                "manifest": record.manifest_uri,
            },
        )

    archived_count, archived_lock = [0], threading.Lock()
    phase_started = time.monotonic()
    if policy.expired_action == "archive_then_drop" and ready:
        progress.report(f"{policy.table}: archiving {len(ready)} partitions", 0, len(ready))
        # One archive already keeps two cores busy (the server's COPY and the Parquet encoding);
        # archive_parallelism > 1 only pays on a bigger machine.
        with ThreadPoolExecutor(
            max_workers=settings.archive_parallelism,
            thread_name_prefix="archive",
            initializer=lower_thread_priority,
            initargs=(settings.archive_niceness,),
        ) as pool:
            futures = [
                pool.submit(contextvars.copy_context().run, archive, outcome, lower, upper, fresh)
                for outcome, lower, upper, fresh in ready
            ]
            for future in futures:
                future.result()
    # Only verified archives (or, for `drop`, every detached table) are dropped, count-checked.
    droppable = [
        outcome
        for outcome, *_ in ready
        if outcome.status == "archived, not dropped" or policy.expired_action == "drop"
    ]
    if droppable:
        progress.report(f"{policy.table}: dropping {len(droppable)} expired tables", 0, 1)
        _drop(target, policy, droppable, timeouts, result)
    if ready:
        result.retire_seconds = round(time.monotonic() - phase_started, 3)
    return result


def _drop(
    target: Any,
    policy: PartitionPolicy,
    outcomes: list[ExpiryOutcome],
    timeouts: Timeouts,
    result: TableRotation,
) -> None:
    """Drop the detached tables of `outcomes` (count-checked against their verified archives)
    and record each result; a table that cannot be dropped stays and is reported."""
    archived = policy.expired_action == "archive_then_drop"
    try:
        dropped = drop_detached_tables(
            target,
            policy.schema_name,
            policy.table_name,
            [
                ToDrop(name=o.partition, expected_rows=o.rows if archived else None)
                for o in outcomes
            ],
            timeouts,
        )
    except (PerfopsError, psycopg.Error) as exc:  # the session itself: nothing was dropped
        error = one_line(exc, empty="failed")
        dropped = [Dropped(name=o.partition, error=error) for o in outcomes]
    by_name = {d.name: d for d in dropped}
    for outcome in outcomes:
        done = by_name[outcome.partition]
        if done.error is not None:
            outcome.detail = f"{done.error}; nothing dropped, {outcome.partition} stays detached"
            if not archived:
                outcome.status = "failed"
            result.problems.append(f"expiring {outcome.partition} failed: {outcome.detail}")
            get_run_logger().warning("expiring %s failed: %s", outcome.partition, outcome.detail)
            continue
        outcome.rows = done.rows
        outcome.status = "dropped"
        emit(
            EVENT + "dropped",
            _resource(target, policy.table),
            {"table": policy.table, "partition": outcome.partition, "rows": done.rows},
        )


def _archive(
    target: Any,
    store: ArchiveStore,
    policy: PartitionPolicy,
    name: str,
    key_column: str,
    lower: datetime | None,
    upper: datetime | None,
    settings: RotationSettings,
    workdir: Path,
    fresh: bool = False,
) -> ArchiveRecord:
    """A verified archive of the detached table `name`: reuse one that a crashed run finished if
    it matches the table's row count, otherwise dump, upload and verify."""
    schema_name, table_name = policy.schema_name, policy.table_name
    record = None
    try:
        # Detached by this run: no archive of it can be complete yet. Otherwise an earlier run
        # may have finished one before it stopped.
        record = (
            None
            if fresh
            else verify_archive(store, schema_name, table_name, name, settings.archive_memory_bytes)
        )
    except (ArchiveError, ChecksumMismatch):
        record = None  # a partial or corrupted archive: written again below
    if record is not None:
        table_rows = count_rows(target, schema_name, name)
        if record.manifest.rows == table_rows:
            return record
    return archive_partition(
        target,
        store,
        ArchiveSource(
            schema_name=schema_name,
            parent=table_name,
            partition=name,
            key_column=key_column,
            lower=lower,
            upper=upper,
            timezone=policy.timezone,
        ),
        settings.archive_batch_rows,
        settings.statement_timeout_ms,
        settings.archive_memory_bytes,
        str(workdir),
    )


def _rotate_hash(
    target: Any, policy: HashPolicy, apply: bool, settings: RotationSettings
) -> TableRotation:
    result = TableRotation(table=policy.table, kind="hash")
    schema_name, table_name = policy.schema_name, policy.table_name
    modulus, remainders = fetch_hash_children(target, qualified_name(schema_name, table_name))
    plan = plan_hash(policy, remainders, modulus)
    result.hash_plan = plan
    result.problems.extend(plan.problems)
    if apply and plan.missing and not plan.problems:
        result.created = create_hash_partitions(
            target,
            schema_name,
            table_name,
            policy.modulus,
            plan.missing,
            plan.names,
            settings.timeouts,
        )
        if result.created_names:
            emit(
                EVENT + "created",
                _resource(target, policy.table),
                {"table": policy.table, "partitions": result.created_names},
            )
    return result


def _artifact_rows(report: RotationReport) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(table: str, what: str, partition: str, bounds: str, reason: str, result: str) -> None:
        rows.append(
            {
                "table": table,
                "what": what,
                "partition": partition,
                "bounds": bounds,
                "reason": reason,
                "result": result,
            }
        )

    for t in report.tables:
        if t.error:
            add(t.table, "error", "", "", t.error, "failed")
            continue
        created = {c.name: c for c in t.created}
        if t.plan:
            for p in t.plan.create:
                c = created.get(p.name)
                add(
                    t.table,
                    "create",
                    p.name,
                    f"[{p.lower.isoformat()}, {p.upper.isoformat()})",
                    p.reason,
                    (c.status + (f" ({c.detail})" if c.detail else "")) if c else "planned",
                )
            for p in t.plan.deferred:
                add(t.table, "deferred", p.name, "", p.reason, "later run")
            for r in t.plan.rescue:
                add(
                    t.table,
                    "rescue",
                    r.into_partition_name,
                    r.bucket_start.isoformat(),
                    r.reason,
                    "planned" if report.dry_run else "see create",
                )
            for g in t.plan.gaps:
                add(
                    t.table,
                    "gap",
                    "",
                    f"[{g.lower.isoformat()}, {g.upper.isoformat()})",
                    g.reason,
                    "",
                )
            for h in t.plan.health:
                add(t.table, "health", "", "", f"{h.kind}: {h.detail}", "")
            for k in t.plan.kept:
                add(t.table, "keep", k.name, "", k.reason, "kept")
        if t.hash_plan:
            add(
                t.table,
                "hash",
                "",
                f"modulus {t.hash_plan.modulus}",
                t.hash_plan.reason,
                ", ".join(f"{c.name} {c.status}" for c in t.created)
                or ("planned" if t.hash_plan.missing else "ok"),
            )
        reasons = {e.name: e.reason for e in t.plan.expire} if t.plan else {}
        for e in t.expired:
            extra = f"; {e.rows} rows" if e.rows is not None else ""
            extra += f"; {e.uri} sha256 {e.sha256}" if e.uri else ""
            add(
                t.table,
                "expire",
                e.partition,
                e.detach_mode or "",
                reasons.get(e.partition, e.detail)
                + (f" ({e.detail})" if e.detail and e.partition in reasons else ""),
                e.status + extra,
            )
        for problem in t.problems:
            add(t.table, "problem", "", "", problem, "")
    return rows


@flow(
    name="rotate_partitions",
    description="Keep time-partitioned tables rotated: plan (always), then with apply create "
    "partitions ahead (rescuing default-partition rows), archive expired ones to Parquet with a "
    "verified SHA-256 manifest before dropping them, and complete hash partitions.",
    log_prints=False,
)
def rotate_partitions(
    postgres_block: str | None = None,
    policies: list[PartitionPolicy | HashPolicy] | None = None,
    policies_file: str | None = None,
    apply: bool = False,
    settings: RotationSettings = RotationSettings(),  # noqa: B008 - frozen model
    now: datetime | None = None,
) -> RotationReport:
    """Rotate partitions of the tables the policies name.

    Args:
        postgres_block: name of a `perfops-postgres-target` block (default: `PERFOPS_DSN`, else
            the local demo database).
        policies: per table: interval, premake, retention, expired_action, archive, timezone
            (range) or modulus (hash).
        policies_file: a YAML file of policies (see deployments/partitions.yaml); added to
            `policies`.
        apply: make the changes. Default False: a dry run that only plans.
        settings: lock/statement timeouts, archive batch size, rescue limit.
        now: the time to plan for (default: now; for tests and previews).
    """
    from blocks.resolve import resolve_postgres

    install_log_redaction()
    logger = get_run_logger()
    started = time.monotonic()
    pg = resolve_postgres(postgres_block)
    target = pg.value
    chosen: list[Policy] = list(policies or [])
    if policies_file:
        chosen.extend(load_policies(Path(policies_file).read_text()))
    if not chosen:
        raise ConfigurationError(
            "no partition policies: pass policies or policies_file "
            "(see deployments/partitions.yaml)"
        )
    at = now or datetime.now(UTC)
    tables: list[TableRotation] = []
    first_error: Exception | None = None
    with tempfile.TemporaryDirectory(prefix="perfops-partitions-") as tmp:
        for policy in chosen:
            try:
                if isinstance(policy, PartitionPolicy):
                    rotation = _rotate_range(target, policy, at, apply, settings, Path(tmp))
                else:
                    rotation = _rotate_hash(target, policy, apply, settings)
            except (PerfopsError, psycopg.Error, ValueError) as exc:
                first_error = first_error or exc
                rotation = TableRotation(
                    table=policy.table,
                    kind="range" if isinstance(policy, PartitionPolicy) else "hash",
                    error=one_line(exc, empty="failed"),
                )
                logger.error("%s: %s", policy.table, rotation.error)
            tables.append(rotation)
    report = RotationReport(
        target=pg.description,
        dry_run=not apply,
        seconds=round(time.monotonic() - started, 3),
        tables=tables,
    )
    logger.info("%s in %.1f s", report.summary, report.seconds)
    publish_table(
        ARTIFACT_KEY,
        _artifact_rows(report),
        f"Partition rotation on {pg.description}"
        + (" (dry run: planned only, nothing changed)" if not apply else "")
        + f": {report.summary}.",
    )
    _emit_records(target, report)
    if first_error is not None and len(tables) == 1:
        raise first_error
    return report


def _emit_records(target: Any, report: RotationReport) -> None:
    for t in report.tables:
        resource = _resource(target, t.table)
        if t.default_rows:
            emit(EVENT + "default_rows", resource, {"table": t.table, "rows": t.default_rows})
        for h in t.plan.health if t.plan else []:
            emit(EVENT + "health", resource, {"table": t.table, "kind": h.kind, "detail": h.detail})
        emit(
            EVENT + "rotated",
            resource,
            {
                "table": t.table,
                "dry_run": report.dry_run,
                "created": t.created_names,
                "archived": [e.partition for e in t.expired if e.uri],
                "dropped": [e.partition for e in t.expired if e.status == "dropped"],
                "would_create": [p.name for p in t.plan.create]
                if t.plan and report.dry_run
                else [],
                "would_expire": [e.partition for e in t.expired] if report.dry_run else [],
                "problems": ([t.error] if t.error else []) + t.problems,
            },
        )
