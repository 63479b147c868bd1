"""An index advisor run's report: the suggestions with their evidence, the candidates rejected
and the statements skipped (with the reasons), what each build did, the artifact rows and the
events. Pure: no Prefect, no I/O (`flows/suggest_indexes.py` wires the steps,
`decisions/indexing.py` decides which index, `tasks/postgres/index_builds.py` builds them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from decisions.indexing import Candidate, Choice, Rejection, index_name

EVENT_SUGGESTED = "perfops.indexes.suggested"
EVENT_CREATED = "perfops.indexes.created"


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


class Suggestion(BaseModel):
    table: str
    columns: list[str]
    index_name: str
    ddl: str
    size_bytes: int
    calls: int
    est_time_saved_ms: float
    queries: list[dict[str, Any]]  # queryid, query, calls, cost_before, cost_after


class SkippedStatement(BaseModel):
    queryid: int
    query: str
    reason: str


class IndexSuggestionReport(BaseModel):
    database: str
    statements_considered: int
    suggestions: list[Suggestion]
    rejected: list[Rejection]
    skipped: list[SkippedStatement]
    builds: list[BuildResult] = []
    applied: bool = False


def suggestions(
    chosen: Sequence[Choice], query_text: Mapping[int, str], ddl: Callable[[Candidate], str]
) -> list[Suggestion]:
    """Each chosen index with its DDL (`ddl` renders it) and the statements it helps, by the
    text of each (`query_text`, by queryid)."""
    return [
        Suggestion(
            table=str(c.candidate.table),
            columns=c.candidate.columns,
            index_name=index_name(c.candidate),
            ddl=ddl(c.candidate),
            size_bytes=c.size_bytes,
            calls=sum(e.calls for e in c.effects),
            est_time_saved_ms=round(c.est_time_saved_ms, 1),
            queries=[
                {
                    "queryid": e.queryid,
                    "query": query_text[e.queryid],
                    "calls": e.calls,
                    "cost_before": round(e.cost_before, 2),
                    "cost_after": round(e.cost_after, 2),
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
    for s in report.suggestions:
        build = builds.get(f"{s.table}({', '.join(s.columns)})")
        costs = "; ".join(
            f"cost {q['cost_before']:,.0f} -> {q['cost_after']:,.0f}" for q in s.queries[:3]
        )
        rows.append(
            _row(
                build.status if build else "suggested",
                table=s.table,
                columns=", ".join(s.columns),
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
                columns=", ".join(r.candidate.columns),
                reason=r.reason,
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
