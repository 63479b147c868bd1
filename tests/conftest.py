"""Session-wide real servers on 127.0.0.1 for the perfops tests.

PostgreSQL (the machine's, with pg_stat_statements preloaded by scripts/setup.sh; a fresh
database per session with pg_stat_statements, hypopg and pg_partman), Redis (db 15, flushed),
a real Prometheus with back-filled history, moto's server for S3 and Auto Scaling, an aiosmtpd
SMTP server, a Slack Web API stand-in, and one Prefect test harness.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from perfops.settings import apply_prefect_defaults

# Before anything imports prefect: the settings the CLI gives Prefect (perfops.settings).
apply_prefect_defaults()
# Tasks are also called on their own in tests (outside a flow run).
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# (PERFOPS_TEST_* stay: they choose the tests' own servers, read below.)
for _name in [n for n in os.environ if n.startswith("PERFOPS_") and "PERFOPS_TEST_" not in n]:
    del os.environ[_name]
# Commands run by the tests use the harness (PREFECT_API_URL) or a throwaway server, never the
# local server the CLI keeps (tests/cli/test_server.py starts its own on a free port).
os.environ["PERFOPS_LOCAL_SERVER"] = "off"
# ... and no warm command process is left behind (tests/cli/test_warm.py turns it on).
os.environ["PERFOPS_WARM"] = "off"
# Warm processes live in this session's own runtime directory: `perfops server stop` in a test
# never finds (or stops) the ones of the developer's own commands in the same checkout.
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="perfops-tests-", dir="/tmp")
atexit.register(shutil.rmtree, os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)

from blocks import PostgresTarget, RedisTarget  # noqa: E402
from tests.servers import (  # noqa: E402
    MetricSeries,
    MotoServer,
    PrometheusServer,
    SlackStandIn,
    SmtpServer,
)

ADMIN_DSN = os.environ.get(
    "PERFOPS_TEST_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
TEST_DB = f"perfops_test_{os.getpid()}"
FORGET_THIS_DATABASE = (
    "select pg_stat_statements_reset(0, (select oid from pg_database "
    "where datname = current_database()), 0)"
)
# Flushed by the tests that use it: one database per concurrent checkout (PERFOPS_TEST_REDIS_URL)
# and per pytest-xdist worker (gw0 15, gw1 9, ...: tests/e2e/test_workers.py uses 11,
# tests/e2e/test_caches_e2e.py 12 and tests/e2e/test_production.py 14; `--dist loadfile` runs a
# file's tests in one worker).
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_TEST_URL = os.environ.get(
    "PERFOPS_TEST_REDIS_URL",
    f"redis://127.0.0.1:6379/{15 if _XDIST_WORKER == 0 else 10 - _XDIST_WORKER}",
)


@pytest.fixture(autouse=True)
def _perfops_environment_restored() -> Iterator[None]:
    """A test, or a command it runs in this process (`--redis-url` sets PERFOPS_REDIS_URL),
    leaves the PERFOPS_* variables as it found them."""
    before = {k: v for k, v in os.environ.items() if k.startswith("PERFOPS_")}
    yield
    for name in [k for k in os.environ if k.startswith("PERFOPS_") and k not in before]:
        del os.environ[name]
    os.environ.update(before)


# Back-filled Prometheus history: 14 days at 1-minute resolution, ending on a whole hour.
HISTORY_END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
HISTORY_START = HISTORY_END - timedelta(days=14)
HISTORY_STEP = timedelta(minutes=1)


def load_value(ts: float) -> float:
    """The known value of `perfops_test_load{service="api"}` at unix time `ts`."""
    minute = int(ts // 60)
    return float(100 + minute % 1440 // 10)


@pytest.fixture(scope="session", autouse=True)
def _isolated_out_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("out")
    os.environ["PERFOPS_OUT_DIR"] = str(out)
    yield out


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A fresh database with pg_stat_statements, hypopg and pg_partman; dropped at the end."""
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_DSN!r} ({exc}); run `make setup`")
    with admin:
        preload = admin.execute("show shared_preload_libraries").fetchone()
        if not preload or "pg_stat_statements" not in preload[0]:
            pytest.fail("pg_stat_statements is not preloaded; run `make setup` (scripts/setup.sh)")
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(TEST_DB))
        )
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(TEST_DB)))
    dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=TEST_DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create extension pg_stat_statements")
        conn.execute("create extension hypopg")
        conn.execute("create schema partman")
        conn.execute("create extension pg_partman schema partman")
        # pg_stat_statements keeps the entries of dropped databases until it evicts the least
        # used (pg_stat_statements.max, 5,000): left-overs of earlier runs would evict this
        # session's fresh entries. Forget the dropped databases' entries.
        conn.execute(
            "select pg_stat_statements_reset(0, dbid, 0) from (select distinct dbid "
            "from pg_stat_statements where dbid not in (select oid from pg_database)) gone"
        )
    yield dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FORGET_THIS_DATABASE)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(TEST_DB))
        )


@pytest.fixture(scope="session")
def pg_target(pg_dsn: str) -> PostgresTarget:
    return PostgresTarget(dsn=SecretStr(pg_dsn), application_name="perfops-tests")


@pytest.fixture()
def perfops(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """`perfops ARGS` run in this process (`cli.command.main`, which returns the exit code), with
    the variables a command sets undone afterwards."""
    from cli.command import main

    for var in ("PERFOPS_DSN", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    return main


@pytest.fixture()
def redis_target() -> RedisTarget:
    target = RedisTarget(url=REDIS_TEST_URL)
    with target.get_client() as client:
        client.flushdb()
    return target


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    start = int(HISTORY_START.timestamp())
    end = int(HISTORY_END.timestamp())
    step = int(HISTORY_STEP.total_seconds())
    samples = [(float(t), load_value(t)) for t in range(start, end + 1, step)]
    series = [
        MetricSeries(
            name="perfops_test_load",
            type="gauge",
            labels={"service": "api"},
            samples=samples,
            help="Requests per second, a known test pattern.",
        ),
        MetricSeries(
            name="perfops_test_requests",
            type="counter",
            labels={"service": "api"},
            samples=[(t, float(i * 60)) for i, (t, _) in enumerate(samples)],
            help="Requests served, +60 a minute.",
        ),
    ]
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), series) as server:
        yield server


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(key, value)
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SmtpServer]:
    with SmtpServer(refuse={"nobody@example.test"}) as server:
        yield server


@pytest.fixture(scope="session")
def _slack_session() -> Iterator[SlackStandIn]:
    with SlackStandIn() as server:
        yield server


@pytest.fixture()
def slack(_slack_session: SlackStandIn) -> SlackStandIn:
    _slack_session.reset()
    return _slack_session


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server (SQLite) for every test that runs flows or tasks."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness: None) -> str:
    """The harness server's API URL, for subprocesses (the CLI) to share it."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness has no API URL"
    return str(url)
