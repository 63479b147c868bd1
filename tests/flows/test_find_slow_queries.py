"""find_slow_queries on the real PostgreSQL: slow statements with their reasons and plans, the
statements that cannot be planned (dropped table, locked table, utility, truncated), a missing
pg_stat_statements, an unreachable server, and `perfops queries slow`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from blocks import PostgresTarget
from decisions.slow_queries import SlowQuerySettings, SlowStatement
from flows.find_slow_queries import ARTIFACT_KEY, SlowQueryReport, find_slow_queries
from perfops.errors import MissingPrerequisite
from tasks.postgres.statements import explain_statements
from tests.records import artifact_rows, one_target, wait_for_event

pytestmark = pytest.mark.usefixtures("prefect_harness")

SCHEMA = "Slow Q"  # mixed case and a space
HOSTILE = 'x"; DROP TABLE y; --'
SLEEP_S = 0.05
THRESHOLD_MS = 40.0


def q(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


@pytest.fixture(scope="module")
def slow_db(pg_dsn: str) -> Iterator[str]:
    """A schema with a hostile table name and statements that take about 50 ms each."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(SCHEMA)))
        conn.execute(sql.SQL("create schema {}").format(q(SCHEMA)))
        for table in (HOSTILE, "y", "gone_t", "locked_t"):
            conn.execute(
                sql.SQL("create table {} (id int primary key, v text)").format(q(SCHEMA, table))
            )
            conn.execute(
                sql.SQL("insert into {} select g, 'v' || g from generate_series(1, 1000) g").format(
                    q(SCHEMA, table)
                )
            )
        for table in (HOSTILE, "gone_t", "locked_t"):
            for i in range(3):
                conn.execute(
                    sql.SQL("select *, pg_sleep(%s) from {} where id = %s").format(
                        q(SCHEMA, table)
                    ),
                    (SLEEP_S, i + 1),
                )
        conn.execute("do $$ begin perform pg_sleep(0.05); end $$")
        conn.execute(sql.SQL("drop table {}").format(q(SCHEMA, "gone_t")))
    yield pg_dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(SCHEMA)))


@pytest.fixture()
def env_dsn(monkeypatch: pytest.MonkeyPatch, slow_db: str) -> str:
    monkeypatch.setenv("PERFOPS_DSN", slow_db)
    return slow_db


def _ours(report: SlowQueryReport) -> dict[str, SlowStatement]:
    """Our statements by the table they read ("do" for the DO block); others are tolerated."""
    found = {}
    for s in report.statements:
        for table in (HOSTILE.replace('"', '""'), "gone_t", "locked_t"):
            if table in s.query and "pg_sleep" in s.query:
                found[table.replace('""', '"')] = s
        if s.query.startswith("do $$"):
            found["do"] = s
    return found


def test_slow_statements_are_listed_with_why_figures_and_plans(env_dsn: str) -> None:
    settings = SlowQuerySettings(
        threshold_ms=THRESHOLD_MS, top=0, explain=True, explain_lock_timeout_ms=200
    )
    with psycopg.connect(env_dsn) as holder:
        holder.execute(
            sql.SQL("lock table {} in access exclusive mode").format(q(SCHEMA, "locked_t"))
        )
        started = time.monotonic()
        report = one_target(find_slow_queries, settings=settings)
        elapsed = time.monotonic() - started
    ours = _ours(report)
    assert set(ours) == {HOSTILE, "gone_t", "locked_t", "do"}

    hostile = ours[HOSTILE]
    assert hostile.calls == 3 and hostile.rows == 3
    assert hostile.mean_ms >= SLEEP_S * 1000
    assert hostile.reasons[0].startswith("mean ") and hostile.reasons[0].endswith(" ms >= 40 ms")
    assert hostile.max_ms >= hostile.mean_ms > 0 and hostile.shared_blks_hit > 0
    assert hostile.plan is not None and hostile.plan.status == "planned"
    assert HOSTILE in hostile.plan.summary and hostile.plan.cost is not None

    # a table dropped since: planning fails, the statement is kept with the reason
    gone = ours["gone_t"].plan
    assert gone is not None and gone.status == "skipped"
    assert gone.reason.startswith("fails to plan: relation") and "does not exist" in gone.reason
    # a table another session holds: skipped after lock_timeout, the run goes on
    locked = ours["locked_t"].plan
    assert locked is not None and locked.status == "skipped"
    assert locked.reason == (
        "a table it uses is locked by another session: lock_timeout (200 ms) expired"
    )
    assert elapsed < 30
    do = ours["do"].plan
    assert do is not None and do.reason == "utility statement (DO) cannot be explained"

    with psycopg.connect(env_dsn) as conn:  # the hostile name was never executed as SQL
        assert conn.execute(sql.SQL("select count(*) from {}").format(q(SCHEMA, "y"))).fetchone()

    rows = {r["queryid"]: r for r in artifact_rows(ARTIFACT_KEY)}
    row = rows[str(hostile.queryid)]
    assert all(list(r)[:2] == ["rank", "reason"] for r in rows.values())
    assert row["reason"] == hostile.why and row["calls"] == 3
    assert row["plan"].startswith("cost ")
    assert rows[str(ours["locked_t"].queryid)]["plan"].startswith("skipped: a table it uses")
    queryid = str(hostile.queryid)
    payload = wait_for_event(
        "perfops.queries.slow_found", where=lambda e: queryid in e.payload.get("queryids", [])
    ).payload
    assert payload["threshold_ms"] == THRESHOLD_MS
    assert payload["over_threshold"] == report.over_threshold >= 4


