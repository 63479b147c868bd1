"""rotate_partitions: keep time-partitioned tables rotated. Plans always; changes only with
`apply=True`. CLI `perfops partitions rotate`.

Per range policy: read the table and its children, the rows in its default partition and any
table an earlier run detached; plan (`decisions.partitioning.plan_rotation`); then, with `apply`:

1. create the current and `premake` next partitions, moving rows that wait in the default
   partition into them in the same transaction; then read the table again and plan again: the
   expiry (the last child counted among the children that now exist) and the report (health,
   gaps, kept children) work from the table as the creation left it;
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from prefect import flow, get_run_logger

from blocks.resolve import resolve_postgres
from decisions.fleet import FleetReport, keyed, target_labels
from decisions.partition_rotation import (
    RotationReport,
    RotationSettings,
    TableRotation,
    artifact_rows,
    failed_tables,
    rotation_events,
    rotation_failure,
)
from decisions.partitioning import (
    HashPolicy,
    PartitionPolicy,
    Policy,
    load_policies,
    refuse_duplicates,
)
from perfops.clock import as_utc
from perfops.errors import ConfigurationError, PerfopsError
from perfops.redaction import install_log_redaction, one_line
from tasks.fleet_runs import database_slots, fan_out, verified_fleet_target
from tasks.partition_retirement import ArchivePreflight
from tasks.partition_rotation import rotate_hash, rotate_range, table_resource
from tasks.postgres.privileges import fetch_table_privileges
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-partitions-rotate"
FLEET_ARTIFACT_KEY = "perfops-partitions-rotate-fleet"
EVENT_FLEET = "perfops.partitions.fleet_rotated"
FUTURE_SLACK = timedelta(minutes=5)  # a `now` this far ahead of the clock is a preview


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
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> RotationReport | FleetReport:
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
        targets: run over a fleet instead (docs/fleet.md): a named fleet, `all`, a label
            `key=value`, or a list of target names; one child run per target with the same
            policies, a summary artifact `perfops-partitions-rotate-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child (its artifact
            `perfops-partitions-rotate-<target>`, its event label `perfops.target`, its cluster
            slot). A run with `apply` holds its database's slot.
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    now = as_utc(now) if now is not None else None  # typed without a zone (UI, API): UTC
    if apply and now is not None and now > datetime.now(UTC) + FUTURE_SLACK:
        # a preview of a later day, applied today, would expire partitions still inside their
        # retention (and drop them, with expired_action drop): through the API as on the CLI
        raise ConfigurationError(
            f"now {now.isoformat()} is in the future: it previews a later run; run it without "
            "apply (a later time applied now would expire partitions still inside their "
            "retention)"
        )
    if targets is not None:  # the parent of a fleet run: one child run per target
        return fan_out(
            rotate_partitions,
            targets,
            fleet_file,
            {
                "policies": policies,
                "policies_file": policies_file,
                "apply": apply,
                "settings": settings,
                "now": now,
                "allow_partial": allow_partial,
            },
            changes=apply,
            artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET,
            dry_run=not apply,
            block_given=postgres_block,
        )
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
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
    refuse_duplicates(chosen)  # one table, two rules: which would win is not a choice to guess
    with database_slots(target, changes=apply, fleet_target=fleet_target):
        at = now or datetime.now(UTC)
        tables: list[TableRotation] = []
        first_error: Exception | None = None
        denied, privileges = _not_permitted(target, chosen) if apply else ({}, None)
        # a fleet's databases share one archive: each target archives under its own folder
        preflight = ArchivePreflight(folder=fleet_target)
        with tempfile.TemporaryDirectory(prefix="perfops-partitions-") as tmp:
            for policy in chosen:
                kind = "range" if isinstance(policy, PartitionPolicy) else "hash"
                try:
                    if policy.table in denied:
                        rotation = TableRotation(
                            table=policy.table, kind=kind, error=denied[policy.table]
                        )
                    elif isinstance(policy, PartitionPolicy):
                        rotation = rotate_range(
                            target, policy, at, apply, settings, Path(tmp), preflight
                        )
                    else:
                        rotation = rotate_hash(target, policy, apply, settings)
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
            keyed(ARTIFACT_KEY, fleet_target),
            artifact_rows(report),
            f"Partition rotation on {pg.description}"
            + (" (dry run: planned only, nothing changed)" if not apply else "")
            + f": {report.summary}."
            + (f" Not changed: {privileges}." if privileges else ""),
        )
        for event, table, payload in rotation_events(report):
            emit(event, table_resource(target, table), payload, **target_labels(fleet_target))
        return end_run(
            report,
            rotation_failure(report, set(denied), privileges),
            partial=0 < len(failed_tables(report)) < len(tables),
            allow_partial=allow_partial,
            error=first_error if len(tables) == 1 else None,  # one table: its error is the run's
        )
