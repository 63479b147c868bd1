"""refresh_stale_statistics on the real PostgreSQL: stale tables analyzed and fresh ones left
alone, hostile names, a locked table, another run holding the lock, a dry run, VACUUM, a table
the role may not analyze, timeouts, the record (artifact and event), an unreachable server, and
the CLI.

Each test works in its own schema(s), made and dropped here, and limits the flow to them with
`include_schemas`. PostgreSQL's table counters reach other sessions asynchronously: `flush()`
makes a session publish them (pg_stat_force_next_flush, PostgreSQL 15+) before the flow reads.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from blocks import PostgresTarget
from decisions.fleet import FleetReport
from decisions.staleness import Decision, StatisticsPolicy, TableStats
from flows.refresh_stale_statistics import (
    ARTIFACT_KEY,
    StatisticsReport,
    refresh_stale_statistics,
)
from perfops import progress
from perfops.errors import ConfigurationError, LockBusy, report_of
from tasks.postgres.server import lock_key
from tasks.postgres.tables import LOCK_NAME, analyze_tables, statement_for
from tests.command import run_perfops
from tests.records import artifact_rows, superuser_fix, wait_for_event

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROWS = 1_000


@pytest.fixture()
def db(monkeypatch: pytest.MonkeyPatch, pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the session database, which the flow also uses."""
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture()
def schema(db: psycopg.Connection[Any]) -> Iterator[str]:
    """A schema of this test's own, dropped afterwards."""
    name = f"stats_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("create schema {}").format(sql.Identifier(name)))
    yield name
    db.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(name)))


def create(conn: psycopg.Connection[Any], schema: str, table: str, rows: int = ROWS) -> None:
    """A table of `rows` rows, autovacuum off so only the test decides what is analyzed."""
    conn.execute(
        sql.SQL(
            "create table {} with (autovacuum_enabled = false) as "
            "select g as id, mod(g, 10) as v from generate_series(1, {}) g"
        ).format(sql.Identifier(schema, table), sql.Literal(rows))
    )


def flush(conn: psycopg.Connection[Any]) -> None:
    """Publish this session's table counters now (they are flushed as the session goes idle)."""
    conn.execute("select pg_stat_force_next_flush()")


@pytest.fixture()
def emitted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """Events the flow emits, as (name, payload, resource labels); still sent to the server."""
    import flows.refresh_stale_statistics as module

    calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
    real_emit = module.emit

    def record(event: str, resource_id: str, payload: dict[str, Any], **labels: str) -> None:
        calls.append((event, payload, labels))
        real_emit(event, resource_id, payload, **labels)

    monkeypatch.setattr(module, "emit", record)
    return calls


def analyze(conn: psycopg.Connection[Any], schema: str, *tables: str) -> None:
    flush(conn)  # counters first: inserts flushed after an ANALYZE would count as changes
    for t in tables:
        conn.execute(sql.SQL("analyze {}").format(sql.Identifier(schema, t)))


def change(conn: psycopg.Connection[Any], schema: str, table: str, rows: int) -> None:
    conn.execute(
        sql.SQL("update {} set v = v + 1 where id <= {}").format(
            sql.Identifier(schema, table), sql.Literal(rows)
        )
    )
    flush(conn)


