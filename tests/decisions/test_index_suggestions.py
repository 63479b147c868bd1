"""What an index suggestion run says about its table filter and an empty result. No servers."""

from __future__ import annotations

from decisions.index_suggestions import (
    IndexSuggestionReport,
    SkippedStatement,
    nothing_suggested,
    unknown_tables,
)
from decisions.indexing import TableRef

TABLES = [TableRef("public", "orders"), TableRef("sales", "orders"), TableRef("sales", "items")]


def test_unknown_table_names_are_those_matching_no_table_by_name_or_schema_name() -> None:
    names = ["orders", "sales.items", "odrers", "public.items"]
    assert unknown_tables(TABLES, names) == ["odrers", "public.items"]
    assert unknown_tables(TABLES, []) == []


def report(considered: int, skipped: list[str], note: str = "") -> IndexSuggestionReport:
    return IndexSuggestionReport(
        database="db",
        statements_considered=considered,
        suggestions=[],
        rejected=[],
        skipped=[SkippedStatement(queryid=i, query="q", reason=r) for i, r in enumerate(skipped)],
        note=note,
    )


def test_nothing_suggested_says_whether_every_statement_was_skipped_and_why() -> None:
    skipped = ["only excluded or not included tables"] * 2 + ["not a SELECT"]
    assert nothing_suggested(report(3, skipped)) == (
        "nothing to suggest: every statement was skipped (2: only excluded or not included "
        "tables; 1: not a SELECT)"
    )
    assert nothing_suggested(report(4, skipped)) == (
        "nothing to suggest: no candidate saves enough on any statement"
    )
    assert nothing_suggested(report(0, [], note="0 statements: nothing to suggest")) == (
        "0 statements: nothing to suggest"
    )
    assert report(1, []).unknown is None
