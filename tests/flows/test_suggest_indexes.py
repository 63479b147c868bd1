"""suggest_indexes on the real PostgreSQL with pg_stat_statements and hypopg."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from blocks import PostgresTarget
from decisions.fleet import FleetReport
from decisions.index_health import IndexHealthSettings, built_at
from decisions.index_suggestions import IndexSuggestionReport, nothing_suggested
from decisions.indexing import Candidate, IndexAdvisorSettings, index_name
from flows.check_index_health import check_index_health
from flows.suggest_indexes import suggest_indexes
from perfops.errors import ConfigurationError, report_of
from tasks.postgres.index_builds import BuildRequest, create_indexes
from tests.records import artifact_rows, one_target, superuser_fix

pytestmark = pytest.mark.usefixtures("prefect_harness")

HOSTILE = 'x"; DROP TABLE y; --'
SCOPE = ["adv.orders", f"adv.{HOSTILE}"]
ORDERS_IDX = index_name(Candidate(schema_name="adv", table_name="orders", columns=["customer_id"]))
HOSTILE_IDX = index_name(Candidate(schema_name="adv", table_name=HOSTILE, columns=["Mixed Case"]))


def _invalid_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "select i.relname from pg_index x join pg_class i on i.oid = x.indexrelid "
        "join pg_namespace n on n.oid = i.relnamespace where n.nspname = 'adv' and not x.indisvalid"
    ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture()
def workload(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """adv.orders (100k rows, no index) and a hostile-named table, with their queries counted."""
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists adv cascade")
        conn.execute("create schema adv")
        conn.execute("create table adv.y (id int)")  # what the hostile name would drop
        conn.execute(
            "create table adv.orders as select g as id, (g * 7919) % 20000 as customer_id, "
            "case when g % 2 = 0 then 'open' else 'closed' end as status, "
            "now() - g * interval '1 minute' as created_at, (g % 1000)::numeric as total "
            "from generate_series(1, 100000) g"
        )
        conn.execute(
            sql.SQL(
                'create table adv.{} as select g as id, g % 5000 as "Mixed Case" '
                "from generate_series(1, 50000) g"
            ).format(sql.Identifier(HOSTILE))
        )
        conn.execute("analyze adv.orders")
        conn.execute(sql.SQL("analyze adv.{}").format(sql.Identifier(HOSTILE)))
        conn.execute(
            "select pg_stat_statements_reset(0, (select oid from pg_database "
            "where datname = current_database()), 0)"
        )
        for i in range(30):
            conn.execute("select * from adv.orders where customer_id = %s", (i,)).fetchall()
            conn.execute("select count(*) from adv.orders where status = %s", ("open",)).fetchall()
            conn.execute(
                sql.SQL('select id from adv.{} where "Mixed Case" = %s').format(
                    sql.Identifier(HOSTILE)
                ),
                (i,),
            ).fetchall()
    yield pg_dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists adv cascade")


def _settings(**kw: Any) -> IndexAdvisorSettings:
    return IndexAdvisorSettings(min_calls=10, include_tables=SCOPE, **kw)


def test_suggests_what_pays_off_with_evidence_and_builds_nothing(workload: str) -> None:
    report = one_target(suggest_indexes, settings=_settings())
    by_table = {(s.table, tuple(s.columns)): s for s in report.suggestions}
    assert set(by_table) == {("adv.orders", ("customer_id",)), (f"adv.{HOSTILE}", ("Mixed Case",))}
    orders = by_table[("adv.orders", ("customer_id",))]
    assert orders.ddl.startswith(f'CREATE INDEX CONCURRENTLY "{ORDERS_IDX}" ON "adv"."orders"')
    [helped] = orders.queries
    assert helped["calls"] == 30 and helped["cost_after"] < helped["cost_before"] * 0.1
    assert orders.size_bytes > 0 and orders.est_time_saved_ms > 0
    reasons = {
        (str(r.candidate.table), tuple(r.candidate.columns)): r.reason for r in report.rejected
    }
    assert reasons[("adv.orders", ("status",))].startswith("saves ")  # low selectivity: no index
    assert report.builds == [] and not report.applied
    with psycopg.connect(workload) as conn:
        count = conn.execute("select count(*) from pg_indexes where schemaname = 'adv'").fetchone()
    assert count == (0,)


def test_apply_builds_concurrently_verifies_and_a_rerun_suggests_nothing(workload: str) -> None:
    report = one_target(suggest_indexes, settings=_settings(), apply=True)
    assert {b.status for b in report.builds} == {"created"}
    for build in report.builds:
        assert build.used_by, build
        assert all(build.costs_after[q] < build.costs_before[q] for q in build.used_by)
    with psycopg.connect(workload) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "select indexname from pg_indexes where schemaname = 'adv'"
            ).fetchall()
        }
        assert names == {ORDERS_IDX, HOSTILE_IDX}
        assert _invalid_indexes(conn) == []
        assert conn.execute("select to_regclass('adv.y') is not null").fetchone() == (True,)
    again = one_target(suggest_indexes, settings=_settings(), apply=True)
    assert again.suggestions == [] and again.builds == []
    reasons = [r.reason for r in again.rejected]
    assert f"covered by {ORDERS_IDX} (customer_id)" in reasons
    # each build leaves its record, so check_index_health calls the new indexes new, not unused
    with psycopg.connect(workload) as conn:
        comments = conn.execute(
            "select obj_description(indexrelid, 'pg_class') from pg_stat_user_indexes "
            "where schemaname = 'adv' and indexrelname like 'perfops_idx_%'"
        ).fetchall()
    assert len(comments) == 2 and all(built_at(c) is not None for (c,) in comments), comments
    health = one_target(check_index_health, settings=IndexHealthSettings(min_size_bytes=0))
    assert not [f for f in health.findings if f.index_name.startswith("perfops_idx_")]
    aged = IndexHealthSettings(min_size_bytes=0, new_index_grace_days=0)
    unused = one_target(check_index_health, settings=aged).findings
    assert {f.index_name for f in unused if f.kind == "unused"} >= {ORDERS_IDX}


def test_a_table_filter_naming_no_table_fails_before_costing_and_a_partial_one_says_so(
    workload: str, tmp_path: Path
) -> None:
    state = suggest_indexes(
        settings=IndexAdvisorSettings(min_calls=10, include_tables=["adv.odrers"]),
        return_state=True,
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConfigurationError)
    assert str(error).startswith("no table matches include_tables adv.odrers (--table): ")
    assert "adv.orders" in str(error)  # what is there
    hand = suggest_indexes(  # fleet_target given by hand (an API run): no fleet child
        settings=IndexAdvisorSettings(min_calls=10, include_tables=["adv.odrers"]),
        fleet_target="db-a",
        return_state=True,
    )
    assert hand.is_failed() and isinstance(hand.result(raise_on_failure=False), ConfigurationError)
    # one database of a fleet without the table: nothing to do there
    PostgresTarget(dsn=SecretStr(workload)).save("advisor-fleet-a", overwrite=True)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("targets:\n  - {name: db-a, blocks: {postgres: advisor-fleet-a}}\n")
    parent = suggest_indexes(
        settings=IndexAdvisorSettings(min_calls=10, include_tables=["adv.odrers"]),
        targets="all",
        fleet_file=str(fleet),
    )
    assert isinstance(parent, FleetReport)
    [child] = parent.targets
    assert (child.result, child.reason) == (
        "done",
        "no table matches include_tables adv.odrers here: nothing to suggest",
    )

    report = one_target(
        suggest_indexes,
        settings=IndexAdvisorSettings(min_calls=10, include_tables=["orders", "adv.nosuch"]),
    )
    assert report.unknown == "no table matches include_tables adv.nosuch (--table)"
    assert [(s.table, s.columns) for s in report.suggestions] == [("adv.orders", ["customer_id"])]


def test_locked_table_statements_are_skipped_with_the_reason(workload: str) -> None:
    PostgresTarget(dsn=SecretStr(workload), lock_timeout_ms=200).save(
        "advisor-test", overwrite=True
    )
    with psycopg.connect(workload) as holder:
        holder.execute("lock table adv.orders in access exclusive mode")
        report = one_target(suggest_indexes, postgres_block="advisor-test", settings=_settings())
        holder.rollback()
    skipped = {s.query: s.reason for s in report.skipped}
    locked = [r for q, r in skipped.items() if "adv.orders" in q]
    assert locked and all("lock timeout" in r for r in locked)
    assert [s.table for s in report.suggestions] == [f"adv.{HOSTILE}"]  # the other table went on


def test_build_blocked_by_a_lock_fails_cleanly_and_leftovers_are_cleaned(workload: str) -> None:
    target = PostgresTarget(dsn=SecretStr(workload))
    request = BuildRequest(
        candidate=Candidate(schema_name="adv", table_name="orders", columns=["customer_id"]),
        queries={},
        expected_costs={},
    )
    with psycopg.connect(workload, autocommit=True) as conn:
        # a killed run's leftover: an INVALID perfops index
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "create unique index concurrently perfops_idx_orders_status on adv.orders (status)"
            )
        assert _invalid_indexes(conn) == ["perfops_idx_orders_status"]
    with psycopg.connect(workload) as holder:
        holder.execute("lock table adv.orders in share update exclusive mode")
        [blocked] = create_indexes.fn(target, [request], lock_timeout_ms=200)
        holder.rollback()
    assert blocked.status == "failed" and "lock timeout" in blocked.detail
    with psycopg.connect(workload) as conn:
        assert _invalid_indexes(conn) == ["perfops_idx_orders_status"]  # nothing half-done
    [built] = create_indexes.fn(target, [request], lock_timeout_ms=2000)
    assert built.status == "created"
    with psycopg.connect(workload) as conn:
        assert _invalid_indexes(conn) == []  # the rerun cleaned the leftover first


def test_a_build_cut_short_drops_the_invalid_index_it_left(workload: str) -> None:
    target = PostgresTarget(dsn=SecretStr(workload))
    request = BuildRequest(
        candidate=Candidate(
            schema_name="adv", table_name="orders", columns=["created_at", "total"]
        ),
        queries={},
        expected_costs={},
    )
    [cut] = create_indexes.fn(target, [request], statement_timeout_ms=1)
    assert cut.status == "failed" and "statement timeout" in cut.detail
    # Cancelled before or after PostgreSQL recorded the index: either way nothing is left.
    assert (
        "the INVALID index it left was dropped" in cut.detail
        or "the build left no index behind" in cut.detail
    ), cut.detail
    with psycopg.connect(workload) as conn:
        assert _invalid_indexes(conn) == []
        assert conn.execute(
            "select count(*) from pg_indexes where indexname = %s", (cut.index_name,)
        ).fetchone() == (0,)


def test_a_build_that_fails_midway_drops_its_own_invalid_index(workload: str) -> None:
    """A row too big for a btree fails the build after PostgreSQL recorded the index: the
    INVALID index it left (its name, on its table, not there before) is dropped."""
    target = PostgresTarget(dsn=SecretStr(workload))
    with psycopg.connect(workload, autocommit=True) as conn:
        conn.execute(
            "create table adv.notes as select g as id, "
            "(select string_agg(md5(random()::text || g || k), '') from generate_series(1, 200) k) "
            "as body from generate_series(1, 3) g"
        )
    candidate = Candidate(schema_name="adv", table_name="notes", columns=["body"])
    [failed] = create_indexes.fn(
        target, [BuildRequest(candidate=candidate, queries={}, expected_costs={})]
    )
    assert failed.status == "failed" and "index row size" in failed.detail, failed.detail
    assert failed.detail.endswith("; the INVALID index it left was dropped")
    with psycopg.connect(workload) as conn:
        assert _invalid_indexes(conn) == []


def test_a_name_taken_by_another_tables_index_is_reported_and_that_index_kept(
    workload: str,
) -> None:
    """A relation already holding the build's name (here a valid index on another table) is
    reported before any build; before, the build failed with "already exists" and its cleanup
    ran DROP INDEX CONCURRENTLY IF EXISTS on that name, dropping the other table's index."""
    target = PostgresTarget(dsn=SecretStr(workload))
    candidate = Candidate(schema_name="adv", table_name="orders", columns=["customer_id"])
    name = index_name(candidate)
    with psycopg.connect(workload, autocommit=True) as conn:
        conn.execute(sql.SQL("create index {} on adv.y (id)").format(sql.Identifier(name)))
    [clash] = create_indexes.fn(
        target, [BuildRequest(candidate=candidate, queries={}, expected_costs={})]
    )
    assert clash.status == "failed"
    assert f"the name adv.{name} is taken by an index on adv.y" in clash.detail
    with psycopg.connect(workload) as conn:
        kept = conn.execute(
            "select t.relname, x.indisvalid from pg_index x "
            "join pg_class t on t.oid = x.indrelid where x.indexrelid = to_regclass(%s)",
            (f"adv.{name}",),
        ).fetchone()
        assert kept == ("y", True)
        assert _invalid_indexes(conn) == []