def analyze_counts(conn: psycopg.Connection[Any], *schemas: str) -> dict[str, int]:
    rows = conn.execute(
        "select relname, analyze_count from pg_stat_user_tables where schemaname = any(%s)",
        (list(schemas),),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def policy(*schemas: str, **values: Any) -> StatisticsPolicy:
    return StatisticsPolicy(include_schemas=list(schemas), **values)


def refresh_one(**parameters: Any) -> StatisticsReport:
    """The flow on one database (without `targets` it returns that database's report)."""
    report = refresh_stale_statistics(**parameters)
    assert isinstance(report, StatisticsReport)
    return report


def outcomes(report: StatisticsReport) -> dict[str, tuple[str, str]]:
    return {t.table_name: (t.result, t.reason) for t in report.tables}


def test_analyzes_exactly_the_stale_and_never_analyzed_tables(
    db: psycopg.Connection[Any], schema: str
) -> None:
    for t in ("stale", "fresh", "new"):
        create(db, schema, t)
    analyze(db, schema, "stale", "fresh")
    change(db, schema, "stale", 150)  # 15% of the rows
    change(db, schema, "fresh", 20)  # 2%
    before = analyze_counts(db, schema)
    since = datetime.now(UTC)

    steps: list[tuple[str, int, int]] = []
    with progress.listening(lambda *step: steps.append(step)):
        report = refresh_one(policy=policy(schema))

    # progress (the CLI's bar) counts the tables as the workers finish them
    assert sorted(steps) == [("analyzing stale tables", 1, 2), ("analyzing stale tables", 2, 2)]
    assert outcomes(report) == {
        "new": ("analyzed", "never analyzed"),
        "stale": ("analyzed", "15.0% of rows changed since last analyze >= 10%"),
        "fresh": ("skipped", "fresh: 2.0% < 10%"),
    }
    assert (report.analyzed, report.failed, report.skipped) == (2, 0, 1)
    after = analyze_counts(db, schema)
    assert {t for t in after if after[t] > before.get(t, 0)} == {"stale", "new"}
    # the record: an artifact row per table, and the event with its counts
    rows = {r["table"]: r for r in artifact_rows(ARTIFACT_KEY)}
    assert rows[f"{schema}.stale"]["result"] == "analyzed"
    assert rows[f"{schema}.fresh"]["reason"] == "fresh: 2.0% < 10%"
    assert all(list(r)[:3] == ["table", "result", "reason"] for r in rows.values())
    event = wait_for_event("perfops.stats.refreshed", since=since)
    assert event.resource.id == f"perfops.postgres.127.0.0.1:5432/{db.info.dbname}"
    assert event.resource["perfops.database"] == db.info.dbname
    assert event.resource["perfops.outcome"] == "complete"
    assert {k: event.payload[k] for k in ("analyzed", "failed", "skipped", "failed_tables")} == {
        "analyzed": 2,
        "failed": 0,
        "skipped": 1,
        "failed_tables": [],
    }
    # a second run finds nothing stale
    again = refresh_stale_statistics(policy=policy(schema), return_state=True)
    assert again.is_completed()
    assert again.message == (
        "nothing to do: none of the 3 tables is stale (threshold 10% of rows changed since the "
        "last analyze)"
    )
    second = again.result()
    assert isinstance(second, StatisticsReport)
    assert (second.analyzed, second.skipped) == (0, 3)


def test_hostile_identifiers_are_quoted_and_other_schemas_untouched(
    db: psycopg.Connection[Any], schema: str
) -> None:
    hostile_schema = f'{schema} "odd"; --'
    db.execute(sql.SQL("create schema {}").format(sql.Identifier(hostile_schema)))
    try:
        names = ['x"; DROP TABLE y; --', "MixedCase", "with space", "y"]
        for t in names:
            create(db, hostile_schema, t, rows=10)
        create(db, schema, "bystander", rows=10)  # never analyzed, but not in the run's schemas
        flush(db)

        report = refresh_one(policy=policy(hostile_schema))

        assert {t.table_name: t.result for t in report.tables} == dict.fromkeys(names, "analyzed")
        shown = {t.table for t in report.tables}
        assert f'"{schema} ""odd""; --"."x""; DROP TABLE y; --"' in shown
        assert f'"{schema} ""odd""; --"."MixedCase"' in shown
        counts = analyze_counts(db, hostile_schema, schema)
        assert counts == {**dict.fromkeys(names, 1), "bystander": 0}  # y still exists
    finally:
        db.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(hostile_schema)))