def test_top_n_by_total_time_without_a_threshold_hit(env_dsn: str) -> None:
    report = one_target(
        find_slow_queries, settings=SlowQuerySettings(threshold_ms=3_600_000, top=3)
    )
    assert [s.rank_by_total for s in report.statements] == [1, 2, 3]
    for s in report.statements:
        assert s.reasons == [s.reasons[0]]
        assert s.reasons[0].startswith(f"top {s.rank_by_total} by total time (")
        assert s.plan is None  # not asked to explain
    assert report.over_threshold == 0
    totals = [s.total_ms for s in report.statements]
    assert totals == sorted(totals, reverse=True)


def test_a_batch_of_plans_survives_statements_that_fail_to_plan(pg_target: PostgresTarget) -> None:
    queries = [
        "select 1 / 0 as x from pg_class where oid = $1",  # fails while planning (after PREPARE)
        "select relname from pg_class where oid = $1",
        "select * from t where id = ",  # truncated: the parser says so
        "select * from no_such_table where id = $1",
        "select relname from pg_class where relname = $1",
    ]
    results = explain_statements.fn(pg_target, queries)
    assert [r.plan is not None for r in results] == [False, True, False, False, True]
    assert results[0].error == "fails to plan: division by zero"
    assert results[2].error == "fails to plan: syntax error at end of input"
    assert results[3].error is not None and "no_such_table" in results[3].error


def test_a_statement_ending_in_a_line_comment_is_planned_and_the_run_completes(
    env_dsn: str,
) -> None:
    """pg_stat_statements keeps a trailing `-- comment` (an ORM's, a report's tag). Before, on
    PostgreSQL 15 it commented out the rest of the EXPLAIN batch (`prepare ... as <text>;
    explain ... execute ...`): no plan came back and the whole run crashed with "unexpected
    AssertionError" (suggest_indexes too, through the same planner)."""
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("select *, pg_sleep(%s) from {} where id = %s -- nightly report").format(
                q(SCHEMA, "y")
            ),
            (SLEEP_S, 1),
        )
    settings = SlowQuerySettings(threshold_ms=THRESHOLD_MS, top=0, explain=True)
    report = one_target(find_slow_queries, settings=settings)
    [tagged] = [s for s in report.statements if s.query.endswith("-- nightly report")]
    assert tagged.plan is not None and tagged.plan.status == "planned", tagged.plan
    assert "Index Scan on y using y_pkey" in tagged.plan.summary


def test_missing_pg_stat_statements_fails_with_the_fix(env_dsn: str) -> None:
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        conn.execute("drop extension pg_stat_statements")
    try:
        state = find_slow_queries(return_state=True)
    finally:
        with psycopg.connect(env_dsn, autocommit=True) as conn:
            conn.execute("create extension if not exists pg_stat_statements")
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, MissingPrerequisite)
    assert str(error).startswith("pg_stat_statements is not installed in database perfops_test_")
    assert "CREATE EXTENSION pg_stat_statements" in str(error)
    # the test server preloads it: no restart to advise
    assert str(error).endswith(
        ": the library is preloaded: run CREATE EXTENSION pg_stat_statements; in the database"
    )


def test_pg_stat_statements_off_the_search_path_fails_with_the_fix(env_dsn: str) -> None:
    """Installed in a schema the role's search_path does not hold (a managed database's
    `extensions` schema): one line saying where it is and how to reach it, not 'unexpected
    UndefinedTable: relation "pg_stat_statements" does not exist'."""
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        conn.execute('create schema if not exists "Ext Schema"')
        conn.execute('alter extension pg_stat_statements set schema "Ext Schema"')
    try:
        state = find_slow_queries(return_state=True)
    finally:
        with psycopg.connect(env_dsn, autocommit=True) as conn:
            conn.execute("alter extension pg_stat_statements set schema public")
            conn.execute('drop schema "Ext Schema"')
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, MissingPrerequisite)
    assert str(error).startswith("pg_stat_statements is installed in schema Ext Schema of ")
    assert str(error).endswith(
        'which is not on the search_path of postgres (public): ALTER ROLE "postgres" SET '
        'search_path = "$user", public, "Ext Schema"; (or ALTER EXTENSION pg_stat_statements '
        "SET SCHEMA public;)"
    )


