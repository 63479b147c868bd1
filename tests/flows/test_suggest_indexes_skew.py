"""suggest_indexes on skewed data (real PostgreSQL, pg_stat_statements, hypopg): hot values from
pg_stats, ORDER BY ... LIMIT candidates in the statement's direction, `interval $1`, and the
fallback to the generic plan when a column has no statistics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from decisions.index_suggestions import IndexSuggestionReport, artifact_rows
from decisions.indexing import IndexAdvisorSettings
from flows.suggest_indexes import suggest_indexes

pytestmark = pytest.mark.usefixtures("prefect_harness")

TENANT = 'tenant"; DROP TABLE y; --'  # a hostile column name, compared with $1
TENANT_ID = sql.Identifier(TENANT)
LATEST = sql.SQL(
    "select id, kind from skew.events where {} = %s order by created_at desc limit 20"
).format(TENANT_ID)
MIXED = sql.SQL(
    "select id from skew.events where {} = %s order by priority desc, created_at limit 10"
).format(TENANT_ID)
RECENT = sql.SQL(
    "select count(*) from skew.events where {} = %s and created_at > now() - interval '2 days'"
).format(TENANT_ID)


def _load(conn: psycopg.Connection[Any], table: str, *, analyze: bool) -> None:
    """200k events over 500 tenants, tenant = 1 + 500 x u^4: the top one owns ~21% of rows."""
    conn.execute(
        sql.SQL(
            "create table skew.{table} with (autovacuum_enabled = false) as "
            "select g as id, 1 + floor(500 * power(random(), 4))::int as {tenant}, "
            "(array['view', 'click', 'buy'])[1 + g % 3] as kind, g % 7 as priority, "
            "now() - random() * interval '60 days' as created_at "
            "from generate_series(1, 200000) g"
        ).format(table=sql.Identifier(table), tenant=TENANT_ID)
    )
    if analyze:
        conn.execute(sql.SQL("analyze skew.{}").format(sql.Identifier(table)))


def _run(conn: psycopg.Connection[Any], query: sql.Composed, times: int = 20) -> None:
    hot = [1, 2, 3, 1, 4]  # calls follow the rows: mostly the heavy tenants
    for i in range(times):
        conn.execute(query, (hot[i % len(hot)],)).fetchall()


@pytest.fixture()
def skewed(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists skew cascade")
        conn.execute("create schema skew")
        conn.execute("create table skew.y (id int)")  # what the hostile name would drop
        _load(conn, "events", analyze=True)
        conn.execute(
            "select pg_stat_statements_reset(0, (select oid from pg_database "
            "where datname = current_database()), 0)"
        )
    yield pg_dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists skew cascade")


def _suggest(table: str = "skew.events", **kw: Any) -> IndexSuggestionReport:
    report = suggest_indexes(
        settings=IndexAdvisorSettings(min_calls=10, include_tables=[table]), **kw
    )
    assert isinstance(report, IndexSuggestionReport)
    return report


def test_hot_tenants_get_tenant_and_created_at_with_the_weighting_shown(skewed: str) -> None:
    with psycopg.connect(skewed, autocommit=True) as conn:
        _run(conn, LATEST)
    report = _suggest()
    [suggestion] = report.suggestions
    assert suggestion.columns == [TENANT, "created_at"]
    [helped] = suggestion.queries
    assert helped["costing"].startswith(f"hot values: 100 values of skew.events.{TENANT} own")
    assert "cost at a hot value" in helped["costing"]
    reasons = {tuple(r.candidate.columns): r.reason for r in report.rejected}
    assert reasons[(TENANT,)] == (
        f"no further saving once skew.events({TENANT}, created_at) exists"
    )
    [row] = [r for r in artifact_rows(report) if r["result"] == "suggested"]
    assert "weighted; hot values:" in row["reason"]


def test_mixed_sort_directions_get_an_index_in_the_statement_direction(skewed: str) -> None:
    with psycopg.connect(skewed, autocommit=True) as conn:
        _run(conn, MIXED)
    report = _suggest(apply=True)
    [suggestion] = report.suggestions
    assert suggestion.columns == [TENANT, "priority", "created_at"]
    assert '"priority" DESC, "created_at")' in suggestion.ddl
    [build] = report.builds
    assert build.status == "created", build
    [qid] = build.used_by  # re-planned at the hottest tenant, where it matters most
    assert build.costs_after[qid] < build.costs_before[qid] / 10
    # measured too: the statement run at the hottest and at a typical tenant, before and after
    # the build (EXPLAIN ANALYZE in a rolled-back read-only transaction)
    by_label = {m.label: m for m in build.measured}
    [hot] = [m for label, m in by_label.items() if not label.endswith("(typical)")]
    assert hot.before_ms is not None and hot.after_ms is not None, hot
    assert hot.after_ms < hot.before_ms, hot  # 200,000 rows: a sort of the hot tenant's rows
    assert any(label.endswith("(typical)") for label in by_label), by_label
    assert "measured (EXPLAIN ANALYZE, rolled back): " in build.detail
    with psycopg.connect(skewed) as conn:
        definition = conn.execute(
            "select pg_get_indexdef(indexrelid) from pg_stat_user_indexes where schemaname = 'skew'"
        ).fetchone()
        plan = conn.execute(sql.SQL("explain (format json) ") + MIXED, (1,)).fetchone()
        assert conn.execute("select to_regclass('skew.y') is not null").fetchone() == (True,)
    assert definition is not None and "priority DESC, created_at)" in definition[0]
    assert plan is not None and "Sort" not in str(plan[0]) and "Index Scan" in str(plan[0])


def test_interval_parameters_are_planned_not_skipped(skewed: str) -> None:
    with psycopg.connect(skewed, autocommit=True) as conn:
        _run(conn, RECENT)
    report = _suggest()
    assert report.skipped == []
    [suggestion] = report.suggestions
    assert suggestion.columns == [TENANT, "created_at"]
    assert "interval $2" in suggestion.queries[0]["query"]  # as pg_stat_statements has it


def test_columns_without_statistics_fall_back_to_the_generic_plan(skewed: str) -> None:
    with psycopg.connect(skewed, autocommit=True) as conn:
        _load(conn, "fresh", analyze=False)
        _run(conn, sql.SQL("select id from skew.fresh where {} = %s").format(TENANT_ID))
    report = _suggest("skew.fresh")
    [note] = report.costing
    assert note.fallback and note.note == (
        f"no statistics on skew.fresh.{TENANT} (ANALYZE has not run on it): costed at the "
        "generic plan only (average selectivity)"
    )
    [row] = [r for r in artifact_rows(report) if r["result"] == "generic plan only"]
    assert row["reason"].endswith("costed at the generic plan only (average selectivity)")
    assert [s.columns for s in report.suggestions] == [[TENANT]]


def test_no_statements_since_the_reset_says_so_in_the_artifact(skewed: str) -> None:
    report = _suggest()
    assert report.suggestions == [] and report.note.startswith(
        "0 statements with at least 10 calls in pg_stat_statements"
    )
    assert report.note.endswith(": nothing to suggest")
    assert artifact_rows(report)[0]["result"] == "nothing to suggest"


def test_an_index_whose_write_upkeep_outweighs_its_saving_is_rejected(skewed: str) -> None:
    with psycopg.connect(skewed, autocommit=True) as conn:
        conn.execute("create table skew.log (id bigint, run_id int, line text)")
        for batch in range(15):  # a log written far more than it is read
            conn.execute(
                "insert into skew.log select g, g %% 5000, 'line' "
                "from generate_series(%s::int, %s::int) g",
                (batch * 30_000, batch * 30_000 + 29_999),
            )
        conn.execute("analyze skew.log")
        for i in range(10):
            conn.execute("select line from skew.log where run_id = %s", (i,)).fetchall()
    report = _suggest("skew.log")
    assert report.suggestions == []
    reasons = {tuple(r.candidate.columns): r.reason for r in report.rejected}
    assert re.fullmatch(
        r"write overhead outweighs the saving: upkeep [\d,]+ rows inserted x 4 = [\d,]+ >= "
        r"[\d,]+ saved \(calls x cost saved\)",
        reasons[("run_id",)],
    ), reasons[("run_id",)]


def test_a_narrow_select_gets_a_covering_index_when_the_index_only_scan_pays(
    skewed: str,
) -> None:
    query = sql.SQL(
        "select created_at, kind from skew.events where {} = %s order by created_at desc limit 50"
    ).format(TENANT_ID)
    with psycopg.connect(skewed, autocommit=True) as conn:
        conn.execute("vacuum analyze skew.events")  # all-visible: index-only scans are cheap
        _run(conn, query)
    report = _suggest(apply=True)
    [suggestion] = report.suggestions
    assert suggestion.columns == [TENANT, "created_at"]
    assert suggestion.ddl.endswith(
        '("tenant""; DROP TABLE y; --", "created_at") INCLUDE ("kind");'
    ), [r.reason for r in report.rejected]
    reasons = {r.candidate.key: r.reason for r in report.rejected}
    assert reasons[f"skew.events({TENANT}, created_at)"].startswith("no further saving once")
    [build] = report.builds
    assert build.status == "created" and build.used_by, build
    [row] = [r for r in artifact_rows(report) if r["table"] == "skew.events" and r["ddl"]]
    assert row["result"] == "created" and row["columns"] == f"{TENANT}, created_at INCLUDE (kind)"
    with psycopg.connect(skewed) as conn:
        plan = conn.execute(sql.SQL("explain (format json) ") + query, (1,)).fetchone()
    assert plan is not None and "Index Only Scan" in str(plan[0])
