"""One Prefect server (on its own PostgreSQL database) for all end-to-end tests of a session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import ADMIN_DSN
from tests.e2e.stack import POOL, perfops, prefect, spawn, stop, wait_healthy
from tests.servers import free_port


@pytest.fixture(scope="session")
def prefect_database() -> Iterator[str]:
    """The server's own PostgreSQL database, as production runs it: the default SQLite-backed
    server answers 503 when a worker, flow runs and their events write at once."""
    name = f"perfops_e2e_prefect_{os.getpid()}"
    drop = sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    info = conninfo_to_dict(ADMIN_DSN)
    login = quote(str(info.get("user", "postgres")), safe="")
    if info.get("password"):
        login += ":" + quote(str(info["password"]), safe="")
    host, port = info.get("host", "127.0.0.1"), info.get("port", 5432)
    yield f"postgresql+asyncpg://{login}@{host}:{port}/{name}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(drop)


@pytest.fixture(scope="session")
def prefect_server(
    tmp_path_factory: pytest.TempPathFactory, prefect_database: str
) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERFOPS_", "PREFECT_"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_database,
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
            "PREFECT_UI_ENABLED": "false",
        }
    )
    log = home / "server.log"
    proc = spawn(["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log, home)
    try:
        wait_healthy(api, proc, log)
        yield {**env, "PREFECT_API_URL": api}
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def deployed(prefect_server: dict[str, str]) -> dict[str, str]:
    """perfops' block types registered, the process work pool, and every deployment of
    prefect.yaml deployed with `perfops deploy` (what docs/deployments.md tells operators)."""
    registered = prefect(prefect_server, "block", "register", "-m", "blocks")
    assert "perfops PostgreSQL Target" in registered
    prefect(prefect_server, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    perfops(prefect_server, "deploy")
    return prefect_server


@pytest.fixture()
def partitioned_table(pg_dsn: str) -> Iterator[str]:
    """`e2e_rotation.events`, monthly: this month's partition, and one long expired (2020-01)
    holding rows (not the last child, which a rotation never drops)."""
    now = datetime.now(UTC)
    this_month = datetime(now.year, now.month, 1, tzinfo=UTC)
    next_month = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists e2e_rotation cascade")
        conn.execute("create schema e2e_rotation")
        conn.execute(
            "create table e2e_rotation.events (at timestamptz not null, v int)"
            " partition by range (at)"
        )
        conn.execute(
            "create table e2e_rotation.events_p2020_01 partition of e2e_rotation.events"
            " for values from ('2020-01-01 00:00+00') to ('2020-02-01 00:00+00')"
        )
        conn.execute(
            sql.SQL(
                "create table e2e_rotation.events_now partition of e2e_rotation.events"
                " for values from ({}) to ({})"
            ).format(sql.Literal(this_month), sql.Literal(next_month))
        )
        conn.execute(
            "insert into e2e_rotation.events"
            " select '2020-01-15 00:00+00'::timestamptz, g from generate_series(1, 100) g"
        )
    yield "e2e_rotation.events"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists e2e_rotation cascade")
