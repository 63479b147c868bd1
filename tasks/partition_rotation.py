"""The steps `rotate_partitions` runs per table: a range policy (create ahead, rescue the default
partition's rows, retire expired partitions through `tasks.partition_retirement`) and a hash
policy (complete the partitions), each returning the table's `TableRotation`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from decisions.partition_rotation import (
    EVENT,
    ExpiredTable,
    RotationSettings,
    TableRotation,
    planned_outcomes,
    record_created,
    to_retire,
)
from decisions.partitioning import (
    DefaultRows,
    ExistingPartition,
    HashPolicy,
    PartitionPolicy,
    plan_hash,
    plan_rotation,
)
from perfops import progress
from perfops.errors import ConfigurationError
from tasks.partition_retirement import ArchivePreflight, retire_expired
from tasks.postgres.partition_changes import (
    create_hash_partitions,
    create_partitions,
    fetch_detached,
)
from tasks.postgres.partitions import (
    PartitionedTable,
    fetch_default_rows,
    fetch_hash_children,
    fetch_partitioned_table,
    qualified_name,
    to_existing,
)
from tasks.records import emit


def table_resource(target: Any, table: str) -> str:
    return f"{target.resource_id()}/{table}"


def rotate_range(
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
    resource = table_resource(target, policy.table)
    progress.report(f"{policy.table}: reading the catalog", 0, 1)
    meta = fetch_partitioned_table(target, qualified)
    if meta.strategy != "range":
        raise ConfigurationError(
            f"{policy.table} is {meta.strategy}-partitioned: a time policy (interval) needs a "
            "range-partitioned table; give a hash table `modulus` instead"
        )
    key_column = meta.key_column
    assert key_column is not None  # fetch_partitioned_table refuses anything else
    existing, default_rows = _read_children(target, policy, meta)
    result.default_rows = sum(d.rows for d in default_rows)
    leftovers: list[ExpiredTable] = []
    for d in fetch_detached(target, schema_name, table_name):
        if d.problem is not None:  # marked for this parent, but not provably this table
            result.problems.append(d.problem)
            continue
        leftovers.append(
            ExpiredTable(
                name=d.name,
                schema_name=None if d.schema_name == schema_name else d.schema_name,
                lower=d.lower,
                upper=d.upper,
                attached=False,
            )
        )
    if policy.expired_action == "detach_only":
        # What an earlier run detached is where this policy leaves it (a plain table): done, not
        # a leftover to finish or to report again on every run.
        leftovers = []
    plan = plan_rotation(policy, now, existing, default_rows, settings.max_future_intervals)
    result.plan = plan
    result.problems.extend(plan.problems)
    retiring = to_retire(plan, leftovers)
    for t in retiring:
        if not t.attached:
            result.problems.append(
                f"{t.label} was detached by an earlier run and is still there: "
                + ("finishing its expiry" if apply else "the next --apply run finishes it")
            )
    if not apply:
        result.expired = planned_outcomes(plan, [t.label for t in leftovers], policy)
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

        # The table as the creation left it: the expiry runs from it (an expired child is the
        # last child only if nothing newer was made), and the report describes it.
        progress.report(f"{policy.table}: reading the catalog again", 0, 1)
        existing, default_rows = _read_children(
            target, policy, fetch_partitioned_table(target, qualified)
        )
        result.after = plan_rotation(
            policy,
            now,
            existing,
            default_rows,
            settings.max_future_intervals,
            after_changes=True,
        )
        retiring = to_retire(result.after, leftovers)

    # 2. Retire the expired partitions: detach, archive (verified), only then drop.
    retire_expired(
        target, resource, policy, key_column, retiring, settings, workdir, result, preflight
    )
    return result


def _read_children(
    target: Any, policy: PartitionPolicy, meta: PartitionedTable
) -> tuple[list[ExistingPartition], list[DefaultRows]]:
    """The table's children as the plan takes them, and the rows waiting in its default
    partition (none without one)."""
    existing = to_existing(meta.children, meta.key_type, policy.timezone, policy.schema_name)
    if not meta.default or meta.key_column is None:
        return existing, []
    qualified = qualified_name(policy.schema_name, policy.table_name)
    return existing, fetch_default_rows(
        target, qualified, meta.key_column, policy.interval, policy.timezone
    )


def rotate_hash(
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
                table_resource(target, policy.table),
                {"table": policy.table, "partitions": result.created_names},
            )
    return result
