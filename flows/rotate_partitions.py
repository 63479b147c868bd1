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

Preflights: with `apply`, one query checks the role may alter each table (else it is left alone,
reported once: "needs ownership of ...: grant ... to ..."); before a policy's first detach, its
archive must load and accept a probe write, read and delete, or that table detaches nothing.

A failed archive never drops anything: the table stays detached and the run reports it; the next
run picks it up. Per hash policy: create missing remainders. Every run publishes a table artifact
and `perfops.partitions.*` events (created, detached, archived, dropped, default_rows, health,
rotated), then ends Failed when any table failed, the message naming each (`allow_partial`:
Completed when only some did).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from prefect import flow, get_run_logger

from blocks.resolve import resolve_postgres
from decisions.partition_rotation import (
    EVENT,
    ExpiredTable,
    RotationReport,
    RotationSettings,
    TableRotation,
    artifact_rows,
    failed_tables,
    planned_outcomes,
    record_created,
    rotation_events,
    rotation_failure,
    to_retire,
)
from decisions.partitioning import (
    HashPolicy,
    PartitionPolicy,
    Policy,
    load_policies,
    plan_hash,
    plan_rotation,
)
from perfops import progress
from perfops.errors import ConfigurationError, PerfopsError
from perfops.redaction import install_log_redaction, one_line
from tasks.partition_retirement import ArchivePreflight, retire_expired
from tasks.postgres.partition_changes import (
    create_hash_partitions,
    create_partitions,
    fetch_detached,
)
from tasks.postgres.partitions import (
    fetch_default_rows,
    fetch_hash_children,
    fetch_partitioned_table,
    qualified_name,
    to_existing,
)
from tasks.postgres.privileges import fetch_table_privileges
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-partitions-rotate"


def _resource(target: Any, table: str) -> str:
    return f"{target.resource_id()}/{table}"


def _rotate_range(
    target: Any,
    policy: PartitionPolicy,
    now: datetime,
    apply: bool,
    settings: RotationSettings,
    workdir: Path,
    preflight: ArchivePreflight,
) -> TableRotation:
    result = TableRotation(table=policy.table, kind="range")
    schema_name, table_name = policy.schema_name, policy.table_name
    qualified = qualified_name(schema_name, table_name)
    resource = _resource(target, policy.table)
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
    leftovers = [
        ExpiredTable(name=d.name, lower=d.lower, upper=d.upper, attached=False)
        for d in fetch_detached(target, schema_name, table_name)
    ]
    plan = plan_rotation(policy, now, existing, default_rows, settings.max_future_intervals)
    result.plan = plan
    result.problems.extend(plan.problems)
    retiring = to_retire(plan, leftovers)
    for t in retiring:
        if not t.attached:
            result.problems.append(
                f"{t.name} was detached by an earlier run and is still there: "
                + ("finishing its expiry" if apply else "the next --apply run finishes it")
            )
    if not apply:
        result.expired = planned_outcomes(plan, [t.name for t in leftovers], policy)
        return result

    # 1. Create ahead, moving rows waiting in the default partition.
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
        record_created(result)
        if result.created_names:
            emit(
                EVENT + "created",
                resource,
                {"table": policy.table, "partitions": result.created_names},
            )

    # 2. Retire the expired partitions: detach, archive (verified), only then drop.
    retire_expired(
        target, resource, policy, key_column, retiring, settings, workdir, result, preflight
    )
    return result


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


def _not_permitted(target: Any, chosen: list[Policy]) -> tuple[dict[str, str], str | None]:
    """Before any change, one query: the policies' tables this role may not alter (policy table
    -> why, for its row) and the message that says it once for all of them."""
    tables = [(p.schema_name, p.table_name) for p in chosen]
    check = fetch_table_privileges(target, tables, action="create")  # creates partitions too
    denied = check.refused(chosen, lambda p: (p.schema_name, p.table_name))
    return {p.table: why for p, why in denied}, check.message


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
    allow_partial: bool = False,
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
        allow_partial: end Completed when only some tables failed (the artifact, events and the
            state message still say which); default False: any failure ends the run Failed.
    """
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
    denied, privileges = _not_permitted(target, chosen) if apply else ({}, None)
    preflight = ArchivePreflight()
    with tempfile.TemporaryDirectory(prefix="perfops-partitions-") as tmp:
        for policy in chosen:
            kind = "range" if isinstance(policy, PartitionPolicy) else "hash"
            try:
                if policy.table in denied:
                    rotation = TableRotation(
                        table=policy.table, kind=kind, error=denied[policy.table]
                    )
                elif isinstance(policy, PartitionPolicy):
                    rotation = _rotate_range(
                        target, policy, at, apply, settings, Path(tmp), preflight
                    )
                else:
                    rotation = _rotate_hash(target, policy, apply, settings)
            except (PerfopsError, psycopg.Error, ValueError) as exc:
                first_error = first_error or exc
                rotation = TableRotation(
                    table=policy.table, kind=kind, error=one_line(exc, empty="failed")
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
        artifact_rows(report),
        f"Partition rotation on {pg.description}"
        + (" (dry run: planned only, nothing changed)" if not apply else "")
        + f": {report.summary}."
        + (f" Not changed: {privileges}." if privileges else ""),
    )
    for event, table, payload in rotation_events(report):
        emit(event, _resource(target, table), payload)
    return end_run(
        report,
        rotation_failure(report, set(denied), privileges),
        partial=0 < len(failed_tables(report)) < len(tables),
        allow_partial=allow_partial,
        error=first_error if len(tables) == 1 else None,  # one table: its error is the run's
    )