def test_a_locked_table_fails_after_lock_timeout_and_the_others_are_analyzed(
    db: psycopg.Connection[Any],
    schema: str,
    pg_dsn: str,
    emitted: list[tuple[str, dict[str, Any], dict[str, str]]],
) -> None:
    for t in ("a", "b", "locked", "c"):
        create(db, schema, t)
    flush(db)
    with psycopg.connect(pg_dsn) as holder:  # another session holds ACCESS EXCLUSIVE
        holder.execute(
            sql.SQL("lock table {} in access exclusive mode").format(
                sql.Identifier(schema, "locked")
            )
        )
        started = time.monotonic()
        state = refresh_stale_statistics(
            policy=policy(schema, lock_timeout_ms=300), return_state=True
        )
        elapsed = time.monotonic() - started
        holder.rollback()

    # The others were analyzed, but the run's work did not fully succeed: Failed, saying which.
    assert state.is_failed()
    assert state.message == (
        f"1 of 4 tables failed: {schema}.locked: locked by another session: gave up after "
        "lock_timeout 300 ms"
    )
    report = report_of(state.result(raise_on_failure=False))
    assert isinstance(report, StatisticsReport)

    assert {t.table_name: t.result for t in report.tables} == {
        "a": "analyzed",
        "b": "analyzed",
        "c": "analyzed",
        "locked": "failed",
    }
    [locked] = [t for t in report.tables if t.table_name == "locked"]
    assert locked.error == "locked by another session: gave up after lock_timeout 300 ms"
    assert locked.duration_ms is not None and 250 <= locked.duration_ms < 2_000
    assert report.failed_tables == [f"{schema}.locked"]
    assert elapsed < 10
    assert analyze_counts(db, schema) == {"a": 1, "b": 1, "c": 1, "locked": 0}
    [(name, payload, labels)] = emitted
    assert (name, labels["perfops.outcome"]) == ("perfops.stats.refreshed", "partial")
    assert (payload["failed"], payload["failed_tables"]) == (1, [f"{schema}.locked"])


def test_dry_run_lists_what_it_would_analyze_and_changes_nothing(
    db: psycopg.Connection[Any],
    schema: str,
    emitted: list[tuple[str, dict[str, Any], dict[str, str]]],
) -> None:
    create(db, schema, "stale")
    create(db, schema, "fresh")
    analyze(db, schema, "stale", "fresh")
    change(db, schema, "stale", 120)
    before = analyze_counts(db, schema)

    report = refresh_one(policy=policy(schema), dry_run=True)

    assert outcomes(report) == {
        "stale": ("would analyze", "12.0% of rows changed since last analyze >= 10%"),
        "fresh": ("skipped", "fresh: 0.0% < 10%"),
    }
    assert (report.would_analyze, report.analyzed) == (1, 0)
    assert analyze_counts(db, schema) == before
    [(name, payload, labels)] = emitted
    assert (name, labels["perfops.outcome"]) == ("perfops.stats.previewed", "dry-run")
    assert (payload["would_analyze"], payload["analyzed"]) == (1, 0)


def test_a_table_filter_matching_nothing_fails_before_any_work_and_a_partial_one_says_so(
    db: psycopg.Connection[Any], schema: str, pg_dsn: str, tmp_path: Path
) -> None:
    create(db, schema, "orders")
    flush(db)
    state = refresh_stale_statistics(
        policy=policy(schema, include_tables=["odrers"]), return_state=True
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConfigurationError)
    assert str(error).startswith("no table matches include_tables odrers (--table): 1 table here")
    assert analyze_counts(db, schema) == {"orders": 0}
    # fleet_target given by hand (an API run) is no fleet child: the same failure
    hand = refresh_stale_statistics(
        policy=policy(schema, include_tables=["odrers"]), fleet_target="db-a", return_state=True
    )
    assert hand.is_failed() and isinstance(hand.result(raise_on_failure=False), ConfigurationError)
    # one database of a fleet without the table: nothing to do there, said, not a failure
    block = f"stats-{schema}".replace("_", "-")
    PostgresTarget(dsn=SecretStr(pg_dsn)).save(block, overwrite=True)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"targets:\n  - {{name: db-a, blocks: {{postgres: {block}}}}}\n")
    parent = refresh_stale_statistics(
        policy=policy(schema, include_tables=["odrers"]), targets="all", fleet_file=str(fleet)
    )
    assert isinstance(parent, FleetReport)
    [child] = parent.targets
    assert (child.result, child.reason) == (
        "done",
        "nothing to do: no table matches include_tables odrers (--table)",
    )
    assert analyze_counts(db, schema) == {"orders": 0}

    report = refresh_one(policy=policy(schema, include_tables=["orders", f"{schema}.nosuch"]))
    assert outcomes(report) == {"orders": ("analyzed", "never analyzed")}
    assert report.unmatched == f"no table matches include_tables {schema}.nosuch (--table)"
    state = refresh_stale_statistics(policy=policy(f"{schema}_typo"), return_state=True)
    assert isinstance(state.result(raise_on_failure=False), ConfigurationError)
    assert f"no table in include_schemas {schema}_typo (--schema)" in str(state.message)
    assert analyze_counts(db, schema) == {"orders": 1}


