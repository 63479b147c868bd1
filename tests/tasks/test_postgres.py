"""PostgreSQL tasks against the real server: timeouts, advisory locks, server facts."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql
from pydantic import SecretStr

from blocks import PostgresTarget
from perfops.errors import ConnectionFailed, LockBusy
from tasks.postgres.server import (
    advisory_lock,
    connect,
    ensure_primary,
    fetch_postgres_info,
    lock_key,
    run_query,
    run_statement,
    set_timeouts,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _retries(caplog: pytest.LogCaptureFixture) -> int:
    """How many retries Prefect's task engine announced."""
    return sum(1 for r in caplog.records if "will start immediately" in r.getMessage())


def test_stand_in_has_hypopg_and_pg_stat_statements(pg_target: PostgresTarget) -> None:
    info = fetch_postgres_info(pg_target)
    assert info.server_version_num >= 150000
    assert "pg_stat_statements" in (info.shared_preload_libraries or [])
    assert info.reads_all_statements
    assert {n: e.installed_version is not None for n, e in info.extensions.items()} == {
        "pg_stat_statements": True,
        "hypopg": True,
        "pg_partman": True,
    }
    # hypopg really plans with a hypothetical index
    run_statement(pg_target, "create table if not exists hypo_t (id int, v text)")
    run_statement(
        pg_target, "insert into hypo_t select g, 'v' || g from generate_series(1, 20000) g"
    )
    run_statement(pg_target, "analyze hypo_t")
    with connect(pg_target) as conn:
        conn.execute("select * from hypopg_create_index('create index on hypo_t (id)')")
        plan = conn.execute("explain select * from hypo_t where id = 42").fetchall()
    assert "hypo_t_id" in " ".join(str(r["QUERY PLAN"]) for r in plan)
    # pg_stat_statements sees what we run
    run_query(pg_target, "select count(*) from hypo_t where id < %s", (10,))
    rows = run_query(
        pg_target,
        "select query, calls from pg_stat_statements where query like %s",
        ("%from hypo_t where id < $1%",),
    )
    assert rows and rows[0]["calls"] >= 1


def test_connections_carry_application_name_and_timeouts(pg_target: PostgresTarget) -> None:
    [row] = run_query(
        pg_target,
        "select current_setting('application_name') as app, "
        "current_setting('lock_timeout') as lock, "
        "current_setting('statement_timeout') as stmt",
    )
    assert row == {"app": "perfops-tests", "lock": "5s", "stmt": "1min"}


def test_statement_timeout_stops_a_long_query_and_is_not_retried(
    pg_target: PostgresTarget, caplog: pytest.LogCaptureFixture
) -> None:
    state = run_query.with_options(retries=2, retry_delay_seconds=0)(
        pg_target, "select pg_sleep(5)", statement_timeout_ms=200, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(pg_errors.QueryCanceled):
        state.result()
    assert _retries(caplog) == 0  # permanent: no retry despite retries=2


def test_connection_failure_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    target = PostgresTarget(
        dsn=SecretStr("host=127.0.0.1 port=1 user=x dbname=y"), connect_timeout_s=1
    )
    state = run_query.with_options(retries=2, retry_delay_seconds=0)(
        target, "select 1", return_state=True
    )
    assert state.is_failed()
    assert _retries(caplog) == 2  # transient: retried twice, then failed


def test_lock_timeout_bounds_waiting_for_a_lock(pg_target: PostgresTarget) -> None:
    run_statement(pg_target, "create table if not exists locked_t (id int)")
    with connect(pg_target) as holder:
        holder.execute("lock table locked_t in access exclusive mode")
        with connect(pg_target) as waiter:
            set_timeouts(waiter, lock_timeout_ms=100)
            with pytest.raises(pg_errors.LockNotAvailable):
                waiter.execute("select * from locked_t")


def test_advisory_lock_is_exclusive_and_released(pg_target: PostgresTarget) -> None:
    with (
        connect(pg_target, autocommit=True) as first,
        connect(pg_target, autocommit=True) as second,
    ):
        with advisory_lock(first, "rotate:audit_logs") as key:
            assert key == lock_key("rotate:audit_logs")
            with (
                pytest.raises(LockBusy, match="rotate:audit_logs"),
                advisory_lock(second, "rotate:audit_logs"),
            ):
                pass
            with advisory_lock(second, "rotate:other_table"):
                pass
        with advisory_lock(second, "rotate:audit_logs"):
            pass


def test_lock_key_is_stable_and_signed_64_bit() -> None:
    key = lock_key("x")
    assert key == lock_key("x") != lock_key("y")
    assert -(2**63) <= key < 2**63


def test_primary_check_passes_on_primary(pg_target: PostgresTarget) -> None:
    with connect(pg_target) as conn:
        ensure_primary(conn, "create an index")


def test_identifiers_go_through_sql_identifier(pg_target: PostgresTarget) -> None:
    name = 'odd "table" name'
    run_statement(
        pg_target, sql.SQL("create table if not exists {} (id int)").format(sql.Identifier(name))
    )
    rows = run_query(pg_target, "select relname from pg_class where relname = %s", (name,))
    assert rows == [{"relname": name}]


def test_unreachable_server_is_a_one_line_error_without_password() -> None:
    target = PostgresTarget(dsn=SecretStr("postgresql://bob:pw-never-shown@127.0.0.1:1/db"))
    with pytest.raises(ConnectionFailed) as info, connect(target):
        pass
    message = str(info.value)
    assert "pw-never-shown" not in message
    assert "\n" not in message
    assert "bob@127.0.0.1:1/db" in message
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


def test_statement_texts_with_a_password_are_masked(pg_target: PostgresTarget, pg_dsn: str) -> None:
    from tasks.postgres.statements import fetch_statement_stats

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop role if exists perfops_mask_probe")
        conn.execute("create role perfops_mask_probe")
        conn.execute("alter role perfops_mask_probe password 'mask-me-1234'")
        conn.execute("drop role perfops_mask_probe")
    texts = [s.query for s in fetch_statement_stats.fn(pg_target, limit=5000)]
    assert any("perfops_mask_probe password" in t for t in texts)
    assert not any("mask-me-1234" in t for t in texts)
