"""An index advisor run's report: the suggestions with their evidence, the candidates rejected
and the statements skipped (with the reasons), what each build did, the artifact rows and the
events. Pure: no Prefect, no I/O (`flows/suggest_indexes.py` wires the steps,
`decisions/indexing.py` decides which index, `tasks/postgres/index_builds.py` builds them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from decisions.index_costing import CostingPlan, hot_value_evidence, plannable_text
from decisions.indexing import (
    Candidate,
    Choice,
    IndexAdvisorSettings,
    QueryShape,
    Rejection,
    ShapeError,
    TableRef,
    index_name,
    query_shape,
    table_matches,
)
from decisions.slow_queries import HiddenStatements
from perfops.wording import no_table_matches

EVENT_SUGGESTED = "perfops.indexes.suggested"
EVENT_CREATED = "perfops.indexes.created"


class Measurement(BaseModel):
    """One statement run before and after a build (EXPLAIN ANALYZE in a rolled-back read-only
    transaction): at its hottest or a typical value of its skewed parameter."""

    queryid: int
    label: str  # "tenant_id = 2", "tenant_id = 1234 (typical)"
    before_ms: float | None = None
    after_ms: float | None = None
    error: str = ""  # why a side is missing (statement_timeout, an error)

    def describe(self) -> str:
        """'tenant_id = 2: 182 ms -> 0.41 ms' (or the reason one side is missing)."""

        def ms(value: float | None) -> str:
            return (
                "?" if value is None else f"{value:,.2f} ms" if value < 10 else f"{value:,.0f} ms"
            )

        text = f"{self.label}: {ms(self.before_ms)} -> {ms(self.after_ms)}"
        return text + (f" ({self.error})" if self.error else "")


class BuildResult(BaseModel):
    """What building one suggested index did, with the real cost change it measured."""

    key: str
    index_name: str
    status: str  # created | already covered | failed
    detail: str
    seconds: float = 0.0
    size_bytes: int = 0
    costs_before: dict[int, float] = {}
    costs_after: dict[int, float] = {}
    used_by: list[int] = []
    measured: list[Measurement] = []  # statements run before and after, where values are known


class Suggestion(BaseModel):
    table: str
    columns: list[str]
    index_name: str
    ddl: str
    size_bytes: int
    calls: int
    est_time_saved_ms: float
    queries: list[dict[str, Any]]  # queryid, query, calls, cost_before, cost_after, costing
    write_overhead: str = ""  # the workload's writes' upkeep of it, when its table is written
    key: str = ""  # the candidate's key (what its build result is filed under)
    include: list[str] = []  # INCLUDE columns of a covering index
    predicate: str = ""  # a partial index's WHERE (`finished_at IS NULL`)


class SkippedStatement(BaseModel):
    queryid: int
    query: str
    reason: str


@dataclass
class ShapedWorkload:
    """The statements the advisor costs (by queryid: shape, plannable text, tables) and the
    ones it skips with the reason."""

    skipped: list[SkippedStatement] = field(default_factory=list)
    shapes: dict[int, QueryShape] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)
    tables: dict[int, list[str]] = field(default_factory=dict)


def shape_workload(
    statements: Sequence[tuple[int, str]],
    catalog: Any,
    search_path: Sequence[str],
    settings: IndexAdvisorSettings,
) -> ShapedWorkload:
    """Parse each (queryid, query) against the catalog and keep the tables the settings
    include; a statement that cannot be parsed, or touches only excluded tables, is skipped."""
    out = ShapedWorkload()
    for queryid, query in statements:
        text = plannable_text(query)  # `interval $1` -> `$1::interval`
        try:
            shape = query_shape(text, catalog, search_path)
        except ShapeError as exc:
            out.skipped.append(SkippedStatement(queryid=queryid, query=query, reason=str(exc)))
            continue
        refs = [ref for ref in shape.tables if not table_matches(ref, settings.exclude_tables)]
        if settings.include_tables:
            refs = [ref for ref in refs if table_matches(ref, settings.include_tables)]
        if not refs:
            reason = "only excluded or not included tables"
            out.skipped.append(SkippedStatement(queryid=queryid, query=query, reason=reason))
            continue
        shape.tables = {ref: use for ref, use in shape.tables.items() if ref in refs}
        out.shapes[queryid] = shape
        out.texts[queryid] = text
        out.tables[queryid] = [str(ref) for ref in refs]
    return out


class CostingNote(BaseModel):
    """How a statement was costed when it was not simply its generic plan: the skew weighting,
    or the fallback to the generic plan for columns without statistics."""

    queryid: int
    query: str
    note: str
    fallback: bool = False


def costing_notes(
    plans: Mapping[int, CostingPlan], query_text: Mapping[int, str]
) -> list[CostingNote]:
    """A note for each statement costed at skewed values or that fell back for lack of stats."""
    return [
        CostingNote(queryid=qid, query=query_text[qid], note=p.note, fallback=p.fallback)
        for qid, p in plans.items()
        if p.note and qid in query_text
    ]


class IndexSuggestionReport(BaseModel):
    database: str
    statements_considered: int
    suggestions: list[Suggestion]
    rejected: list[Rejection]
    skipped: list[SkippedStatement]
    builds: list[BuildResult] = []
    applied: bool = False
    costing: list[CostingNote] = []
    note: str = ""  # why there is nothing to look at ("0 statements ... since its reset at ...")
    unknown_tables: list[str] = []  # include_tables names that are no table of the database
    hidden: HiddenStatements | None = None  # other roles' statements this role cannot see

    @property
    def unknown(self) -> str | None:
        """The include_tables names that are no table here, said once (a typo?)."""
        if not self.unknown_tables:
            return None
        return no_table_matches(self.unknown_tables)


def nothing_suggested(report: IndexSuggestionReport) -> str:
    """The line saying why a run suggests nothing: its note (no statements), every statement
    skipped (by reason, most common first), or no candidate saving enough."""
    if report.note:
        return report.note + (f" ({report.hidden.warning})" if report.hidden else "")
    if report.hidden and not report.statements_considered:
        return f"nothing to suggest: {report.hidden.warning}"
    if report.statements_considered and len(report.skipped) == report.statements_considered:
        reasons = Counter(s.reason for s in report.skipped).most_common(3)
        why = "; ".join(f"{n}: {r}" for r, n in reasons)
        return f"nothing to suggest: every statement was skipped ({why})"
    return "nothing to suggest: no candidate saves enough on any statement"


def unknown_tables(tables: Iterable[TableRef], names: Sequence[str]) -> list[str]:
    """The `include_tables` names (`name` or `schema.name`) that are no table of the catalog:
    said in the report, an error when none is one."""
    refs = list(tables)
    return [n for n in names if not any(table_matches(ref, [n]) for ref in refs)]


def suggestions(
    chosen: Sequence[Choice],
    query_text: Mapping[int, str],
    ddl: Callable[[Candidate], str],
    plans: Mapping[int, CostingPlan] | None = None,
) -> list[Suggestion]:
    """Each chosen index with its DDL (`ddl` renders it) and the statements it helps, by the
    text of each (`query_text`, by queryid); with `plans`, how each statement was costed ("hot
    values: ...; cost at a hot value 18,400 -> 12")."""
    plans = plans or {}
    return [
        Suggestion(
            table=str(c.candidate.table),
            columns=c.candidate.columns,
            index_name=index_name(c.candidate),
            ddl=ddl(c.candidate),
            size_bytes=c.size_bytes,
            calls=sum(e.calls for e in c.effects),
            est_time_saved_ms=round(c.est_time_saved_ms, 1),
            write_overhead=(
                f"{c.upkeep.detail} vs {c.benefit:,.0f} saved" if c.upkeep is not None else ""
            ),
            key=c.candidate.key,
            include=c.candidate.include,
            predicate=c.candidate.predicate.label if c.candidate.predicate else "",
            queries=[
                {
                    "queryid": e.queryid,
                    "query": query_text[e.queryid],
                    "calls": e.calls,
                    "cost_before": round(e.cost_before, 2),
                    "cost_after": round(e.cost_after, 2),
                    "costing": hot_value_evidence(plans.get(e.queryid), e.hot_before, e.hot_after),
                }
                for e in c.effects
            ],
        )
        for c in chosen
    ]


def _row(
    result: str,
    *,
    table: str = "",
    columns: str = "",
    reason: str = "",
    detail: str = "",
    size: int | str = "",
    ddl: str = "",
) -> dict[str, Any]:
    return {
        "table": table,
        "columns": columns,
        "result": result,
        "reason": reason,
        "detail": detail,
        "size": size,
        "ddl": ddl,
    }


def artifact_rows(report: IndexSuggestionReport) -> list[dict[str, Any]]:
    """The table artifact: each suggestion (and what its build did), each rejected candidate,
    each skipped statement. Columns: table, columns, then the result (suggested, created,
    rejected, statement skipped...) and the reason, then the details (the build's or the
    statement's), size and DDL."""
    builds = {b.key: b for b in report.builds}
    rows: list[dict[str, Any]] = []
    if report.note:
        rows.append(_row("nothing to suggest", reason=report.note))
    if report.hidden:
        rows.append(_row("statements hidden", reason=report.hidden.warning))
    for s in report.suggestions:
        build = builds.get(s.key or f"{s.table}({', '.join(s.columns)})")
        included = f" INCLUDE ({', '.join(s.include)})" if s.include else ""
        included += f" WHERE {s.predicate}" if s.predicate else ""
        costs = "; ".join(
            f"cost {q['cost_before']:,.0f} -> {q['cost_after']:,.0f}" for q in s.queries[:3]
        )
        skew = next((q["costing"] for q in s.queries if q.get("costing")), "")
        if skew:
            costs += f" (weighted; {skew})"
        if s.write_overhead:
            costs += f"; write overhead: {s.write_overhead}"
        rows.append(
            _row(
                build.status if build else "suggested",
                table=s.table,
                columns=", ".join(s.columns) + included,
                reason=f"{len(s.queries)} statement(s), {s.calls:,} calls, "
                f"est. {s.est_time_saved_ms:,.0f} ms saved; " + costs,
                size=s.size_bytes,
                ddl=s.ddl,
                detail=build.detail if build else "dry run: pass apply=True to build",
            )
        )
    for r in report.rejected:
        rows.append(
            _row(
                "rejected",
                table=str(r.candidate.table),
                columns=", ".join(r.candidate.key_labels)
                + (f" INCLUDE ({', '.join(r.candidate.include)})" if r.candidate.include else "")
                + (f" WHERE {r.candidate.predicate.label}" if r.candidate.predicate else ""),
                reason=r.reason,
            )
        )
    for note in report.costing:
        if note.fallback:
            rows.append(
                _row(
                    "generic plan only",
                    reason=f"queryid {note.queryid}: {note.note}",
                    detail=note.query[:120],
                )
            )
    for sk in report.skipped:
        rows.append(
            _row(
                "statement skipped",
                reason=f"queryid {sk.queryid}: {sk.reason}",
                detail=sk.query[:120],
            )
        )
    return rows


def suggestion_events(
    report: IndexSuggestionReport, resource: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """The events a run ends with, as (event name, resource, payload): always
    `perfops.indexes.suggested`; `perfops.indexes.created` when a build created an index."""
    suggested = {
        "database": report.database,
        "suggestions": [
            {"table": s.table, "columns": s.columns, "ddl": s.ddl} for s in report.suggestions
        ],
        "rejected": len(report.rejected),
        "skipped": len(report.skipped),
        "hidden_statements": report.hidden.statements if report.hidden else 0,
    }
    events = [(EVENT_SUGGESTED, resource, suggested)]
    created = [b for b in report.builds if b.status == "created"]
    if created:
        indexes = [
            {
                "name": b.index_name,
                "key": b.key,
                "seconds": round(b.seconds, 2),
                "costs_before": b.costs_before,
                "costs_after": b.costs_after,
            }
            for b in created
        ]
        events.append((EVENT_CREATED, resource, {"database": report.database, "indexes": indexes}))
    return events