def test_a_block_names_the_database(pg_dsn: str, slow_db: str) -> None:
    PostgresTarget(dsn=SecretStr(pg_dsn), application_name="slow-block").save(
        "slow-queries-test", overwrite=True
    )
    report = one_target(
        find_slow_queries, postgres_block="slow-queries-test", settings=SlowQuerySettings(top=1)
    )
    dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    assert report.origin == "block" and report.database.endswith(f"/{dbname}")


# --- the command line -------------------------------------------------------------------


def test_cli_json_lists_the_statements(
    perfops: Callable[[list[str]], int], slow_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = perfops(
        ["queries", "slow", "--dsn", slow_db, "--threshold-ms", "40", "--top", "0", "--json"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["settings"]["threshold_ms"] == 40.0
    assert any(HOSTILE.replace('"', '""') in s["query"] for s in report["statements"])
    assert all(s["plan"] is None for s in report["statements"])


def test_cli_human_output_fits_80_columns(
    perfops: Callable[[list[str]], int], slow_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = perfops(
        ["queries", "slow", "--dsn", slow_db, "--threshold-ms", "40", "--top", "2", "--explain"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("slow queries in postgres@127.0.0.1:5432/perfops_test_")
    assert any(line.strip().startswith("why: mean ") for line in lines)
    assert any(line.strip().startswith("plan: cost ") for line in lines)
    assert any("plan skipped: fails to plan: relation" in line for line in lines)
    assert max(len(line) for line in lines) <= 80


def test_cli_bad_threshold_is_a_usage_error(
    perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert perfops(["queries", "slow", "--threshold-ms", "-1"]) == 2
    assert "--threshold-ms" in capsys.readouterr().err


def test_a_role_without_pg_read_all_stats_is_told_what_it_cannot_see(
    perfops: Callable[[list[str]], int], slow_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """pg_stat_statements hides other roles' statements (text `<insufficient privilege>`,
    queryid NULL) from a role without pg_read_all_stats: the slowest statements are not listed,
    and the run says so, naming the grant, instead of ranking what it sees as the top ones."""
    role = "perfops_slow_ro"
    with psycopg.connect(slow_db, autocommit=True) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(q(role)))
        conn.execute(sql.SQL("create role {} login").format(q(role)))
    try:
        code = perfops(
            [
                "queries",
                "slow",
                "--dsn",
                psycopg.conninfo.make_conninfo(slow_db, user=role),
                "--threshold-ms",
                "40",
                "--json",
            ]
        )
        captured = capsys.readouterr()
        assert code == 0, captured.err
        report = SlowQueryReport.model_validate_json(captured.out)
        assert report.hidden is not None and report.hidden.role == role
        assert report.hidden.statements >= 4  # the three sleeping selects and the DO block
        assert report.hidden.total_ms >= 9 * SLEEP_S * 1000
        assert report.hidden.warning.endswith(
            f"hidden from {role} (<insufficient privilege>): grant pg_read_all_stats to "
            f"{role} to see them"
        )
        assert report.over_threshold == 0  # what it sees is its own quick statements
        rows = artifact_rows(ARTIFACT_KEY)
        assert rows[-1]["reason"] == report.hidden.warning
    finally:
        with psycopg.connect(slow_db, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role if exists {}").format(q(role)))
    # the role that sees every statement is told nothing of the kind
    code = perfops(["queries", "slow", "--dsn", slow_db, "--threshold-ms", "40", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["hidden"] is None


def test_a_run_says_since_when_pg_stat_statements_counted(
    env_dsn: str, perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    """After a pg_stat_statements_reset() an hour ago, "no statement over the threshold" means
    an hour of workload. Before, the report did not say since when it counted (only a run with
    no statement at all did); now the report, the note and the command say it."""
    with psycopg.connect(env_dsn) as conn:
        row = conn.execute("select stats_reset from pg_stat_statements_info").fetchone()
    assert row is not None and row[0] is not None
    since = f"since its reset at {row[0].astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    state = find_slow_queries(
        settings=SlowQuerySettings(threshold_ms=86_400_000, top=0), return_state=True
    )
    report = state.result()
    assert isinstance(report, SlowQueryReport) and report.statements_reset == row[0]
    message = state.message or ""
    assert message.startswith("none of the ")
    assert message.endswith(f"statements in pg_stat_statements {since} is over the threshold")
    assert perfops(["queries", "slow", "--dsn", env_dsn, "--top", "0"]) == 0
    out = capsys.readouterr().out
    assert (
        f"figures count from pg_stat_statements' reset at {row[0].astimezone(UTC):%Y-%m-%d %H:%M}"
        " UTC" in out
    )