def test_apply_builds_only_on_tables_the_role_owns_and_fails_naming_the_rest(
    workload: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = "perfops_advisor_ro"
    with psycopg.connect(workload, autocommit=True) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
        for statement in (
            "create role {} login",
            "grant pg_read_all_stats to {}",
            "grant usage, create on schema adv to {}",
            "grant select on all tables in schema adv to {}",
            "alter table adv.orders owner to {}",
        ):
            conn.execute(sql.SQL(statement).format(sql.Identifier(role)))
        owner = conn.info.user
    try:
        monkeypatch.setenv("PERFOPS_DSN", psycopg.conninfo.make_conninfo(workload, user=role))
        state = suggest_indexes(settings=_settings(), apply=True, return_state=True)
        assert state.is_failed()
        hostile = 'adv."x""; DROP TABLE y; --"'
        assert state.message == (
            f"1 of 2 index builds failed: needs ownership of {hostile} (owner {owner}): "
            f"{superuser_fix(owner, role)}"
        )
        report = report_of(state.result(raise_on_failure=False))
        assert isinstance(report, IndexSuggestionReport)
        by_status = {b.index_name: (b.status, b.detail) for b in report.builds}
        assert by_status[ORDERS_IDX][0] == "created"
        assert by_status[HOSTILE_IDX] == (
            "failed",
            f"not attempted: needs ownership (owner {owner})",
        )
        with psycopg.connect(workload) as conn:
            names = {
                r[0]
                for r in conn.execute("select indexname from pg_indexes where schemaname = 'adv'")
            }
        assert names == {ORDERS_IDX}
    finally:
        with psycopg.connect(workload, autocommit=True) as conn:
            conn.execute("drop schema if exists adv cascade")
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


def test_a_read_only_server_without_hypopg_fails_saying_where_to_create_it(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A standby (here a database whose sessions are read-only: the same SQLSTATE 25006) cannot
    run perfops' CREATE EXTENSION hypopg: the run fails with the fix, not 'unexpected
    ReadOnlySqlTransaction'."""
    db = f"{psycopg.conninfo.conninfo_to_dict(pg_dsn)['dbname']}_read_only"
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, dbname=db)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(db)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(db)))
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create extension pg_stat_statements")
            conn.execute(
                "create table orders as select g as id, g % 5000 as customer_id "
                "from generate_series(1, 20000) g"
            )
            conn.execute("analyze orders")
            conn.execute(
                sql.SQL("alter database {} set default_transaction_read_only = on").format(
                    sql.Identifier(db)
                )
            )
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(20):
                conn.execute("select * from orders where customer_id = %s", (i,)).fetchall()
        monkeypatch.setenv("PERFOPS_DSN", dsn)
        state = suggest_indexes(settings=IndexAdvisorSettings(min_calls=10), return_state=True)
        assert state.is_failed()
        assert state.message is not None
        assert state.message.endswith(
            f"hypopg is not installed in database {db} and this session is read-only "
            "(default_transaction_read_only), so perfops cannot create it: run CREATE EXTENSION "
            "hypopg; on the primary as the database owner (it reaches the replicas by "
            "replication)"
        )
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(db))
            )


