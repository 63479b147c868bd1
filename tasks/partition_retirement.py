"""Retire a range-partitioned table's expired partitions: detach them, archive each to Parquet
with a verified manifest (or reuse a verified archive a crashed run finished), and only then drop
them, count-checked. Each step is its own task (`detach_partitions`, `archive_partition` /
`verify_archive`, `drop_detached_tables`); this module runs them in order for one table, records
each outcome (`decisions.partition_rotation`) and emits `perfops.partitions.detached`,
`.archived` and `.dropped` as each happens.

Before the first detach that depends on an archive, the archive target is checked
(`ArchivePreflight`): its block loads and it accepts a probe write, read and delete. A table whose
archive fails the check detaches nothing: its expired partitions stay attached, the outcome says
why, and the next run (with the archive fixed) does it. A partition whose archive fails later is
never dropped: it stays detached, the outcome says why, and the next run finishes it.
"""

from __future__ import annotations

import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from prefect import get_run_logger

from blocks.resolve import ArchiveStore, resolve_archive_store
from decisions.partition_rotation import (
    EVENT,
    Detached,
    Dropped,
    ExpiredTable,
    Expiring,
    ExpiryOutcome,
    RotationSettings,
    TableRotation,
    ToDrop,
    record_detaches,
    record_drops,
    record_failure,
    record_preflight_failure,
)
from decisions.partitioning import PartitionPolicy
from perfops import progress
from perfops.errors import PerfopsError
from perfops.priority import lower_thread_priority
from perfops.redaction import one_line
from tasks.partition_archives import ArchiveError, ArchiveSource, ensure_archive
from tasks.postgres.partition_changes import detach_partitions, drop_detached_tables
from tasks.records import emit
from tasks.storage import in_folder, probe_archive


class ArchivePreflight:
    """The archive targets of one run, each checked once, before the first detach that depends
    on it: the target resolves (its block exists and loads) and accepts a probe write, read
    (SHA-256 verified) and delete. Remembers each answer for the rest of the run.

    `folder`: keep every object under this folder of the archive (a fleet child's target name:
    the fleet's databases share the policies, so the archive, and have tables of one name)."""

    def __init__(self, folder: str | None = None) -> None:
        self._checked: dict[str, ArchiveStore | str] = {}
        self._folder = folder

    def check(self, archive: str) -> ArchiveStore:
        """The ready store of `archive`, or `ArchiveError` saying why it cannot be used."""
        if archive not in self._checked:
            try:
                store = resolve_archive_store(archive).value
                if self._folder:
                    store = in_folder(store, self._folder)
                probe_archive(store)
                self._checked[archive] = store
            except (PerfopsError, ValueError, OSError) as exc:
                self._checked[archive] = (
                    f"archive {archive} failed the preflight: {one_line(exc, empty='failed')}"
                )
        checked = self._checked[archive]
        if isinstance(checked, str):
            raise ArchiveError(checked)
        return checked


