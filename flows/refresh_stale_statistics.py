"""refresh_stale_statistics: ANALYZE the tables whose planner statistics are stale (rows changed
since the last analyze >= `analyze_threshold` of their rows, or never analyzed), most stale first,
a batch at a time on a few connections, and nothing else. CLI `perfops stats refresh`.

ANALYZE only reads the table and rewrites its statistics, so the flow acts by default;
`dry_run=True` lists what it would do. VACUUM (ANALYZE) only when `policy.vacuum_dead_ratio` is
set. Every statement has its own `lock_timeout`; a table that fails is reported and the run goes
on. A run holds the advisory lock `stats-refresh` and refuses a replica. Before any ANALYZE, one
query checks which stale tables the role may analyze (owner, database owner, a member of either,
or superuser); the others are not attempted and reported once ("needs ownership of ...").

The run ends Failed when a table failed or was not permitted, the state message saying which and
why ("23 of 23 tables failed: needs ownership of ..."), unless `allow_partial` and some tables
were analyzed; a run with nothing stale says so in its message.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from blocks import PostgresTarget
from blocks.resolve import resolve_postgres
from decisions.fleet import FleetReport
from decisions.staleness import (
    Decision,
    StatisticsPolicy,
    batches,
    decide,
    filter_miss,
    percent,
    threshold_percent,
)
from decisions.statistics_report import Result, StatisticsReport, TableOutcome, artifact_rows
from perfops.errors import ConfigurationError
from perfops.redaction import install_log_redaction
from tasks.fleet_runs import database_slots, fan_out, verified_fleet_target
from tasks.postgres.privileges import fetch_table_privileges
from tasks.postgres.tables import (
    TableResult,
    analyze_tables,
    fetch_analyze_marks,
    fetch_table_stats,
    refresh_session,
    refreshed,
)
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-stats-refresh"
EVENT_REFRESHED = "perfops.stats.refreshed"
EVENT_PREVIEWED = "perfops.stats.previewed"
FLEET_ARTIFACT_KEY = "perfops-stats-refresh-fleet"
EVENT_FLEET = "perfops.stats.fleet_refreshed"
# The report and the artifact list every table acted on (or that would be, in a dry run) and,
# of the tables left alone, the ones nearest to the threshold with a count per reason for the
# rest: a person wants those, not thousands of fresh rows (and Prefect walks every returned
# object, so a smaller report also ends the run sooner).
LISTED_SKIPPED = 50
EVENT_FAILED_TABLES = 100


def _outcome(
    decision: Decision, result: TableResult | None, dry_run: bool, denied: str | None = None
) -> TableOutcome:
    t = decision.table
    outcome: Result
    if not decision.acts:
        outcome = "skipped"
    elif denied is not None:
        outcome = "not permitted"
    elif dry_run:
        vacuum = decision.action == "vacuum-analyze"
        outcome = "would vacuum and analyze" if vacuum else "would analyze"
    elif result is None or result.status == "failed":
        outcome = "failed"
    elif result.status == "missing":
        outcome = "missing"
    else:
        outcome = "vacuumed and analyzed" if decision.action == "vacuum-analyze" else "analyzed"
    return TableOutcome(
        table=t.name,
        schema_name=t.schema_name,
        table_name=t.table_name,
        action=decision.action,
        code=decision.code,
        reason=decision.reason,
        rows=round(t.rows),
        changed=percent(t.change_ratio),
        result=outcome,
        duration_ms=result.duration_ms if result else None,
        error=denied
        or (result.error if result else ("not attempted" if outcome == "failed" else None)),
    )


def _not_permitted(
    target: PostgresTarget, decisions: list[Decision]
) -> tuple[dict[int, str], str | None]:
    """The stale tables this role may not analyze (relid -> its row's reason), in one query, and
    what it needs for them, said once."""
    acting = [d.table for d in decisions if d.acts]
    if not acting:
        return {}, None
    check = fetch_table_privileges(
        target, [(t.schema_name, t.table_name) for t in acting], action="analyze"
    )
    denied = check.refused(acting, lambda t: (t.schema_name, t.table_name))
    return {t.relid: why for t, why in denied}, check.message


@flow(
    name="refresh_stale_statistics",
    description="ANALYZE the tables whose statistics are stale (rows changed since the last "
    "analyze >= the threshold, or never analyzed), most stale first, on a few connections, each "
    "with its own lock_timeout; reports tables that fail and goes on. dry_run lists only.",
    log_prints=False,
)
def refresh_stale_statistics(
    postgres_block: str | None = None,
    policy: StatisticsPolicy = StatisticsPolicy(),  # noqa: B008 - frozen model, safe default
    dry_run: bool = False,
    allow_partial: bool = False,
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> StatisticsReport | FleetReport:
    """Refresh stale planner statistics in one database, or in every target of a fleet.

    Args:
        postgres_block: name of a `perfops-postgres-target` block (default: `PERFOPS_DSN`, else
            the local demo database).
        policy: what counts as stale (`analyze_threshold`, default 0.1), what to leave alone,
            optional VACUUM (`vacuum_dead_ratio`), parallelism and per-statement timeouts.
        dry_run: only list what would be analyzed and why; change nothing.
        allow_partial: end Completed when some tables were analyzed and others failed (the
            artifact, event and state message still say which); default False: Failed.
        targets: run over a fleet instead (`deployments/fleet.yaml`, docs/fleet.md): a named
            fleet, `all`, a label `key=value`, or a list of target names. One child run per
            target (named `refresh_stale_statistics-<target>`), a summary artifact
            `perfops-stats-refresh-fleet`; Failed when any target failed.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child: keys its artifact
            `perfops-stats-refresh-<target>`, labels its event `perfops.target` and takes the
            target's cluster slot. Unless `dry_run`, every run holds its database's slot.
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    if targets is not None:  # the parent of a fleet run: one child run per target
        return fan_out(
            refresh_stale_statistics,
            targets,
            fleet_file,
            {"policy": policy, "dry_run": dry_run, "allow_partial": allow_partial},
            changes=not dry_run,
            artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET,
            dry_run=dry_run,
            block_given=postgres_block,
        )
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    logger = get_run_logger()
    started = time.monotonic()
    pg = resolve_postgres(postgres_block)
    target = pg.value
    results: dict[int, TableResult] = {}
    denied: dict[int, str] = {}
    privileges: str | None = None
    with (
        database_slots(target, changes=not dry_run, fleet_target=fleet_target),
        refresh_session(target, dry_run=dry_run),
    ):
        stats = fetch_table_stats(target, policy.include_schemas)
        miss = filter_miss(stats, policy)
        if miss.nothing and fleet_target is None:  # a typo: fail before any work
            raise ConfigurationError(miss.error)
        # in a fleet, a database without the tables has nothing to do (the note says why)
        decisions = decide(stats, policy)
        if not dry_run:  # before any ANALYZE: the tables this role may not analyze, said once
            denied, privileges = _not_permitted(target, decisions)
        work = batches([d for d in decisions if d.table.relid not in denied], policy.batch_size)
        logger.info(
            "%s: %d tables, %d stale (threshold %s)%s",
            pg.description,
            len(decisions),
            sum(len(b) for b in work),
            threshold_percent(policy.analyze_threshold),
            " - dry run, nothing changes" if dry_run else "",
        )
        if not dry_run:
            for batch in work:
                for r in analyze_tables(
                    target,
                    batch,
                    parallelism=policy.parallelism,
                    lock_timeout_ms=policy.lock_timeout_ms,
                    statement_timeout_ms=policy.statement_timeout_ms,
                ):
                    results[r.relid] = r
            before = {t.relid: t for t in stats}
            done = [relid for relid, r in results.items() if r.status == "ok"]
            marks = fetch_analyze_marks(target, done)
            for relid in done:
                if not refreshed(before[relid], marks.get(relid)):
                    results[relid] = results[relid].model_copy(
                        update={
                            "status": "failed",
                            "error": "the statement finished but pg_stat_user_tables shows no "
                            "new analyze",
                        }
                    )

    acted = [
        _outcome(d, results.get(d.table.relid), dry_run, denied.get(d.table.relid))
        for d in decisions
        if d.acts
    ]
    skipped = [d for d in decisions if not d.acts]
    by_reason: dict[str, int] = {}
    for d in skipped:
        by_reason[d.code] = by_reason.get(d.code, 0) + 1
    failed = [o for o in acted if o.result in ("failed", "not permitted")]
    report = StatisticsReport(
        target=pg.description,
        dry_run=dry_run,
        analyze_threshold=policy.analyze_threshold,
        considered=len(decisions),
        analyzed=sum(o.result in ("analyzed", "vacuumed and analyzed") for o in acted),
        vacuumed=sum(o.result == "vacuumed and analyzed" for o in acted),
        failed=len(failed),
        missing=sum(o.result == "missing" for o in acted),
        skipped=len(skipped),
        would_analyze=sum(o.result.startswith("would") for o in acted),
        failed_tables=[o.table for o in failed],
        skipped_by_reason=by_reason,
        seconds=round(time.monotonic() - started, 3),
        tables=acted + [_outcome(d, None, dry_run) for d in skipped[:LISTED_SKIPPED]],
        not_permitted=len(denied),
        privileges=privileges,
        unmatched=miss.text,
    )
    if report.unmatched:
        logger.warning("%s", report.unmatched)
    for o in failed:
        if o.result == "failed":
            logger.warning("%s failed: %s", o.table, o.error)
    if privileges:
        logger.warning("%d tables not attempted: %s", len(denied), privileges)
    logger.info("%s in %.1f s", report.summary, report.seconds)

    publish_table(
        f"{ARTIFACT_KEY}-{fleet_target}" if fleet_target else ARTIFACT_KEY,
        artifact_rows(report),
        f"Statistics refresh on {pg.description}"
        + (" (dry run, nothing changed)" if dry_run else "")
        + f": {report.summary}; threshold {threshold_percent(policy.analyze_threshold)} of rows "
        "changed since the last analyze. Every table acted on is listed; of the others, the "
        f"{LISTED_SKIPPED} nearest to the threshold, then a count per reason."
        + (f" Not permitted: {privileges}." if privileges else "")
        + (f" {report.unmatched.capitalize()}." if report.unmatched else ""),
    )
    outcome = "dry-run" if dry_run else ("partial" if failed else "complete")
    resource = target.resource_id()  # perfops.postgres.<host>:<port>/<dbname>
    emit(
        EVENT_PREVIEWED if dry_run else EVENT_REFRESHED,
        resource,
        {
            "dry_run": dry_run,
            "considered": report.considered,
            "analyzed": report.analyzed,
            "vacuumed": report.vacuumed,
            "failed": report.failed,
            "skipped": report.skipped,
            "would_analyze": report.would_analyze,
            "failed_tables": report.failed_tables[:EVENT_FAILED_TABLES],
            "not_permitted": report.not_permitted,
            "analyze_threshold": policy.analyze_threshold,
            "seconds": report.seconds,
        },
        **{"perfops.database": resource.rpartition("/")[2], "perfops.outcome": outcome},
        **({"perfops.target": fleet_target} if fleet_target else {}),
    )
    return end_run(
        report,
        report.failure,
        partial=report.analyzed > 0,
        allow_partial=allow_partial,
        note=None
        if acted
        else f"nothing to do: {report.unmatched}"
        if miss.nothing
        else f"nothing to do: none of the {report.considered} tables is stale (threshold "
        f"{threshold_percent(policy.analyze_threshold)} of rows changed since the last analyze)",
    )
