"""suggest_indexes: which indexes would pay off, with evidence; builds them only when told.

Workload from pg_stat_statements -> candidates from each statement's parse tree (pglast) ->
what-if costs with hypopg on generic plans -> greedy choice by calls x cost saved -> the chosen
set verified together (an index no statement would use is dropped from the set) -> with
`apply=True`, `CREATE INDEX CONCURRENTLY` under lock_timeout, an advisory lock and a re-check,
then the real plans. CLI `perfops indexes suggest`.

Before building, one query checks the role may build on each table (owner, member of the owner
role, or superuser); the others are not attempted and reported once ("needs ownership of ...").
A run where a build failed or was not permitted ends Failed, the state message saying which and
why (`allow_partial`: Completed when others were built); a run with no statement to look at
says so ("0 statements in pg_stat_statements since its reset at ...").
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks import PostgresTarget
from blocks.resolve import Resolved, resolve_postgres
from decisions.fleet import FleetReport, keyed, target_labels
from decisions.index_costing import (
    measurable,
    parameter_columns,
    plannable_text,
    skew_plan,
    verification_statement,
    workload_candidates,
)
from decisions.index_suggestions import (
    BuildResult,
    IndexSuggestionReport,
    SkippedStatement,
    artifact_rows,
    costing_notes,
    shape_workload,
    suggestion_events,
    suggestions,
    unknown_tables,
)
from decisions.index_writes import collect_writes, index_upkeep
from decisions.indexing import (
    Choice,
    ExistingIndex,
    IndexAdvisorSettings,
    QueryCost,
    Rejection,
    choose_indexes,
    index_name,
)
from perfops.errors import ConfigurationError
from perfops.names import display_name
from perfops.redaction import install_log_redaction
from perfops.wording import no_table_matches, tables_here
from tasks.fleet_runs import database_slots, fan_out, verified_fleet_target
from tasks.postgres.column_stats import fetch_column_stats
from tasks.postgres.hypopg import (
    cost_base_plans,
    cost_candidates,
    fetch_table_catalog,
    verify_index_set,
)
from tasks.postgres.index_builds import (
    BuildRequest,
    create_index_ddl,
    create_indexes,
    partitioned_index_ddl,
)
from tasks.postgres.indexes import fetch_indexes
from tasks.postgres.privileges import fetch_table_privileges
from tasks.postgres.statements import (
    fetch_hidden_statements,
    fetch_statement_stats,
    fetch_statements_reset,
    statements_since,
)
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-index-suggestions"
FLEET_ARTIFACT_KEY = "perfops-index-suggestions-fleet"
EVENT_FLEET = "perfops.indexes.fleet_suggested"


@flow(
    name="suggest_indexes",
    description="Suggest indexes from pg_stat_statements with hypopg what-if costing; build them "
    "CONCURRENTLY only with apply=True.",
)
def suggest_indexes(
    postgres_block: str | None = None,
    settings: IndexAdvisorSettings | None = None,
    apply: bool = False,
    allow_partial: bool = False,
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> IndexSuggestionReport | FleetReport:
    """Suggest (and with `apply`, build) the indexes the workload would benefit from.

    Args:
        postgres_block: name of a `perfops-postgres-target` block (else PERFOPS_DSN / default).
        settings: thresholds and caps; see `IndexAdvisorSettings` for defaults.
        apply: build the chosen indexes `CONCURRENTLY` (default: only suggest).
        allow_partial: end Completed when some builds succeeded and others failed (the artifact
            and state message still say which); default False: Failed.
        targets: run over a fleet instead (docs/fleet.md): a named fleet, `all`, a label
            `key=value`, or a list of target names; one child run per target, a summary
            artifact `perfops-index-suggestions-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child (its artifact
            `perfops-index-suggestions-<target>`, its event label `perfops.target`, its cluster
            slot). A run with `apply` holds its database's slot.
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    settings = settings or IndexAdvisorSettings()
    if targets is not None:  # the parent of a fleet run: one child run per target
        return fan_out(
            suggest_indexes,
            targets,
            fleet_file,
            {"settings": settings, "apply": apply, "allow_partial": allow_partial},
            changes=apply,
            artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET,
            dry_run=not apply,
            describe=lambda r: (
                f"{len(r.suggestions)} suggested, "
                f"{sum(b.status == 'created' for b in r.builds)} built"
            ),
            block_given=postgres_block,
        )
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    resolved = resolve_postgres(postgres_block)
    with database_slots(resolved.value, changes=apply, fleet_target=fleet_target):
        return _suggest(resolved, settings, apply, allow_partial, fleet_target)


def _suggest(
    resolved: Resolved[PostgresTarget],
    settings: IndexAdvisorSettings,
    apply: bool,
    allow_partial: bool,
    fleet_target: str | None,
) -> IndexSuggestionReport:
    """One database: suggest, and with `apply` build (under the run's slots)."""
    logger = get_run_logger()
    target = resolved.value

    statements = fetch_statement_stats(
        target,
        min_calls=settings.min_calls,
        min_total_ms=settings.min_total_ms,
        limit=settings.max_statements,
    )
    hidden = fetch_hidden_statements(target)  # suggested around them, they would go unsaid
    snapshot = fetch_table_catalog(target)
    existing = [ExistingIndex.model_validate(i.model_dump()) for i in fetch_indexes(target)]
    catalog = snapshot.catalog()
    unknown = unknown_tables(catalog, settings.include_tables)
    none_known = bool(unknown) and len(unknown) == len(settings.include_tables)
    if none_known and fleet_target is None:  # a typo: fail before any costing or build
        here = tables_here([display_name(ref.schema, ref.name) for ref in catalog])
        raise ConfigurationError(
            f"{no_table_matches(unknown)}: {here}; give schema.table or a table name"
        )
    # in a fleet, a database without the tables has nothing to suggest (the note says why)

    shaped = shape_workload(
        [(st.queryid, st.query) for st in statements], catalog, snapshot.search_path, settings
    )
    skipped, shapes, texts, tables_of = shaped.skipped, shaped.shapes, shaped.texts, shaped.tables

    # Skew: custom plans at representative values from pg_stats, weighted by their share.
    column_stats = fetch_column_stats(target, parameter_columns(shapes.values()))
    stat_of = {s.queryid: s for s in statements}
    plans = {
        qid: skew_plan(qid, texts[qid], shapes[qid], column_stats, statement=stat_of[qid])
        for qid in texts
    }
    base = cost_base_plans(target, texts, plans)
    for qid, planned in base.items():
        if planned.cost is None:
            stat = next(s for s in statements if s.queryid == qid)
            skipped.append(
                SkippedStatement(
                    queryid=qid, query=stat.query, reason=planned.error or "cannot be planned"
                )
            )
            texts.pop(qid)
            shapes.pop(qid)
    queries = [
        QueryCost(
            queryid=qid,
            calls=stat_of[qid].calls,
            mean_ms=stat_of[qid].mean_ms,
            base_cost=base[qid].cost or 0.0,
            tables=tables_of[qid],
            hot_cost=base[qid].hot_cost,
        )
        for qid in texts
    ]
    # with partial indexes for rare predicates; each costed against the statements it could serve
    candidates, serves = workload_candidates(shapes, column_stats)
    # the workload's INSERTs and UPDATEs: what each candidate would cost them to maintain
    writes = collect_writes(
        [(plannable_text(s.query), s.rows) for s in statements], catalog, snapshot.search_path
    )
    costings = cost_candidates(target, texts, tables_of, candidates, plans, serves)
    selection = choose_indexes(
        queries,
        costings,
        existing,
        min_saving=settings.min_saving,
        max_new_per_table=settings.max_new_per_table,
        upkeep=index_upkeep(candidates, writes),
    )
    chosen: list[Choice] = list(selection.chosen)
    rejected = list(selection.rejected)
    if chosen:
        verification = verify_index_set(target, texts, [c.candidate for c in chosen], plans)
        unused = [c for c in chosen if not verification.used[c.candidate.key]]
        for choice in unused:
            rejected.append(
                Rejection(
                    candidate=choice.candidate,
                    reason="no statement uses it once the other suggestions exist",
                )
            )
        chosen = [c for c in chosen if verification.used[c.candidate.key]]

    texts_of = {s.queryid: s.query for s in statements}
    report = IndexSuggestionReport(
        # "0 statements with at least 10 calls ... since its reset at ...": in the artifact too
        note=f"no table matches include_tables {', '.join(unknown)} here: nothing to suggest"
        if none_known
        else ""
        if statements
        else statements_since(
            0,
            fetch_statements_reset(target),
            f"statements with at least {settings.min_calls} calls",
        )
        + ": nothing to suggest",
        database=resolved.description,
        unknown_tables=unknown,
        statements_considered=len(statements),
        suggestions=suggestions(
            chosen,
            texts_of,
            lambda c: (
                partitioned_index_ddl(c)
                if str(c.table) in snapshot.partitioned
                else create_index_ddl(c)
            ),
            plans,
        ),
        rejected=rejected,
        skipped=skipped,
        costing=costing_notes(plans, texts_of),
        hidden=hidden,
    )
    privileges = None
    if apply and chosen:
        # Before any build: the tables this role may not build on, in one query, said once.
        check = fetch_table_privileges(
            target,
            [(c.candidate.schema_name, c.candidate.table_name) for c in chosen],
            action="create",
        )
        privileges = check.message
        denied = [
            BuildResult(
                key=c.candidate.key, index_name=index_name(c.candidate), status="failed", detail=why
            )
            for c, why in check.refused(
                chosen, lambda c: (c.candidate.schema_name, c.candidate.table_name)
            )
        ]
        runs = {q: [(v.label, v.query) for v in measurable(plans.get(q))] for q in texts}
        checks = {  # skewed statements are re-planned at their hottest value
            q: verification_statement(plans.get(q), texts[q], base[q].hot_cost, base[q].cost)
            for q in texts
        }
        requests = [
            BuildRequest(
                candidate=c.candidate,
                queries={e.queryid: checks[e.queryid][0] for e in c.effects},
                expected_costs={e.queryid: checks[e.queryid][1] for e in c.effects},
                measure={e.queryid: runs[e.queryid] for e in c.effects if runs[e.queryid]},
            )
            for c in chosen
            if check.allows(c.candidate.schema_name, c.candidate.table_name)
        ]
        built = (
            create_indexes(
                target,
                requests,
                lock_timeout_ms=settings.build_lock_timeout_ms,
                statement_timeout_ms=settings.build_statement_timeout_ms,
            )
            if requests
            else []
        )
        report.builds = built + denied
        report.applied = True

    _record(report, target.resource_id(), fleet_target)
    if report.unknown:
        logger.warning("%s", report.unknown)
    if report.hidden:
        logger.warning("%s", report.hidden.warning)
    for s in report.suggestions:
        logger.info("suggest %s (%s): saves ~%.0f ms", s.table, s.columns, s.est_time_saved_ms)
    failed = [b for b in report.builds if b.status == "failed"]
    first = next((b for b in failed if not b.detail.startswith("not attempted")), None)
    why = [privileges] if privileges else []
    why += [f"{first.index_name}: {first.detail}"] if first else []
    return end_run(
        report,
        f"{len(failed)} of {len(report.builds)} index builds failed: {'; '.join(why)}"
        if failed
        else None,
        partial=len(failed) < len(report.builds),
        allow_partial=allow_partial,
        note=report.note or None,
    )


def _record(report: IndexSuggestionReport, resource: str, fleet_target: str | None) -> None:
    publish_table(
        keyed(ARTIFACT_KEY, fleet_target),
        artifact_rows(report),
        f"Index suggestions for {report.database}",
    )
    for event, event_resource, payload in suggestion_events(report, resource):
        emit(event, event_resource, payload, **target_labels(fleet_target))
