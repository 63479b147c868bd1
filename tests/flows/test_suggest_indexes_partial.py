"""Partial indexes for a rare value (real PostgreSQL, pg_stat_statements, hypopg): a predicate
pg_stat_statements keeps verbatim (`IS NULL`) gets a partial index, built and used; a literal
(`status = 'queued'`, as a statement text from elsewhere keeps it) is costed as one by hypopg;
`status = $1`, the form pg_stat_statements gives a literal, gets none."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from blocks import PostgresTarget
from decisions.index_costing import distinct_counts, parameter_columns, rate_predicates
from decisions.index_suggestions import IndexSuggestionReport, artifact_rows
from decisions.indexing import (
    IndexAdvisorSettings,
    QueryCost,
    candidate_indexes,
    choose_indexes,
    query_shape,
)
from flows.suggest_indexes import suggest_indexes
from tasks.postgres.column_stats import fetch_column_stats
from tasks.postgres.hypopg import cost_base_plans, cost_candidates, fetch_table_catalog
from tasks.postgres.server import connect
from tasks.postgres.statements import explain_generic, plan_cost

pytestmark = pytest.mark.usefixtures("prefect_harness")

FINISHED = 'finished"; DROP TABLE y; --'  # a hostile column name, in the index's WHERE
DISPATCH = sql.SQL(
    "select id, tenant_id from part.jobs where {} is null order by created_at limit 10"
).format(sql.Identifier(FINISHED))
BY_STATUS = "select id from part.jobs where status = %s order by created_at limit 10"


@pytest.fixture()
def jobs(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """100k jobs: 95% done, 1% queued and 1% running (not finished: `finished ... IS NULL`)."""
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists part cascade")
        conn.execute("create schema part")
        conn.execute("create table part.y (id int)")  # what the hostile name would drop
        conn.execute(
            sql.SQL(
                "create table part.jobs with (autovacuum_enabled = false) as "
                "select g as id, 1 + g % 500 as tenant_id, s as status, "
                "now() - g * interval '1 minute' as created_at, "
                "case when s in ('queued', 'running') then null else now() end as {} "
                "from generate_series(1, 100000) g, lateral (select case "
                "when g % 100 = 0 then 'queued' when g % 100 = 1 then 'running' "
                "when g % 100 < 5 then 'failed' else 'done' end as s) x"
            ).format(sql.Identifier(FINISHED))
        )
        conn.execute("alter table part.jobs add primary key (id)")
        conn.execute("analyze part.jobs")
        conn.execute(
            "select pg_stat_statements_reset(0, (select oid from pg_database "
            "where datname = current_database()), 0)"
        )
    yield pg_dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists part cascade")


def test_a_rare_null_gets_a_partial_index_built_and_used_and_a_parameter_none(
    jobs: str,
) -> None:
    with psycopg.connect(jobs, autocommit=True) as conn:
        for _ in range(12):
            conn.execute(DISPATCH).fetchall()
            conn.execute(BY_STATUS, ("queued",)).fetchall()  # recorded as `status = $1`
    report = suggest_indexes(
        settings=IndexAdvisorSettings(min_calls=10, include_tables=["part.jobs"]), apply=True
    )
    assert isinstance(report, IndexSuggestionReport)
    partial = [s for s in report.suggestions if s.predicate]
    assert [(s.columns, s.predicate) for s in partial] == [(["created_at"], f"{FINISHED} IS NULL")]
    assert partial[0].ddl.endswith('("created_at") WHERE "finished""; DROP TABLE y; --" IS NULL;')
    # `status = $1`: the value is not known; never a partial index on a parameter
    predicates = [r.candidate.predicate for r in report.rejected if r.candidate.predicate]
    assert [p.label for p in predicates if p.column == "status"] == []
    assert [s.predicate for s in report.suggestions if s.predicate] == [f"{FINISHED} IS NULL"]
    [build] = [b for b in report.builds if b.key == partial[0].key]
    assert build.status == "created" and build.used_by, build
    [row] = [r for r in artifact_rows(report) if r["ddl"] == partial[0].ddl]
    assert row["columns"] == f"created_at WHERE {FINISHED} IS NULL"
    with psycopg.connect(jobs) as conn:
        plan = conn.execute(sql.SQL("explain (format json) ") + DISPATCH).fetchone()
        assert conn.execute("select to_regclass('part.y') is not null").fetchone() == (True,)
    assert plan is not None and build.index_name in str(plan[0]) and "Sort" not in str(plan[0])


def test_a_literal_rare_value_is_costed_as_a_partial_index_by_hypopg(
    jobs: str, pg_target: PostgresTarget
) -> None:
    query = "select id, created_at from part.jobs where status = 'queued' order by created_at"
    snapshot = fetch_table_catalog.fn(pg_target)
    shape = query_shape(query, snapshot.catalog(), snapshot.search_path)
    stats = fetch_column_stats.fn(pg_target, parameter_columns([shape]))
    rate_predicates([shape], stats)
    candidates = candidate_indexes([shape], distinct_counts(stats))
    keys = [c.key for c in candidates]
    assert "part.jobs(created_at) WHERE status = 'queued'" in keys
    base = cost_base_plans.fn(pg_target, {1: query})[1].cost
    costings = cost_candidates.fn(pg_target, {1: query}, {1: ["part.jobs"]}, candidates)
    assert base is not None and all(c.error is None for c in costings)
    cost = {c.candidate.key: c.costs[1] for c in costings}
    assert cost["part.jobs(created_at) WHERE status = 'queued'"] < base / 10
    selection = choose_indexes(
        [QueryCost(queryid=1, calls=100, mean_ms=20.0, base_cost=base, tables=["part.jobs"])],
        costings,
        [],
        min_saving=0.3,
        max_new_per_table=3,
    )
    [chosen] = selection.chosen
    assert chosen.candidate.predicate is not None, chosen.candidate.key
    assert chosen.candidate.predicate.label == "status = 'queued'"
    reasons = {r.candidate.key: r.reason for r in selection.rejected}
    assert reasons["part.jobs(status)"].startswith(("no further saving", "saves "))


def test_the_what_if_planner_plans_one_statement_and_runs_nothing(
    jobs: str, pg_target: PostgresTarget
) -> None:
    with connect(pg_target, statement_timeout_ms=5_000) as conn:
        with pytest.raises(psycopg.ProgrammingError, match="2 statements in one text"):
            explain_generic(conn, "select id from part.jobs where id = $1; drop table part.y")
        conn.rollback()
        assert plan_cost(explain_generic(conn, "select id from part.jobs where id = $1")) > 0
        conn.rollback()
        # a trailing line comment (kept by pg_stat_statements) comments out nothing after it
        commented = "select id from part.jobs where id = $1 -- nightly; drop table part.y"
        assert plan_cost(explain_generic(conn, commented)) > 0
        conn.rollback()
        assert conn.execute("select to_regclass('part.y') is not null").fetchone() == {
            "?column?": True
        }
