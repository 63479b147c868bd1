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
from decisions.index_suggestions import (
    BuildResult,
    IndexSuggestionReport,
    SkippedStatement,
    artifact_rows,
    suggestion_events,
    suggestions,
)
from decisions.indexing import (
    Choice,
    ExistingIndex,
    IndexAdvisorSettings,
    QueryCost,
    QueryShape,
    Rejection,
    ShapeError,
    candidate_indexes,
    choose_indexes,
    index_name,
    query_shape,
    table_matches,
)
from perfops.redaction import install_log_redaction
from tasks.fleet_runs import database_slots, fan_out
from tasks.postgres.hypopg import (
    cost_base_plans,
    cost_candidates,
    fetch_table_catalog,
    verify_index_set,
)
from tasks.postgres.index_builds import BuildRequest, create_index_ddl, create_indexes
from tasks.postgres.indexes import fetch_indexes
from tasks.postgres.privileges import fetch_table_privileges
from tasks.postgres.statements import (
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
        )
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
    snapshot = fetch_table_catalog(target)
    existing_rows = fetch_indexes(target)
    catalog = snapshot.catalog()
    existing = [ExistingIndex.model_validate(i.model_dump()) for i in existing_rows]

    skipped: list[SkippedStatement] = []
    shapes: dict[int, QueryShape] = {}
    texts: dict[int, str] = {}
    tables_of: dict[int, list[str]] = {}
    for stat in statements:
        try:
            shape = query_shape(stat.query, catalog, snapshot.search_path)
        except ShapeError as exc:
            skipped.append(
                SkippedStatement(queryid=stat.queryid, query=stat.query, reason=str(exc))
            )
            continue
        refs = [ref for ref in shape.tables if not table_matches(ref, settings.exclude_tables)]
        if settings.include_tables:
            refs = [ref for ref in refs if table_matches(ref, settings.include_tables)]
        if not refs:
            skipped.append(
                SkippedStatement(
                    queryid=stat.queryid,
                    query=stat.query,
                    reason="only excluded or not included tables",
                )
            )
            continue
        shape.tables = {ref: use for ref, use in shape.tables.items() if ref in refs}
        shapes[stat.queryid] = shape
        texts[stat.queryid] = stat.query
        tables_of[stat.queryid] = [str(ref) for ref in refs]

    base = cost_base_plans(target, texts)
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
    by_id = {s.queryid: s for s in statements}
    queries = [
        QueryCost(
            queryid=qid,
            calls=by_id[qid].calls,
            mean_ms=by_id[qid].mean_ms,
            base_cost=base[qid].cost or 0.0,
            tables=tables_of[qid],
        )
        for qid in texts
    ]
    candidates = candidate_indexes(shapes.values())
    costings = cost_candidates(target, texts, tables_of, candidates) if candidates else []
    selection = choose_indexes(
        queries,
        costings,
        existing,
        min_saving=settings.min_saving,
        max_new_per_table=settings.max_new_per_table,
    )
    chosen: list[Choice] = list(selection.chosen)
    rejected = list(selection.rejected)
    if chosen:
        verification = verify_index_set(target, texts, [c.candidate for c in chosen])
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
        database=resolved.description,
        statements_considered=len(statements),
        suggestions=suggestions(chosen, texts_of, create_index_ddl),
        rejected=rejected,
        skipped=skipped,
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
        requests = [
            BuildRequest(
                candidate=c.candidate,
                queries={e.queryid: texts[e.queryid] for e in c.effects},
                expected_costs={e.queryid: base[e.queryid].cost or 0.0 for e in c.effects},
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
    for s in report.suggestions:
        logger.info(
            "suggest %s (%s): saves ~%.0f ms over %d calls",
            s.table,
            ", ".join(s.columns),
            s.est_time_saved_ms,
            s.calls,
        )
    failed = [b for b in report.builds if b.status == "failed"]
    first = next((b for b in failed if not b.detail.startswith("not attempted")), None)
    why = ([privileges] if privileges else []) + (
        [f"{first.index_name}: {first.detail}"] if first else []
    )
    return end_run(
        report,
        f"{len(failed)} of {len(report.builds)} index builds failed: {'; '.join(why)}"
        if failed
        else None,
        partial=len(failed) < len(report.builds),
        allow_partial=allow_partial,
        note=None
        if statements
        else statements_since(
            0,
            fetch_statements_reset(target),
            f"statements with at least {settings.min_calls} calls",
        )
        + ": nothing to suggest",
    )


def _record(report: IndexSuggestionReport, resource: str, fleet_target: str | None) -> None:
    publish_table(
        keyed(ARTIFACT_KEY, fleet_target),
        artifact_rows(report),
        f"Index suggestions for {report.database}",
    )
    for event, event_resource, payload in suggestion_events(report, resource):
        emit(event, event_resource, payload, **target_labels(fleet_target))
