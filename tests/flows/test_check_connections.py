"""check_connections against every real stand-in, and against nothing configured."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import boto3
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from pydantic import SecretStr

from blocks import PostgresTarget
from flows.check_connections import ARTIFACT_KEY, ConnectionsUnreachable, check_connections
from tests.conftest import REDIS_TEST_URL
from tests.records import artifact_rows, wait_for_event
from tests.servers import DEFAULT_TOKEN, MotoServer, PrometheusServer, SlackStandIn, SmtpServer

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture()
def all_real(
    monkeypatch: pytest.MonkeyPatch,
    pg_dsn: str,
    prometheus: PrometheusServer,
    moto_server: MotoServer,
    smtp_server: SmtpServer,
    slack: SlackStandIn,
) -> Iterator[None]:
    boto3.client("s3", **moto_server.client_kwargs()).create_bucket(Bucket="perfops-doctor")
    env = {
        "PERFOPS_DSN": pg_dsn,
        "PERFOPS_PROMETHEUS_URL": prometheus.url,
        "PERFOPS_REDIS_URL": REDIS_TEST_URL,
        "PERFOPS_S3_BUCKET": "perfops-doctor",
        "PERFOPS_S3_ENDPOINT_URL": moto_server.endpoint_url,
        "PERFOPS_SLACK_TOKEN": DEFAULT_TOKEN,
        "PERFOPS_SLACK_API_URL": slack.base_url,
        "PERFOPS_SMTP_HOST": smtp_server.host,
        "PERFOPS_SMTP_PORT": str(smtp_server.port),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield


def _wait_for_logs(flow_run_id: UUID | None, containing: str, timeout_s: float = 20.0) -> str:
    """Every log line of a flow run stored by the API (logs are shipped in batches)."""
    assert flow_run_id is not None
    deadline = time.monotonic() + timeout_s
    text = ""
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            text = "\n".join(log.message for log in logs)
            if containing in text:
                return text
            time.sleep(0.5)
    raise AssertionError(f"no log line with {containing!r} within {timeout_s} s: {text[:500]}")


@pytest.mark.usefixtures("all_real")
def test_every_real_system_is_reached(slack: SlackStandIn) -> None:
    checks = {c.system: c for c in check_connections()}
    assert {s: c.status for s, c in checks.items()} == {
        "postgres": "ok",
        "metrics": "ok",
        "redis": "ok",
        "archive": "ok",
        "slack": "ok",
        "email": "ok",
    }
    assert all(c.origin == "environment" for c in checks.values())
    assert checks["postgres"].version.startswith("15")
    assert "hypopg 1.3.1" in checks["postgres"].detail
    assert checks["metrics"].version.startswith("2.")
    assert "SHA-256 verified" in checks["archive"].detail
    assert [r.method for r in slack.requests] == ["auth.test"]
    rows = artifact_rows(ARTIFACT_KEY)
    assert [r["system"] for r in rows] == [
        "postgres",
        "metrics",
        "redis",
        "archive",
        "slack",
        "email",
    ]
    assert {r["result"] for r in rows} == {"ok"}
    assert all(list(r)[:4] == ["system", "result", "detail", "fix"] for r in rows)
    event = wait_for_event("perfops.connections.checked")
    # the system it looked at, as README says of every event (a module-path rename once made
    # it "blocks.resolve", the name of a Python module)
    assert event.resource.id == "perfops.connections"
    assert event.payload["statuses"] == {s: "ok" for s in checks}


def test_nothing_configured_uses_embedded_defaults_and_says_so(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str
) -> None:
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    checks = {c.system: c for c in check_connections()}
    assert {s: c.origin for s, c in checks.items() if s != "postgres"} == {
        "metrics": "embedded default",
        "redis": "embedded default",
        "archive": "embedded default",
        "slack": "embedded default",
        "email": "embedded default",
    }
    assert checks["metrics"].detail.startswith("10320 points")
    assert all(c.status == "ok" for c in checks.values())


def test_embedded_defaults_that_fail_say_how_to_fix_them_not_the_real_services(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, tmp_path: Path
) -> None:
    """An out folder perfops cannot write to, and a CSV trace that is not there: the fixes named
    the S3 bucket, the bot token, the SMTP host and PERFOPS_PROMETHEUS_URL, none of them set."""
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder\n")
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    monkeypatch.setenv("PERFOPS_OUT_DIR", str(taken))
    monkeypatch.setenv("PERFOPS_TRACE_CSV", str(tmp_path / "no-such-trace.csv"))
    checks = {c.system: c for c in check_connections(fail_when_unreachable=False)}
    fixes = {s: c.fixes for s, c in checks.items() if c.status == "unreachable"}
    assert set(fixes) == {"metrics", "archive", "slack", "email"}
    assert "PERFOPS_TRACE_CSV" in fixes["metrics"]
    for system, real in (("archive", "bucket"), ("slack", "bot token"), ("email", "SMTP host")):
        assert "PERFOPS_OUT_DIR" in fixes[system] and real not in fixes[system], fixes[system]


def test_missing_extension_is_degraded_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str
) -> None:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop extension hypopg")
    try:
        monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
        [pg] = [c for c in check_connections() if c.system == "postgres"]
        assert pg.status == "degraded"
        assert [f.fix for f in pg.findings] == ["CREATE EXTENSION hypopg;"]
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("create extension if not exists hypopg")


def test_an_extension_off_the_search_path_is_degraded_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str
) -> None:
    """hypopg installed in a schema the role's search_path does not hold (a managed database's
    `extensions` schema). Before, doctor said "postgres ok ... hypopg 1.3.1" and `perfops
    indexes suggest` then failed: "hypopg is installed in schema ... not on the search_path"."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute('create schema if not exists "Ext ü"')
        conn.execute('alter extension hypopg set schema "Ext ü"')
    try:
        monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
        [pg] = [c for c in check_connections() if c.system == "postgres"]
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("alter extension hypopg set schema public")
            conn.execute('drop schema "Ext ü"')
    assert pg.status == "degraded"
    [finding] = pg.findings
    assert finding.what.startswith("hypopg is installed in schema Ext ü of database ")
    assert finding.what.endswith("which is not on the search_path of postgres (public)")
    assert finding.fix == (
        'ALTER ROLE "postgres" SET search_path = "$user", public, "Ext ü"; '
        "(or ALTER EXTENSION hypopg SET SCHEMA public;)"
    )
    assert finding.needed_by == "index suggestions"


