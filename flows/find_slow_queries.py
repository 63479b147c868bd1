"""find_slow_queries: the statements that cost the database most, from pg_stat_statements, each
with why it is listed and optionally its generic plan. Read-only; CLI `perfops queries slow`."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger
from pydantic import BaseModel

from blocks import PostgresTarget
from blocks.resolve import resolve_postgres
from decisions.fleet import FleetReport, keyed, target_labels
from decisions.slow_queries import (
    INSUFFICIENT_PRIVILEGE,
    HiddenStatements,
    PlanOutcome,
    SlowQuerySettings,
    SlowStatement,
    explain_skip_reason,
    format_ms,
    pick_slow_statements,
    statement_rows,
    summarize_plan,
)
from perfops.redaction import install_log_redaction
from tasks.fleet_runs import database_slots, fan_out, verified_fleet_target
from tasks.postgres.statements import (
    explain_statements,
    fetch_hidden_statements,
    fetch_statement_stats,
    fetch_statements_reset,
    statements_since,
)
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-slow-queries"
FLEET_ARTIFACT_KEY = "perfops-slow-queries-fleet"
EVENT_FLEET = "perfops.queries.fleet_checked"
EVENT_CHECKED = "perfops.queries.checked"
EVENT_SLOW_FOUND = "perfops.queries.slow_found"
DEFAULT_SETTINGS = SlowQuerySettings()


class SlowQueryReport(BaseModel):
    """What find_slow_queries found."""

    database: str  # user@host:port/dbname, no password
    origin: str  # block, environment or embedded default
    settings: SlowQuerySettings
    statements_seen: int  # distinct statements pg_stat_statements holds for this database
    statements: list[SlowStatement]  # most total time first
    hidden: HiddenStatements | None = None  # other roles' statements this role cannot see
    # when pg_stat_statements was last reset (PostgreSQL 14+; None: unknown): every figure
    # counts from then, so a reset an hour ago means an hour of workload
    statements_reset: datetime | None = None

    @property
    def over_threshold(self) -> int:
        return sum(1 for s in self.statements if s.mean_ms >= self.settings.threshold_ms)

    @property
    def summary(self) -> str:
        return (
            f"{len(self.statements)} of {self.statements_seen} statements listed, "
            f"{self.over_threshold} over {format_ms(self.settings.threshold_ms)} ms"
        ) + (f"; {self.hidden.warning}" if self.hidden else "")


@flow(
    name="find_slow_queries",
    description="List the statements over a mean-time threshold and the top N by total time "
    "from pg_stat_statements, each with why it is listed, optionally with its generic plan. "
    "Read-only.",
    log_prints=False,
)
def find_slow_queries(
    postgres_block: str | None = None,
    settings: SlowQuerySettings = DEFAULT_SETTINGS,
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> SlowQueryReport | FleetReport:
    """Find the slow statements of one database, or of every target of a fleet.

    Args:
        postgres_block: name of a `perfops-postgres-target` block (default: `PERFOPS_DSN`, else
            the local demo database).
        settings: thresholds and EXPLAIN options (see `SlowQuerySettings`).
        targets: run over a fleet instead (docs/fleet.md): a named fleet, `all`, a label
            `key=value`, or a list of target names; one child run per target, a summary
            artifact `perfops-slow-queries-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child (its artifact
            `perfops-slow-queries-<target>`, its event label `perfops.target`, its cluster slot).
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    if targets is not None:  # the parent of a fleet run: one child run per target
        return fan_out(
            find_slow_queries,
            targets,
            fleet_file,
            {"settings": settings},
            changes=False,
            artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET,
            dry_run=False,
            block_given=postgres_block,
        )
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    logger = get_run_logger()
    pg = resolve_postgres(postgres_block)
    with database_slots(pg.value, changes=False, fleet_target=fleet_target):
        # The first contact fails at once (no retries) with a one-line reason: an unreachable
        # server or a missing pg_stat_statements is not cured by waiting. `min_calls` applies after
        # the rows of several roles are merged.
        stats = fetch_statement_stats.with_options(retries=0)(
            pg.value, min_calls=1, limit=settings.fetch_limit
        )
        statements = pick_slow_statements(
            stats,
            threshold_ms=settings.threshold_ms,
            top=settings.top,
            min_calls=settings.min_calls,
        )
        seen = len({s.queryid for s in stats})
        hidden = fetch_hidden_statements(pg.value)  # listed around them, they would go unsaid
        reset = fetch_statements_reset(pg.value)
        if settings.explain and statements:
            statements = _with_plans(pg.value, statements, settings)

        report = SlowQueryReport(
            database=pg.value.describe(),
            origin=pg.origin,
            settings=settings,
            statements_seen=seen,
            statements=statements,
            hidden=hidden,
            statements_reset=reset,
        )
        if hidden:
            logger.warning("%s", hidden.warning)
        # a run with nothing to list says why, and since when it counted (a reset an hour ago
        # leaves an hour of workload: "none over the threshold" then says little)
        nothing = (
            f"none of the {statements_since(seen, reset)} is over the threshold"
            if seen
            else statements_since(0, reset)
        )
        rows = statement_rows(statements) or [{"rank": "-", "reason": nothing, "query": ""}]
        if hidden:
            rows.append({"rank": "-", "reason": hidden.warning, "query": INSUFFICIENT_PRIVILEGE})
        publish_table(
            keyed(ARTIFACT_KEY, fleet_target),
            rows,
            f"Slow statements of {report.database}: mean >= {format_ms(settings.threshold_ms)} ms "
            f"or top {settings.top} by total time ({len(statements)} of {seen} statements)"
            + (f". Not seen: {hidden.warning}" if hidden else ""),
        )
        resource = pg.value.resource_id()
        dbname = resource.rpartition("/")[2]
        payload = {
            "database": dbname,
            "statements_seen": seen,
            "listed": len(statements),
            "over_threshold": report.over_threshold,
            "threshold_ms": settings.threshold_ms,
            "top": settings.top,
            "queryids": [str(s.queryid) for s in statements],
            "hidden_statements": hidden.statements if hidden else 0,
        }
        labels = {"perfops.database": dbname, **target_labels(fleet_target)}
        emit(EVENT_CHECKED, resource, payload, **labels)
        if report.over_threshold:
            emit(EVENT_SLOW_FOUND, resource, payload, **labels)
        for s in statements:
            logger.info(
                "#%d mean %s ms, %d calls: %s [%s]",
                s.rank_by_total,
                format_ms(s.mean_ms),
                s.calls,
                s.query[:120],
                s.why,
            )
        return end_run(report, note=None if statements else nothing)


def _with_plans(
    target: PostgresTarget, statements: list[SlowStatement], settings: SlowQuerySettings
) -> list[SlowStatement]:
    """Attach a generic plan, or the reason there is none, to every statement (one task)."""
    skipped = {s.queryid: explain_skip_reason(s.query) for s in statements}
    to_plan = [s for s in statements if skipped[s.queryid] is None]
    results = (
        explain_statements(
            target,
            [s.query for s in to_plan],
            lock_timeout_ms=settings.explain_lock_timeout_ms,
            statement_timeout_ms=settings.explain_statement_timeout_ms,
        )
        if to_plan
        else []
    )
    plans = {s.queryid: r for s, r in zip(to_plan, results, strict=True)}
    out = []
    for s in statements:
        result = plans.get(s.queryid)
        if result is None:
            plan = PlanOutcome(status="skipped", reason=skipped[s.queryid] or "not planned")
        elif result.plan is None:
            plan = PlanOutcome(status="skipped", reason=result.error or "not planned")
        else:
            plan = PlanOutcome(
                status="planned",
                cost=float(result.plan.get("Total Cost", 0.0)),
                summary=summarize_plan(result.plan),
                plan=result.plan,
            )
        out.append(s.model_copy(update={"plan": plan}))
    return out