def test_vacuum_analyze_when_dead_tuples_pass_the_ratio(
    db: psycopg.Connection[Any], schema: str
) -> None:
    create(db, schema, "bloated")
    analyze(db, schema, "bloated")
    db.execute(sql.SQL("delete from {} where id <= 300").format(sql.Identifier(schema, "bloated")))
    flush(db)

    report = refresh_one(policy=policy(schema, vacuum_dead_ratio=0.2))

    assert outcomes(report) == {
        "bloated": (
            "vacuumed and analyzed",
            "30.0% of rows changed since last analyze >= 10%; dead tuples 30.0% >= 20%",
        )
    }
    row = db.execute(
        "select n_dead_tup, vacuum_count from pg_stat_user_tables where relid = %s::regclass",
        (f"{schema}.bloated",),
    ).fetchone()
    assert row == (0, 1)


def test_a_least_privilege_role_fails_with_the_privilege_named_and_touches_nothing(
    db: psycopg.Connection[Any], schema: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/production.md's role (pg_monitor, pg_read_all_stats, not the owner): the privilege
    preflight says once what it needs, no ANALYZE is attempted, and the run ends Failed."""
    role = f"perfops_stats_ro_{uuid.uuid4().hex[:8]}"
    for t in ("not_mine", "nor_this"):
        create(db, schema, t)
    flush(db)
    owner = db.info.user
    db.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    try:
        for grant in ("grant pg_monitor to {}", "grant pg_read_all_stats to {}"):
            db.execute(sql.SQL(grant).format(sql.Identifier(role)))
        db.execute(
            sql.SQL("grant usage on schema {} to {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
        monkeypatch.setenv("PERFOPS_DSN", psycopg.conninfo.make_conninfo(pg_dsn, user=role))
        before = analyze_counts(db, schema)

        state = refresh_stale_statistics(policy=policy(schema), return_state=True)

        assert state.is_failed()
        needs = (
            f"needs ownership of {schema}.nor_this, {schema}.not_mine (owner {owner}): "
            f"{superuser_fix(owner, role)}"
        )
        assert state.message == f"2 of 2 tables failed: {needs}"
        report = report_of(state.result(raise_on_failure=False))
        assert isinstance(report, StatisticsReport)
        assert {t.table_name: (t.result, t.error) for t in report.tables} == dict.fromkeys(
            ("not_mine", "nor_this"),
            ("not permitted", f"not attempted: needs ownership (owner {owner})"),
        )
        assert (report.analyzed, report.failed, report.not_permitted) == (0, 2, 2)
        assert report.privileges == needs
        assert analyze_counts(db, schema) == before  # nothing was attempted
        rows = artifact_rows(ARTIFACT_KEY)
        assert {r["result"] for r in rows} == {"not permitted"}
        # A table the role owns is analyzed; the run still fails for the others, unless the
        # operator allows a partial run.
        db.execute(
            sql.SQL("alter table {} owner to {}").format(
                sql.Identifier(schema, "nor_this"), sql.Identifier(role)
            )
        )
        state = refresh_stale_statistics(
            policy=policy(schema), allow_partial=True, return_state=True
        )
        assert state.is_completed() and state.message is not None
        assert state.message.startswith(f"1 of 2 tables failed: needs ownership of {schema}.")
        assert analyze_counts(db, schema)["nor_this"] == before["nor_this"] + 1
    finally:
        db.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
        db.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def test_another_run_holding_the_lock_stops_this_one_before_any_change(
    db: psycopg.Connection[Any], schema: str, pg_dsn: str
) -> None:
    create(db, schema, "new")
    flush(db)
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        other.execute("select pg_advisory_lock(%s)", (lock_key(LOCK_NAME),))
        state = refresh_stale_statistics(policy=policy(schema), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, LockBusy)
    assert "another perfops run holds the lock 'stats-refresh'" in str(error)
    assert analyze_counts(db, schema) == {"new": 0}


def test_timeouts_and_dropped_tables_become_results_not_exceptions(
    db: psycopg.Connection[Any], schema: str, pg_target: PostgresTarget, pg_dsn: str
) -> None:
    create(db, schema, "slow")
    rows = db.execute(
        "select oid::bigint from pg_class where oid = %s::regclass", (f"{schema}.slow",)
    ).fetchall()
    slow = TableStats(relid=rows[0][0], schema_name=schema, table_name="slow")
    gone = TableStats(relid=1, schema_name="public", table_name="dropped since")
    decisions = [
        Decision(table=t, action="analyze", code="never-analyzed", reason="never analyzed")
        for t in (slow, gone)
    ]
    with pg_target.get_connection() as conn:
        assert statement_for(decisions[1]).as_string(conn) == 'ANALYZE "public"."dropped since"'
    with psycopg.connect(pg_dsn) as holder:  # the statement times out while it waits
        lock = sql.SQL("lock table {} in access exclusive mode")
        holder.execute(lock.format(sql.Identifier(schema, "slow")))
        results = analyze_tables.fn(
            pg_target, decisions, parallelism=1, lock_timeout_ms=5_000, statement_timeout_ms=200
        )
        holder.rollback()
    assert [(r.table_name, r.status, r.error) for r in results] == [
        ("slow", "failed", "stopped by statement_timeout 200 ms"),
        ("dropped since", "missing", "dropped since the catalog was read"),
    ]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_perfops("stats", *args, env=env)


def test_cli_dry_run_json_and_human_output(
    db: psycopg.Connection[Any], schema: str, pg_dsn: str
) -> None:
    from typer.testing import CliRunner

    from cli.commands.stats import app

    create(db, schema, "new")
    create(db, schema, "[bold]x[/]", rows=10)  # rich markup in a name is printed as is
    flush(db)
    args = ["refresh", "--dsn", pg_dsn, "--schema", schema, "--dry-run"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(t["table"], t["result"]) for t in report["tables"]] == [
        (f"{schema}.new", "would analyze"),
        (f'{schema}."[bold]x[/]"', "would analyze"),
    ]
    human = CliRunner().invoke(app, args)
    assert human.exit_code == 0, human.output
    assert f"would analyze: {schema}.new\n    never analyzed\n" in human.stdout
    assert f'would analyze: {schema}."[bold]x[/]"' in human.stdout
    assert "dry run: nothing was analyzed" in human.stdout
    assert analyze_counts(db, schema) == {"new": 0, "[bold]x[/]": 0}


def test_cli_bad_value_names_the_flag_and_exits_2() -> None:
    usage = _cli("refresh", "--threshold", "0", env={})
    assert usage.returncode == 2
    assert usage.stderr.strip().count("\n") == 0
    assert "--threshold: Input should be greater than 0" in usage.stderr


def test_a_table_whose_counters_were_reset_after_it_grew_is_analyzed_not_called_fresh(
    db: psycopg.Connection[Any], schema: str
) -> None:
    """Analyzed at 1,000 rows, grown a hundredfold, then its counters reset (as pg_stat_reset(),
    a crash or a failover do to every table): n_mod_since_analyze is 0 and no analyze time is
    left. Before, the run said "fresh: 0.0% < 10%" and "nothing to do", and the planner kept
    estimating 1,000 rows."""
    create(db, schema, "Grown ü")
    analyze(db, schema, "Grown ü")
    db.execute(
        sql.SQL("insert into {} select g, 0 from generate_series(1, 100000) g").format(
            sql.Identifier(schema, "Grown ü")
        )
    )
    flush(db)
    db.execute(
        "select pg_stat_reset_single_table_counters(%s::regclass)",
        (sql.Identifier(schema, "Grown ü").as_string(db),),
    )
    report = refresh_one(policy=policy(schema))
    [t] = report.tables
    assert (t.code, t.result) == ("counters-reset", "analyzed")
    assert t.reason.startswith("change counters reset since its last analyze")
    row = db.execute(
        "select reltuples from pg_class where oid = %s::regclass",
        (sql.Identifier(schema, "Grown ü").as_string(db),),
    ).fetchone()
    assert row is not None and row[0] > 100_000
    again = refresh_one(policy=policy(schema))  # analyzed now: judged by its counters again
    assert [x.code for x in again.tables] == ["fresh"]


def test_a_partitioned_table_whose_partitions_grew_is_analyzed_once_with_them(
    db: psycopg.Connection[Any], schema: str
) -> None:
    """Autovacuum never analyzes a partitioned table. Before, perfops analyzed one only when it
    had never been analyzed: a new partition holding five times the rows left the parent's
    statistics at 1,000 rows for good ("partitioned table: PostgreSQL keeps no change
    counters for it"). Now its change count is its partitions'; the partitions go with its
    ANALYZE (not alongside it on another connection); a second run has nothing to do."""
    parent = sql.Identifier(schema, "Events ü")
    db.execute(sql.SQL("create table {} (id int, at int) partition by range (at)").format(parent))
    for name, low, high in (("Events 1", 0, 100), ("Events 2", 100, 200)):
        db.execute(
            sql.SQL(
                "create table {} partition of {} for values from ({}) to ({}) "
                "with (autovacuum_enabled = false)"
            ).format(sql.Identifier(schema, name), parent, sql.Literal(low), sql.Literal(high))
        )
    db.execute(
        sql.SQL("insert into {} select g, g % 100 from generate_series(1, 1000) g").format(parent)
    )
    analyze(db, schema, "Events ü")
    first = refresh_one(policy=policy(schema))
    assert {t.table_name: t.code for t in first.tables} == {
        "Events ü": "partitioned",
        "Events 1": "fresh",
        "Events 2": "fresh",
    }
    db.execute(
        sql.SQL("insert into {} select g, 100 + g % 100 from generate_series(1, 5000) g").format(
            parent
        )
    )
    flush(db)
    report = refresh_one(policy=policy(schema))
    got = {t.table_name: (t.code, t.result) for t in report.tables}
    assert got == {
        "Events ü": ("stale", "analyzed"),
        "Events 2": ("with-parent", "skipped"),
        "Events 1": ("fresh", "skipped"),
    }
    [row] = db.execute(
        "select reltuples from pg_class where oid = %s::regclass", (parent.as_string(db),)
    ).fetchall()
    assert row[0] == 6_000
    again = refresh_one(policy=policy(schema))
    assert not [t for t in again.tables if t.result != "skipped"], again.tables


def test_a_server_idle_session_timeout_does_not_end_the_run(
    db: psycopg.Connection[Any], schema: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection holding `stats-refresh` is idle while the tables are analyzed. Before,
    with idle_session_timeout set for the role (here in the DSN), the server ended it mid-run
    (the lock gone with it) and the run failed after all its work: "unexpected
    IdleSessionTimeout: terminating connection due to idle-session timeout"."""
    import threading

    create(db, schema, "held")
    monkeypatch.setenv(
        "PERFOPS_DSN",
        psycopg.conninfo.make_conninfo(pg_dsn, options="-c idle_session_timeout=200"),
    )
    holder = psycopg.connect(pg_dsn)  # ANALYZE waits for it: the run outlasts 200 ms idle
    holder.execute(
        sql.SQL("lock table {} in share update exclusive mode").format(
            sql.Identifier(schema, "held")
        )
    )
    release = threading.Timer(3.0, holder.rollback)
    release.start()
    try:
        report = refresh_one(policy=policy(schema, lock_timeout_ms=10_000))
    finally:
        release.join()
        holder.close()
    assert [(t.table_name, t.result) for t in report.tables] == [("held", "analyzed")]
