"""check_index_health: unused, duplicate, covered and invalid indexes and the space each wastes.
Reports only; with `apply=True` drops the indexes named in `drop` (and only those), each
`CONCURRENTLY` after a re-check under an advisory lock. CLI `perfops indexes health`."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger
from pydantic import BaseModel

from blocks.resolve import resolve_postgres
from decisions.index_health import (
    DropOutcome,
    IndexFinding,
    IndexHealthSettings,
    LockedTable,
    classify_indexes,
    finding_rows,
    format_bytes,
    select_drops,
    wasted_bytes,
)
from perfops.redaction import install_log_redaction
from tasks.postgres.index_changes import drop_indexes
from tasks.postgres.indexes import fetch_index_catalog
from tasks.records import emit, publish_table

ARTIFACT_KEY = "perfops-index-health"
EVENT_CHECKED = "perfops.indexes.health_checked"
EVENT_DROPPED = "perfops.indexes.dropped"
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
) -> IndexHealthReport:
    """Check the indexes of one database and, when told, drop named ones.

    Args:
        postgres_block: name of a `perfops-postgres-target` block (default: `PERFOPS_DSN`, else
            the local demo database).
        settings: size threshold, schemas and timeouts (see `IndexHealthSettings`).
        apply: drop the indexes named in `drop`; without it nothing changes.
        drop: indexes to drop, each `schema.index` (or a name unique across schemas). Only
            findings of this check are dropped; anything else is refused with the reason.
    """
    install_log_redaction()
    logger = get_run_logger()
    pg = resolve_postgres(postgres_block)
    # The first contact fails at once (no retries) with a one-line reason.
    catalog = fetch_index_catalog.with_options(retries=0)(
        pg.value, settings.schemas, lock_timeout_ms=settings.catalog_lock_timeout_ms
    )
    findings = classify_indexes(
        catalog.indexes, min_size_bytes=settings.min_size_bytes, stats_reset=catalog.stats_reset
    )
    plan = select_drops(
        findings,
        catalog.indexes,
        drop or [],
        apply=apply,
        locked_tables=catalog.locked_tables,
        min_size_bytes=settings.min_size_bytes,
    )
    done = {
        o.name: o
        for o in (
            drop_indexes(
                pg.value,
                plan.to_drop,
                lock_timeout_ms=settings.drop_lock_timeout_ms,
                statement_timeout_ms=settings.drop_statement_timeout_ms,
            )
            if plan.to_drop
            else []
        )
    }
    drops = [
        done[o.name].model_copy(update={"requested": o.requested}) if o.name in done else o
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
    )

    rows = finding_rows(findings, drops, catalog.locked_tables) or [
        {
            "kind": "none",
            "index": "",
            "table": "",
            "reason": f"{len(catalog.indexes)} indexes checked: none unused, duplicate, "
            "covered or invalid",
            "action": "nothing to do",
        }
    ]
    publish_table(
        ARTIFACT_KEY,
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
        **{"perfops.database": dbname},
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
            **{"perfops.database": dbname},
        )
    for f in findings:
        logger.info("%-9s %s (%s): %s", f.kind, f.name, format_bytes(f.size_bytes), f.reason)
    for o in drops:
        logger.info("drop %s: %s (%s)", o.name, o.status, o.reason)
    return report