@pytest.mark.usefixtures("all_real")
def test_a_role_without_pg_monitor_is_reached_and_told_what_to_grant(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str
) -> None:
    """A login role with no grants may not read shared_preload_libraries (pg_read_all_settings):
    the server answers, so it is not 'unreachable' ('check the DSN ...'); the check says what
    it could not see and which grant lets it (and that other roles' statements are hidden)."""
    import psycopg
    from psycopg import sql

    role = "perfops_doctor_bare"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    try:
        monkeypatch.setenv("PERFOPS_DSN", psycopg.conninfo.make_conninfo(pg_dsn, user=role))
        [pg] = [c for c in check_connections() if c.system == "postgres"]
        assert pg.status == "degraded", pg.detail
        assert [f.fix for f in pg.findings] == [
            f"GRANT pg_monitor TO {role}; (docs/production.md)",
            f"GRANT pg_read_all_stats TO {role};",
        ]
        assert pg.findings[0].what == (
            f"{role} may not read shared_preload_libraries, so whether pg_stat_statements is "
            "preloaded is not known"
        )
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


def test_unreachable_system_fails_the_run_without_leaking_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "never-in-any-record-42"
    monkeypatch.setenv("PERFOPS_DSN", f"postgresql://perfops:{secret}@127.0.0.1:1/app")
    state = check_connections(return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConnectionsUnreachable)
    [pg] = [c for c in error.checks if c.system == "postgres"]
    assert pg.status == "unreachable" and "127.0.0.1:1" in pg.detail
    rows = artifact_rows(ARTIFACT_KEY)
    assert rows[0]["result"] == "unreachable"
    assert secret not in json.dumps(rows)
    assert secret not in (state.message or "")
    logs = _wait_for_logs(state.state_details.flow_run_id, containing="unreachable")
    assert "127.0.0.1:1/app" in logs
    assert secret not in logs


def test_block_names_take_precedence(monkeypatch: pytest.MonkeyPatch, pg_dsn: str) -> None:
    PostgresTarget(dsn=SecretStr(pg_dsn), application_name="from-block").save(
        "doctor-test", overwrite=True
    )
    monkeypatch.setenv("PERFOPS_DSN", "host=127.0.0.1 port=1 dbname=wrong")
    [pg] = [c for c in check_connections(postgres_block="doctor-test") if c.system == "postgres"]
    assert pg.origin == "block" and pg.status == "ok"
    assert pg.target.startswith("block doctor-test")
