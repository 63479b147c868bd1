"""A partition rotation run: its limits (`RotationSettings`), what each table's rotation planned
and did (`TableRotation`, `ExpiryOutcome`), the run's report with its artifact rows and the events
it emits. Pure: no Prefect, no I/O (`flows/rotate_partitions.py` wires the steps,
`tasks/postgres/partition_changes.py` and `tasks/partition_archives.py` do them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from decisions.partitioning import (
    DEFAULT_MAX_FUTURE_INTERVALS,
    ExpiredAction,
    HashPlan,
    PartitionPolicy,
    RotationPlan,
    partition_label,
)
from perfops.priority import MAX_NICENESS

EVENT = "perfops.partitions."
DEFAULT_LOCK_TIMEOUT_MS = 2_000
DEFAULT_STATEMENT_TIMEOUT_MS = 120_000
DEFAULT_RESCUE_MAX_ROWS = 1_000_000
DEFAULT_BATCH_ROWS = 200_000  # rows per Parquet row group (and held in memory at once)
DEFAULT_SPOOL_BYTES = 256 << 20  # archives up to this size never touch the local disk


class Timeouts(BaseModel):
    """Per-statement limits of every DDL step."""

    lock_timeout_ms: int = Field(default=DEFAULT_LOCK_TIMEOUT_MS, ge=1, le=600_000)
    statement_timeout_ms: int = Field(default=DEFAULT_STATEMENT_TIMEOUT_MS, ge=1, le=86_400_000)


class CreatedPartition(BaseModel):
    name: str
    status: Literal["created", "existed", "skipped", "failed"]
    moved_rows: int = 0
    detail: str = ""


DetachMode = Literal["concurrently", "plain", "finalized", "already detached"]


class _Child(BaseModel):
    """A child table of the rotated parent: its name and, when it is not the parent's, its
    schema (PostgreSQL lets a partition live in any schema; every step names it by both)."""

    name: str
    schema_name: str | None = Field(default=None, description="None: the parent's schema.")

    @property
    def label(self) -> str:
        """The bare name in the parent's schema, `schema.name` elsewhere (reports key by it)."""
        return partition_label(self.schema_name, self.name)


class Expiring(_Child):
    """An expired partition to detach, with the bounds its expiry mark records."""

    lower: datetime | None = None
    upper: datetime | None = None


class Detached(BaseModel):
    """What detaching one partition did: its mode, or why it failed (it stays attached, or,
    `pending`, a DETACH CONCURRENTLY stopped after its first step left it detach-pending).
    `name` is the partition's label (`schema.name` outside the parent's schema)."""

    name: str
    mode: DetachMode | None = None
    error: str | None = None
    pending: bool = False


class ToDrop(_Child):
    """A detached expired table to drop, and the rows its verified archive holds (None for the
    `drop` action, which keeps no archive)."""

    expected_rows: int | None = None


class Dropped(BaseModel):
    """What dropping one table did: the rows it held, or why it was kept. `name` is the
    table's label (`schema.name` outside the parent's schema)."""

    name: str
    rows: int | None = None
    error: str | None = None


class ExpiredTable(_Child):
    """One table to retire this run: an expired partition still attached (`attached`), or one an
    earlier run detached and left behind."""

    lower: datetime | None = None
    upper: datetime | None = None
    attached: bool


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
    partition: str = Field(description="The table's label: `schema.name` outside the parent's.")
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
    plan: RotationPlan | None = Field(
        default=None, description="What the run planned, from the table as it found it."
    )
    after: RotationPlan | None = Field(
        default=None,
        description="An applied run that created partitions: the plan again from the catalog "
        "read after creating them; its expiry is what the run retired, its health, gaps and "
        "kept children are the state the run left (None: `plan` says it).",
    )
    hash_plan: HashPlan | None = None
    created: list[CreatedPartition] = Field(default_factory=list)
    expired: list[ExpiryOutcome] = Field(default_factory=list)
    default_rows: int = 0
    retire_seconds: float | None = Field(
        default=None, description="Wall time archiving and dropping the detached partitions."
    )
    problems: list[str] = Field(default_factory=list)
    failures: list[str] = Field(
        default_factory=list, description="The problems that are failures, first first."
    )
    error: str | None = None

    @property
    def created_names(self) -> list[str]:
        return [c.name for c in self.created if c.status == "created"]

    @property
    def state(self) -> RotationPlan | None:
        """The plan that describes the table as the run left it: `after` when the run created
        partitions, else `plan` (a dry run, or a run that created none)."""
        return self.after or self.plan


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
            f", {failed} expired partition(s) failed (nothing dropped)" if failed else ""
        )


