"""check_index_health: unused, duplicate, covered and invalid indexes and the space each wastes.
Reports only; with `apply=True` drops the indexes named in `drop` (and only those), each
`CONCURRENTLY` after a re-check under an advisory lock. CLI `perfops indexes health`.

Before dropping, one query checks the role owns (or is a member of the owner of) each table; the
others are refused and reported once ("needs ownership of ..."). The run ends Failed when a
named drop was refused or failed, or a table could not be checked (locked by another session),
the state message saying which (`allow_partial`: Completed when only part failed); a check that
finds nothing says so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from pydantic import BaseModel

from blocks import PostgresTarget
from blocks.resolve import resolve_postgres
from decisions.fleet import FleetReport, keyed, target_labels
from decisions.index_health import (
    DropOutcome,
    IndexCatalog,
    IndexFinding,
    IndexHealthSettings,
    IndexLocation,
    LockedTable,
    classify_indexes,
    finding_rows,
    format_bytes,
    qualified_name,
    resolve_name,
    schemas_without_indexes,
    select_drops,
    wasted_bytes,
)
from perfops.redaction import install_log_redaction
from tasks.fleet_runs import database_slots, fan_out, verified_fleet_target
from tasks.postgres.index_changes import drop_indexes
from tasks.postgres.indexes import fetch_index_catalog, fetch_index_locations
from tasks.postgres.privileges import fetch_table_privileges
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-index-health"
EVENT_CHECKED = "perfops.indexes.health_checked"
EVENT_DROPPED = "perfops.indexes.dropped"
FLEET_ARTIFACT_KEY = "perfops-index-health-fleet"
EVENT_FLEET = "perfops.indexes.fleet_health_checked"
DEFAULT_SETTINGS = IndexHealthSettings()


class IndexHealthReport(BaseModel):
    """What check_index_health found and did."""

    database: str  # user@host:port/dbname, no password
    origin: str
    settings: IndexHealthSettings
    applied: bool
    stats_reset: datetime | None
    indexes_checked: int
    findings: list[IndexFinding]  # most wasted bytes first
    wasted_bytes: int
    locked_tables: list[LockedTable]  # not checked: locked by another session
    drops: list[DropOutcome]  # one per name given in `drop`, in that order
    unmatched: str = ""  # the asked schemas without an index ("no index in schemas x (--schema)")

    @property
    def dropped(self) -> list[DropOutcome]:
        return [d for d in self.drops if d.status == "dropped"]


@flow(
    name="check_index_health",
    description="Find unused, duplicate, covered and invalid indexes and the space each wastes. "
    "Report only, unless apply=True: then drop the indexes named in `drop`, each CONCURRENTLY "
    "after a re-check under an advisory lock.",
    log_prints=False,
)
def check_index_health(
    postgres_block: str | None = None,
    settings: IndexHealthSettings = DEFAULT_SETTINGS,
    apply: bool = False,
    drop: list[str] | None = None,
    allow_partial: bool = False,
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> IndexHealthReport | FleetReport:
    """Check the indexes of one database and, when told, drop named ones.

    Args:
        postgres_block: name of a `perfops-postgres-target` block (default: `PERFOPS_DSN`, else
            the local demo database).
        settings: size threshold, schemas and timeouts (see `IndexHealthSettings`).
        apply: drop the indexes named in `drop`; without it nothing changes.
        drop: indexes to drop, each `schema.index` (or a name unique across schemas). Only
            findings of this check are dropped; anything else is refused with the reason.
        allow_partial: end Completed when only part failed (some drops refused or failed, some
            tables locked); the artifact and state message still say what. Default False.
        targets: run over a fleet instead (docs/fleet.md): a named fleet, `all`, a label
            `key=value`, or a list of target names; one child run per target (each dropping
            only what `drop` names and it found), a summary artifact
            `perfops-index-health-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child (its artifact
            `perfops-index-health-<target>`, its event label `perfops.target`, its cluster
            slot). A run that drops holds its database's slot.
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    if targets is not None:  # the parent of a fleet run: one child run per target
        return fan_out(
            check_index_health,
            targets,
            fleet_file,
            {
                "settings": settings,
                "apply": apply,
                "drop": drop,
                "allow_partial": allow_partial,
            },
            changes=apply and bool(drop),
            artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET,
            dry_run=not apply,
            describe=lambda r: f"{len(r.findings)} findings, {len(r.dropped)} dropped",
            block_given=postgres_block,
        )
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    logger = get_run_logger()
    pg = resolve_postgres(postgres_block)
    with database_slots(pg.value, changes=apply and bool(drop), fleet_target=fleet_target):
        # The first contact fails at once (no retries) with a one-line reason.
        catalog = fetch_index_catalog.with_options(retries=0)(
            pg.value, settings.schemas, lock_timeout_ms=settings.catalog_lock_timeout_ms
        )
        findings = classify_indexes(
            catalog.indexes,
            min_size_bytes=settings.min_size_bytes,
            stats_reset=catalog.stats_reset,
            now=datetime.now(UTC),  # an index perfops built within the grace is not unused
            grace=timedelta(days=settings.new_index_grace_days),
        )
        plan = select_drops(
            findings,
            catalog.indexes,
            drop or [],
            apply=apply,
            locked_tables=catalog.locked_tables,
            min_size_bytes=settings.min_size_bytes,
            elsewhere=_unread(pg.value, catalog, drop or []),
            schemas=settings.schemas or [],
        )
        refused, privileges = _not_permitted(pg.value, plan.to_drop)
        to_drop = [f for f in plan.to_drop if f.name not in refused]
        done = {
            o.name: o
            for o in (
                drop_indexes(
                    pg.value,
                    to_drop,
                    lock_timeout_ms=settings.drop_lock_timeout_ms,
                    statement_timeout_ms=settings.drop_statement_timeout_ms,
                )
                if to_drop
                else []
            )
        }
        drops = [
            done[o.name].model_copy(update={"requested": o.requested})
            if o.name in done
            else o.model_copy(update={"status": "refused", "reason": refused[o.name]})
            if o.name in refused
            else o
            for o in plan.outcomes
        ]
        report = IndexHealthReport(
            database=pg.value.describe(),
            origin=pg.origin,
            settings=settings,
            applied=apply,
            stats_reset=catalog.stats_reset,
            indexes_checked=len(catalog.indexes),
            findings=findings,
            wasted_bytes=wasted_bytes(findings),
            locked_tables=catalog.locked_tables,
            drops=drops,
            unmatched=schemas_without_indexes(catalog.indexes, settings.schemas),
        )
        if report.unmatched:
            logger.warning("%s", report.unmatched)

        rows = finding_rows(findings, drops, catalog.locked_tables) or [
            {
                "index": "",
                "result": "nothing to do",
                "reason": f"{len(catalog.indexes)} indexes checked: none unused, duplicate, "
                "covered or invalid" + (f"; {report.unmatched}" if report.unmatched else ""),
                "kind": "none",
                "table": "",
            }
        ]
        publish_table(
            keyed(ARTIFACT_KEY, fleet_target),
            rows,
            f"Index health of {report.database}: {len(findings)} findings wasting "
            f"{format_bytes(report.wasted_bytes)}; "
            + (
                f"{len(report.dropped)} dropped"
                if apply
                else "report only (drop with apply=True and drop=[schema.index, ...])"
            ),
        )
        resource = pg.value.resource_id()
        dbname = resource.rpartition("/")[2]
        counts: dict[str, int] = {}
        for f in findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        emit(
            EVENT_CHECKED,
            resource,
            {
                "database": dbname,
                "indexes_checked": report.indexes_checked,
                "findings": counts,
                "wasted_bytes": report.wasted_bytes,
                "locked_tables": [f"{t.schema_name}.{t.table_name}" for t in catalog.locked_tables],
                "applied": apply,
                "drops": {o.name: o.status for o in drops},
            },
            **{"perfops.database": dbname, **target_labels(fleet_target)},
        )
        if report.dropped:
            emit(
                EVENT_DROPPED,
                resource,
                {
                    "database": dbname,
                    "indexes": [
                        {"index": o.name, "size_bytes": o.size_bytes, "reason": o.reason}
                        for o in report.dropped
                    ],
                    "freed_bytes": sum(o.size_bytes for o in report.dropped),
                },
                **{"perfops.database": dbname, **target_labels(fleet_target)},
            )
        for f in findings:
            logger.info("%-9s %s (%s): %s", f.kind, f.name, format_bytes(f.size_bytes), f.reason)
        for o in drops:
            logger.info("drop %s: %s (%s)", o.name, o.status, o.reason)
        not_done = [o for o in drops if o.status in ("refused", "failed")]
        first = next((o for o in not_done if o.name not in refused), None)
        why = ([privileges] if privileges else []) + (
            [f"{first.name}: {first.reason}"] if first else []
        )
        locked = [qualified_name(t.schema_name, t.table_name) for t in catalog.locked_tables]
        failed = [
            f"{len(not_done)} of {len(drops)} drops not done: {'; '.join(why)}" if not_done else "",
            f"{len(locked)} tables not checked, locked by another session: {', '.join(locked[:5])}"
            if locked
            else "",
        ]
        return end_run(
            report,
            "; ".join(filter(None, failed)) or None,
            partial=len(not_done) < len(drops) or not not_done,
            allow_partial=allow_partial,
            note=None
            if findings or drops
            else f"nothing to do: {report.unmatched}"
            if report.unmatched and not catalog.indexes
            else f"nothing to do: {len(catalog.indexes)} indexes checked, none unused, duplicate, "
            "covered or invalid",
        )


def _unread(target: PostgresTarget, catalog: IndexCatalog, drop: list[str]) -> list[IndexLocation]:
    """Every index of the database by name (one pg_class query), read only when a name to drop
    is not among the indexes checked: it may be outside `--schema`, or nowhere."""
    locked = [
        IndexLocation(schema_name=t.schema_name, index_name=n, table_name=t.table_name)
        for t in catalog.locked_tables
        for n in t.index_names
    ]
    if all(resolve_name(n, catalog.indexes) or resolve_name(n, locked) for n in drop):
        return []
    return fetch_index_locations(target)


def _not_permitted(
    target: PostgresTarget, to_drop: list[IndexFinding]
) -> tuple[dict[str, str], str | None]:
    """Before any drop, one query: the indexes whose table this role does not own (index name ->
    why), and what it needs, said once."""
    if not to_drop:
        return {}, None
    check = fetch_table_privileges(target, [(f.schema_name, f.table_name) for f in to_drop])
    refused = check.refused(to_drop, lambda f: (f.schema_name, f.table_name))
    return {f.name: why for f, why in refused}, check.message