def retire_expired(
    target: Any,
    resource: str,
    policy: PartitionPolicy,
    key_column: str,
    retiring: list[ExpiredTable],
    settings: RotationSettings,
    workdir: Path,
    result: TableRotation,
    preflight: ArchivePreflight | None = None,
) -> None:
    """Detach, archive and drop `retiring` (this run's expired partitions and tables an earlier
    run left detached) by the policy's `expired_action`, recording every outcome in `result`;
    events go to `resource` (the table's). An archive that fails `preflight` (checked here when
    not given) detaches, archives and drops nothing."""
    logger = get_run_logger()
    schema_name, table_name = policy.schema_name, policy.table_name
    # The archive first, before any detach: a policy whose archive cannot be used changes nothing.
    store: ArchiveStore | None = None
    if policy.expired_action == "archive_then_drop" and retiring:
        assert policy.archive is not None
        try:
            store = (preflight or ArchivePreflight()).check(policy.archive)
        except ArchiveError as exc:
            record_preflight_failure(result, policy, retiring, str(exc))
            logger.error("%s: %s; nothing detached", policy.table, exc)
            return
    to_detach = [
        Expiring(name=t.name, schema_name=t.schema_name, lower=t.lower, upper=t.upper)
        for t in retiring
        if t.attached
    ]
    detached: dict[str, Detached] = {}
    # 1. Detach this run's expired partitions.
    if to_detach:
        progress.report(f"{policy.table}: detaching {len(to_detach)} expired partitions", 0, 1)
        try:
            done = detach_partitions(target, schema_name, table_name, to_detach, settings.timeouts)
        except (PerfopsError, psycopg.Error) as exc:  # the session itself: nothing was detached
            error = one_line(exc, empty="failed")
            done = [Detached(name=e.label, error=error) for e in to_detach]
        detached = {d.name: d for d in done}
    ready = record_detaches(result, policy, retiring, detached, settings.lock_timeout_ms)
    for outcome in result.expired:
        if outcome.status == "failed":
            logger.warning("detaching %s failed: %s", outcome.partition, outcome.detail)
        elif outcome.detach_mode is not None:
            payload = {"table": policy.table, "partition": outcome.partition}
            emit(EVENT + "detached", resource, {**payload, "mode": outcome.detach_mode})

    # 2. Archive each detached table (verified), a few at a time at a lower CPU priority.
    archived = [0]
    archived_lock = threading.Lock()

    def archive(outcome: ExpiryOutcome, table: ExpiredTable) -> None:
        started = time.monotonic()
        try:
            if store is None:
                raise ArchiveError("no archive store")
            source = ArchiveSource(
                schema_name=schema_name,
                parent=table_name,
                partition=table.name,
                partition_schema=table.schema_name,
                key_column=key_column,
                lower=table.lower,
                upper=table.upper,
                timezone=policy.timezone,
            )
            record = ensure_archive(
                target, store, source, settings, str(workdir), fresh=table.attached
            )
        except (PerfopsError, psycopg.Error, OSError) as exc:
            record_failure(result, outcome, one_line(exc, empty="failed"))
            logger.warning("expiring %s failed: %s", table.label, outcome.detail)
            return
        m = record.manifest
        outcome.archive_seconds = round(time.monotonic() - started, 3)
        outcome.rows, outcome.sha256, outcome.bytes = m.rows, m.sha256, m.bytes
        outcome.uri = record.uri
        outcome.status = "archived, not dropped"
        with archived_lock:
            archived[0] += 1
            progress.report(
                f"{policy.table}: archived {table.label} ({m.rows:,} rows)", archived[0], len(ready)
            )
        emit(
            EVENT + "archived",
            resource,
            {
                "table": policy.table,
                "partition": table.label,
                "rows": m.rows,
                "uri": record.uri,
                "sha256": m.sha256,
                "bytes": m.bytes,
                "manifest": record.manifest_uri,
            },
        )

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
                pool.submit(contextvars.copy_context().run, archive, outcome, table)
                for outcome, table in ready
            ]
            for future in futures:
                future.result()

    # 3. Drop only verified archives (or, for `drop`, every detached table), count-checked.
    droppable = [
        (outcome, table)
        for outcome, table in ready
        if outcome.status == "archived, not dropped" or policy.expired_action == "drop"
    ]
    if droppable:
        progress.report(f"{policy.table}: dropping {len(droppable)} expired tables", 0, 1)
        _drop(target, resource, policy, droppable, settings, result)
    if ready:
        result.retire_seconds = round(time.monotonic() - phase_started, 3)


def _drop(
    target: Any,
    resource: str,
    policy: PartitionPolicy,
    droppable: list[tuple[ExpiryOutcome, ExpiredTable]],
    settings: RotationSettings,
    result: TableRotation,
) -> None:
    archived = policy.expired_action == "archive_then_drop"
    outcomes = [o for o, _ in droppable]
    to_drop = [
        ToDrop(name=t.name, schema_name=t.schema_name, expected_rows=o.rows if archived else None)
        for o, t in droppable
    ]
    try:
        dropped = drop_detached_tables(
            target, policy.schema_name, policy.table_name, to_drop, settings.timeouts
        )
    except (PerfopsError, psycopg.Error) as exc:  # the session itself: nothing was dropped
        error = one_line(exc, empty="failed")
        dropped = [Dropped(name=o.partition, error=error) for o in outcomes]
    done = {o.partition for o in record_drops(result, policy, outcomes, dropped)}
    for outcome in outcomes:
        if outcome.partition in done:
            payload = {"table": policy.table, "partition": outcome.partition}
            emit(EVENT + "dropped", resource, {**payload, "rows": outcome.rows})
        else:
            get_run_logger().warning("expiring %s failed: %s", outcome.partition, outcome.detail)