def artifact_rows(report: RotationReport) -> list[dict[str, Any]]:
    """One row per planned or done step of every table: the table, what, which partition, then
    the result and the reason (the columns that explain lead), then the bounds and the archive."""
    rows: list[dict[str, Any]] = []

    def add(
        table: str,
        what: str,
        partition: str,
        bounds: str,
        reason: str,
        result: str,
        archive: str = "",
    ) -> None:
        rows.append(
            {
                "table": table,
                "what": what,
                "partition": partition,
                "result": result,
                "reason": reason,
                "bounds": bounds,
                "archive": archive,
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
        state = t.state
        if state:
            for g in state.gaps:
                add(
                    t.table,
                    "gap",
                    "",
                    f"[{g.lower.isoformat()}, {g.upper.isoformat()})",
                    g.reason,
                    "",
                )
            for h in state.health:
                add(t.table, "health", "", "", f"{h.kind}: {h.detail}", "")
            for k in state.kept:
                add(t.table, "keep", k.label, "", k.reason, "kept")
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
        reasons = {e.label: e.reason for e in state.expire} if state else {}
        for e in t.expired:
            add(
                t.table,
                "expire",
                e.partition,
                e.detach_mode or "",
                reasons.get(e.partition, e.detail)
                + (f" ({e.detail})" if e.detail and e.partition in reasons else ""),
                e.status + (f"; {e.rows} rows" if e.rows is not None else ""),
                f"{e.uri} sha256 {e.sha256}" if e.uri else "",
            )
        for problem in t.problems:
            add(t.table, "problem", "", "", problem, "")
    return rows


def planned_outcomes(
    plan: RotationPlan, detached: list[str], policy: PartitionPolicy
) -> list[ExpiryOutcome]:
    """What a dry run would do with each expired partition and with each table an earlier run
    detached (`detached`, by label) and left behind."""
    verb: dict[ExpiredAction, Status] = {
        "archive_then_drop": "would archive then drop",
        "detach_only": "would detach",
        "drop": "would drop",
    }
    return [
        ExpiryOutcome(partition=e.label, action=e.action, status=verb[e.action], detail=e.reason)
        for e in plan.expire
    ] + [
        ExpiryOutcome(
            partition=name,
            action=policy.expired_action,
            status=verb[policy.expired_action],
            detail="detached by an earlier run",
        )
        for name in detached
        if policy.expired_action != "detach_only"
    ]


def rotation_events(report: RotationReport) -> list[tuple[str, str, dict[str, Any]]]:
    """The events a run ends with, per table: (event name, table, payload): rows waiting in the
    default partition, each health finding, and one `perfops.partitions.rotated` summary."""
    events: list[tuple[str, str, dict[str, Any]]] = []
    for t in report.tables:
        if t.default_rows:
            events.append(
                (EVENT + "default_rows", t.table, {"table": t.table, "rows": t.default_rows})
            )
        for h in t.state.health if t.state else []:  # the state the run left
            events.append(
                (EVENT + "health", t.table, {"table": t.table, "kind": h.kind, "detail": h.detail})
            )
        events.append(
            (
                EVENT + "rotated",
                t.table,
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
        )
    return events


def to_retire(plan: RotationPlan, leftovers: list[ExpiredTable]) -> list[ExpiredTable]:
    """This run's expired partitions (to detach), then the tables earlier runs detached and left
    (already detached), each once."""
    expiring = {e.label for e in plan.expire}
    return [
        ExpiredTable(
            name=e.name, schema_name=e.schema_name, lower=e.lower, upper=e.upper, attached=True
        )
        for e in plan.expire
    ] + [t for t in leftovers if t.label not in expiring]


def record_detaches(
    result: TableRotation,
    policy: PartitionPolicy,
    retiring: list[ExpiredTable],
    detached: dict[str, Detached],
    lock_timeout_ms: int,
) -> list[tuple[ExpiryOutcome, ExpiredTable]]:
    """Record what detaching did to each table to retire (`detached`, by label, for the ones this
    run detached) and return those that go on to be archived or dropped. A partition that could
    not be detached stays attached, fails, and goes no further."""
    ready: list[tuple[ExpiryOutcome, ExpiredTable]] = []
    for table in retiring:
        outcome = ExpiryOutcome(
            partition=table.label, action=policy.expired_action, status="detached"
        )
        result.expired.append(outcome)
        if table.attached:
            done = detached[table.label]
            if done.mode is None:
                outcome.status = "failed"
                where = (
                    f"{table.label} is left detach-pending (DETACH CONCURRENTLY stopped after "
                    f"its first step): its rows no longer read through {policy.table} and its "
                    "range takes no inserts until the next run finishes the detach (FINALIZE)"
                    if done.pending
                    else f"{table.label} stays attached"
                )
                outcome.detail = f"{done.error}; nothing dropped, {where}"
                record_problem(result, f"detaching {table.label} failed: {outcome.detail}")
                continue
            outcome.detach_mode = done.mode
            if done.mode == "plain":
                outcome.detail = (
                    f"{policy.table} has a DEFAULT partition, so PostgreSQL refuses DETACH "
                    f"CONCURRENTLY: detached with a plain DETACH under lock_timeout "
                    f"{lock_timeout_ms} ms"
                )
        if policy.expired_action != "detach_only":
            ready.append((outcome, table))
    return ready


def record_failure(
    result: TableRotation, outcome: ExpiryOutcome, error: str, *, failed: bool = True
) -> None:
    """An archive or drop that failed: nothing was dropped and the table stays detached. With
    `failed=False` the outcome keeps its status (a drop refused after a verified archive stays
    "archived, not dropped": the next run drops it)."""
    if failed:
        outcome.status = "failed"
    outcome.detail = f"{error}; nothing dropped, {outcome.partition} stays detached"
    record_problem(result, f"expiring {outcome.partition} failed: {outcome.detail}")


def record_drops(
    result: TableRotation,
    policy: PartitionPolicy,
    outcomes: list[ExpiryOutcome],
    dropped: list[Dropped],
) -> list[ExpiryOutcome]:
    """Record what dropping did to each table of `outcomes`; return the ones dropped. A table
    kept with a verified archive stays "archived, not dropped" (the next run drops it)."""
    by_name = {d.name: d for d in dropped}
    done: list[ExpiryOutcome] = []
    for outcome in outcomes:
        drop = by_name[outcome.partition]
        if drop.error is not None:
            archived = policy.expired_action == "archive_then_drop"
            record_failure(result, outcome, drop.error, failed=not archived)
            continue
        outcome.rows = drop.rows
        outcome.status = "dropped"
        done.append(outcome)
    return done


def record_preflight_failure(
    result: TableRotation, policy: PartitionPolicy, retiring: list[ExpiredTable], error: str
) -> None:
    """The policy's archive failed its preflight, so nothing of this table was detached,
    archived or dropped: each table to retire fails with the reason (an expired partition stays
    attached, a table an earlier run detached stays detached), and the reason is one problem."""
    for table in retiring:
        where = "stays attached" if table.attached else "stays detached"
        result.expired.append(
            ExpiryOutcome(
                partition=table.label,
                action=policy.expired_action,
                status="failed",
                detail=f"not detached, nothing dropped: {table.label} {where}",
            )
        )
    record_problem(
        result,
        f"{error}; detached nothing of {policy.table} ({len(retiring)} expired partition(s) "
        "wait for the next run)",
    )


def record_created(result: TableRotation) -> None:
    """Record the partitions that were not created: a failure is a failure of the run, a skip
    (rows in the way, beyond the rescue limit) a problem the artifact lists."""
    for c in result.created:
        if c.status == "failed":
            record_problem(result, f"partition {c.name} not created: {c.detail}")
        elif c.status == "skipped":
            result.problems.append(f"partition {c.name} not created: {c.detail}")


def record_problem(result: TableRotation, failure: str) -> None:
    """A step of the table's rotation failed: a problem the artifact lists, and a failure of the
    run."""
    result.problems.append(failure)
    result.failures.append(failure)


def failed_tables(report: RotationReport) -> list[TableRotation]:
    """The tables whose rotation failed, in whole (an error) or in part (a step)."""
    return [
        t
        for t in report.tables
        if t.error
        or t.failures
        or any(e.status in ("failed", "archived, not dropped") for e in t.expired)
        or any(c.status == "failed" for c in t.created)
    ]


def rotation_failure(
    report: RotationReport, denied: set[str] | None = None, privileges: str | None = None
) -> str | None:
    """What failed, for the run's state message: how many tables failed, the privilege message
    once for the tables the role may not change (`denied`), then each other table with its error
    or its first failure; None when nothing failed."""
    failed = failed_tables(report)
    if not failed:
        return None
    parts = [privileges] if privileges and denied else []
    parts += [
        f"{t.table}: {t.error or (t.failures[0] if t.failures else 'see the artifact')}"
        for t in failed
        if t.table not in (denied or set())
    ]
    return f"{len(failed)} of {len(report.tables)} table(s) failed: " + "; ".join(parts)
