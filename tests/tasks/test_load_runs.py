"""Load test history in a PostgreSQL database of its own: baselines are kept and read by (test,
target), and the migration from schema 1 (baselines keyed by test only) keeps existing rows
working: a baseline whose runs all sent to one target gets that target, one whose runs sent to
several is never used. Rerunning the migration changes nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from blocks import PostgresTarget
from decisions.load_baseline import Baseline, BaselineEndpoint
from tasks.postgres.load_runs import (
    migrate_load_history,
    read_load_baseline,
    save_load_baseline,
)
from tests.conftest import ADMIN_DSN

DB = f"perfops_load_runs_{os.getpid()}"
STAGING = "https://staging.example.com"
DEMO = "http://127.0.0.1:8089"
AT = datetime(2026, 12, 1, 1, 30, tzinfo=UTC)
SCHEMA_1 = (  # as perfops created them before targets keyed the baselines
    "create schema perfops",
    """create table perfops.load_test_runs (
        run_id text primary key, test text not null, started_at timestamptz not null,
        target text not null, passed boolean not null, aborted boolean not null,
        regressed boolean not null, asked_rps double precision not null,
        achieved_rps double precision not null, record jsonb not null)""",
    "create index load_test_runs_test_started on perfops.load_test_runs (test, started_at desc)",
    """create table perfops.load_test_baselines (
        test text not null, established_at timestamptz not null, baseline jsonb not null,
        primary key (test, established_at))""",
)


@pytest.fixture()
def history() -> Iterator[PostgresTarget]:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(DB)))
    yield PostgresTarget(dsn=SecretStr(psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=DB)))
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DB)))


def baseline(
    established_at: datetime, run_ids: list[str], p95: float, target: str = ""
) -> Baseline:
    return Baseline(
        test="api",
        target=target,
        established_at=established_at,
        run_ids=run_ids,
        endpoints={"all": BaselineEndpoint(p95_ms=p95, window_p95s=[p95], runs=len(run_ids))},
    )


def test_schema_1_baselines_get_their_runs_target_and_are_read_by_target(
    history: PostgresTarget,
) -> None:
    dsn = history.dsn.get_secret_value()
    with psycopg.connect(dsn) as conn:
        for statement in SCHEMA_1:
            conn.execute(statement)
        for run_id, target in (("r1", STAGING), ("r2", STAGING), ("r3", DEMO), ("r4", STAGING)):
            conn.execute(
                "insert into perfops.load_test_runs values (%s, 'api', %s, %s, true, false, "
                "false, 100, 100, '{}')",
                (run_id, AT, target),
            )
        old = baseline(AT, ["r1", "r2"], 80.0)  # both runs against staging
        mixed = baseline(AT.replace(day=2), ["r3", "r4"], 9.0)  # demo and staging mixed
        for b in (old, mixed):
            data = b.model_dump(mode="json")
            del data["target"]  # schema 1 kept no target
            conn.execute(
                "insert into perfops.load_test_baselines values ('api', %s, %s)",
                (b.established_at, Jsonb(data)),
            )
    assert migrate_load_history.fn(history) == 2
    assert migrate_load_history.fn(history) == 2  # rerun: nothing changes

    staging = read_load_baseline.fn(history, "api", STAGING)
    assert staging is not None and staging.target == STAGING
    assert staging.run_ids == ["r1", "r2"]  # not the newer, mixed one
    assert read_load_baseline.fn(history, "api", DEMO) is None  # staging's is not the demo's

    # a baseline per target at the same moment: both kept
    save_load_baseline.fn(history, baseline(AT, ["r3"], 9.0, target=DEMO))
    demo = read_load_baseline.fn(history, "api", DEMO)
    assert demo is not None and (demo.target, demo.run_ids) == (DEMO, ["r3"])
    with psycopg.connect(dsn) as conn:
        key = conn.execute(
            "select pg_get_indexdef('perfops.load_test_baselines_pkey'::regclass)"
        ).fetchone()
        targets = conn.execute(
            "select target from perfops.load_test_baselines order by established_at, target"
        ).fetchall()
    assert key is not None and key[0].endswith("(test, target, established_at)")
    assert targets == [(DEMO,), (STAGING,), ("",)]  # the mixed one: never read


def test_a_new_database_keys_baselines_by_test_and_target(history: PostgresTarget) -> None:
    migrate_load_history.fn(history)
    save_load_baseline.fn(history, baseline(AT, ["a"], 50.0, target=STAGING))
    assert read_load_baseline.fn(history, "api", DEMO) is None
    found = read_load_baseline.fn(history, "api", STAGING)
    assert found is not None and found.run_ids == ["a"]