def test_a_role_without_pg_read_all_stats_is_told_the_workload_is_hidden(
    workload: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workload's statements are another role's: without pg_read_all_stats they are hidden
    (`<insufficient privilege>`), so nothing is suggested, and the run says why and the grant."""
    role = "perfops_advisor_nostats"
    with psycopg.connect(workload, autocommit=True) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    try:
        monkeypatch.setenv("PERFOPS_DSN", psycopg.conninfo.make_conninfo(workload, user=role))
        report = one_target(suggest_indexes, settings=_settings())
        assert report.suggestions == []
        assert report.hidden is not None and report.hidden.role == role
        assert report.hidden.statements >= 3  # the workload's three statements, at least
        warning = report.hidden.warning
        assert warning.endswith(f"grant pg_read_all_stats to {role} to see them")
        assert warning in nothing_suggested(report)
        rows = artifact_rows("perfops-index-suggestions")
        assert {"result": "statements hidden", "reason": warning}.items() <= next(
            r for r in rows if r["result"] == "statements hidden"
        ).items()
    finally:
        with psycopg.connect(workload, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
    monkeypatch.setenv("PERFOPS_DSN", workload)  # a role that sees every statement
    assert one_target(suggest_indexes, settings=_settings()).hidden is None


def test_hypopg_off_the_search_path_fails_with_the_fix(workload: str) -> None:
    with psycopg.connect(workload, autocommit=True) as conn:
        conn.execute("create schema if not exists hypo_ext")
        conn.execute("alter extension hypopg set schema hypo_ext")
    try:
        state = suggest_indexes(settings=_settings(), return_state=True)
    finally:
        with psycopg.connect(workload, autocommit=True) as conn:
            conn.execute("alter extension hypopg set schema public")
            conn.execute("drop schema hypo_ext")
    assert state.is_failed()
    assert state.message is not None
    assert "hypopg is installed in schema hypo_ext of database perfops_test_" in state.message
    assert state.message.endswith(
        'search_path = "$user", public, "hypo_ext"; (or ALTER EXTENSION hypopg SET SCHEMA public;)'
    )


def test_cli_apply_json_exits_1_when_a_build_failed(
    workload: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, `--apply --json` printed the failed build and exited 0 (the human output exited
    1): a script reading the exit code took a failed build for a built index."""
    from cli.command import main

    with psycopg.connect(workload, autocommit=True) as conn:  # the build's name is taken
        conn.execute(sql.SQL("create index {} on adv.y (id)").format(sql.Identifier(ORDERS_IDX)))
    args = ["indexes", "suggest", "--dsn", workload, "--table", "adv.orders", "--min-calls", "10"]
    code = main([*args, "--apply", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    builds = {b["index_name"]: b for b in json.loads(captured.out)["builds"]}
    assert builds[ORDERS_IDX]["status"] == "failed"
    assert "is taken by an index on adv.y" in builds[ORDERS_IDX]["detail"]
