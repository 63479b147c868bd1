"""End to end, as an operator runs perfops: a real Prefect server, a process work pool,
`prefect deploy --all` from prefect.yaml, a worker, a run triggered through the REST API, and
the run's artifact read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import ADMIN_DSN, REDIS_TEST_URL
from tests.servers import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "perfops-process"


def _wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 90
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout_s} s: {log.read_text()[-2000:]}")


def _spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """`prefect ARGS` in the background, its output in `log` (stop it with `_stop`)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "prefect"), *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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
            "PREFECT_UI_ENABLED": "false",
        }
    )
    log = home / "server.log"
    proc = _spawn(["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log, home)
    try:
        _wait_healthy(api, proc, log)
        yield {**env, "PREFECT_API_URL": api}
    finally:
        _stop(proc)


def _prefect(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@contextmanager
def _worker(env: dict[str, str], workdir: Path) -> Iterator[Path]:
    """A process worker on the pool, polling every second; yields its log file."""
    worker_env = {
        **env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    log = workdir / "worker.log"
    worker = _spawn(["worker", "start", "--pool", POOL], worker_env, log, workdir)
    try:
        yield log
    finally:
        _stop(worker)


def _run(
    http: httpx.Client, deployment: str, body: dict[str, object], timeout_s: float = 150
) -> tuple[str, dict[str, str]]:
    """Create a run of `deployment` (flow/deployment name) through the REST API and wait for its
    final state: (run id, state)."""
    found = http.get(f"/deployments/name/{deployment}")
    assert found.status_code == 200, f"{deployment} is not deployed"
    created = http.post(f"/deployments/{found.json()['id']}/create_flow_run", json=body)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    deadline = time.monotonic() + timeout_s
    state: dict[str, str] = {}
    while time.monotonic() < deadline:
        state = http.get(f"/flow_runs/{run_id}").json()["state"]
        if state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            break
        time.sleep(1)
    return run_id, state


def _artifact_keys(http: httpx.Client, run_id: str) -> list[str]:
    found = http.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return [a["key"] for a in found.json()]


def test_deploy_all_then_run_through_the_api(
    prefect_server: dict[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    env = {
        **prefect_server,
        "PERFOPS_PROJECT_DIR": str(ROOT),
        "PERFOPS_DSN": pg_dsn,
        "PERFOPS_OUT_DIR": str(tmp_path / "out"),
    }
    api = env["PREFECT_API_URL"]
    registered = _prefect(env, "block", "register", "-m", "blocks")
    assert "perfops PostgreSQL Target" in registered
    http = httpx.Client(base_url=api, timeout=30)
    for slug in (
        "perfops-postgres-target",
        "perfops-prometheus-source",
        "perfops-redis-target",
        "perfops-slack-escalation-target",
    ):
        assert http.get(f"/block_types/slug/{slug}").status_code == 200, slug
    _prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    deployed = _prefect(env, "--no-prompt", "deploy", "--all")
    assert "check_connections" in deployed

    deployment = http.get("/deployments/name/check_connections/check_connections").json()
    assert deployment["work_pool_name"] == POOL
    assert deployment["enforce_parameter_schema"] is True
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert {"perfops", "connections"} <= set(deployment["tags"])
    assert deployment["description"].startswith("Touch every configured system")
    [schedule] = deployment["schedules"]
    assert schedule["schedule"]["timezone"] == "UTC"
    assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]

    with _worker(env, tmp_path) as worker_log:
        run_id, state = _run(
            http,
            "check_connections/check_connections",
            {"parameters": {"fail_when_unreachable": True}},
        )
        assert state.get("type") == "COMPLETED", (state, worker_log.read_text()[-3000:])
        artifacts = http.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        ).json()
        assert [a["key"] for a in artifacts] == ["perfops-connections"]
        data = artifacts[0]["data"]
        rows = json.loads(data) if isinstance(data, str) else data
        systems = {row["system"]: row["status"] for row in rows}
        assert systems == {
            "postgres": "ok",
            "metrics": "ok",
            "redis": "ok",
            "archive": "ok",
            "slack": "ok",
            "email": "ok",
        }
        # a parameter of the wrong type is refused by the enforced schema
        bad = http.post(
            f"/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": {"fail_when_unreachable": "maybe"}},
        )
        assert bad.status_code == 409, bad.text


def test_sla_degradation_event_runs_the_scaling_deployment(prefect_server: dict[str, str]) -> None:
    """The trigger on scale_predictively in prefect.yaml (deployed by the test above) became an
    automation: a degradation alert's event creates a scaling run."""
    http = httpx.Client(base_url=prefect_server["PREFECT_API_URL"], timeout=30)
    found = http.get("/deployments/name/scale_predictively/scale_predictively")
    assert found.status_code == 200, "prefect deploy --all did not create scale_predictively"
    deployment_id = found.json()["id"]
    runs_filter = {"deployments": {"id": {"any_": [deployment_id]}}}
    assert http.post("/flow_runs/filter", json=runs_filter).json() == []
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": "perfops.sla.breached",
        "resource": {"prefect.resource.id": "perfops.sla.degradation.api-latency"},
        "payload": {"alert": "api-latency", "severity": "warning"},
    }
    # an event on another resource runs nothing
    other = {
        **event,
        "id": str(uuid.uuid4()),
        "resource": {"prefect.resource.id": "perfops.sla.slo.x"},
    }
    assert http.post("/events", json=[other, event]).status_code == 204
    deadline = time.monotonic() + 60
    runs: list[dict[str, object]] = []
    while time.monotonic() < deadline and not runs:
        time.sleep(1)
        runs = http.post("/flow_runs/filter", json=runs_filter).json()
    assert len(runs) == 1, f"expected one scaling run from the degradation event, got {len(runs)}"
    assert runs[0]["parameters"] == {"group": "demo", "dry_run": True}


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


def test_changed_flows_end_completed_when_their_work_succeeds_and_failed_when_it_fails(
    prefect_server: dict[str, str], pg_dsn: str, partitioned_table: str, tmp_path: Path
) -> None:
    """Each flow the layout moved apart, run as a deployment by a worker: once where its work
    succeeds (Completed, its artifact written) and once where it fails (Failed)."""
    env = {
        **prefect_server,
        "PERFOPS_PROJECT_DIR": str(ROOT),
        "PERFOPS_DSN": pg_dsn,
        "PERFOPS_OUT_DIR": str(tmp_path / "out"),
        "PERFOPS_REDIS_URL": REDIS_TEST_URL,
    }
    http = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)
    rotate = {
        "table": partitioned_table,
        "interval": "month",
        "premake": 1,
        "retention": "12 months",
        "expired_action": "archive_then_drop",
        "archive": str(tmp_path / "archive"),
    }
    closed_smtp = {"PERFOPS_SMTP_HOST": "127.0.0.1", "PERFOPS_SMTP_PORT": str(free_port())}
    cases: list[tuple[str, dict[str, object], str, str | None]] = [
        (
            "rotate_partitions/rotate_partitions",
            {"parameters": {"policies_file": None, "policies": [rotate]}},
            "COMPLETED",
            "perfops-partitions-rotate",
        ),
        (
            "rotate_partitions/rotate_partitions",
            {
                "parameters": {
                    "policies_file": None,
                    "policies": [{**rotate, "table": "e2e_rotation.no_such_table"}],
                }
            },
            "FAILED",
            "perfops-partitions-rotate",  # the record is written before the run fails
        ),
        ("suggest_indexes/suggest_indexes", {}, "COMPLETED", "perfops-index-suggestions"),
        (
            "suggest_indexes/suggest_indexes",
            {"parameters": {"postgres_block": "no-such-block"}},
            "FAILED",
            None,
        ),
        ("scale_predictively/scale_predictively", {}, "COMPLETED", "perfops-scaling-decision"),
        (
            "scale_predictively/scale_predictively",
            {"parameters": {"metrics_block": "no-such-block"}},
            "FAILED",
            None,
        ),
        (
            "generate_weekly_report/generate_weekly_report",
            {"parameters": {"recipients": ["sre@example.com"]}},
            "COMPLETED",
            "perfops-weekly-report",
        ),
        (
            "generate_weekly_report/generate_weekly_report",
            {
                "parameters": {"recipients": ["sre@example.com"]},
                "job_variables": {"env": closed_smtp},
            },
            "FAILED",
            "perfops-weekly-report",  # archived and recorded, then failed: not emailed
        ),
    ]
    with _worker(env, tmp_path) as worker_log:
        for deployment, body, expected, artifact in cases:
            run_id, state = _run(http, deployment, body)
            assert state.get("type") == expected, (
                deployment,
                body,
                state,
                worker_log.read_text()[-3000:],
            )
            if artifact is not None:
                assert artifact in _artifact_keys(http, run_id), (deployment, body)
    with psycopg.connect(pg_dsn) as conn:
        left = conn.execute(
            "select count(*) from pg_tables where schemaname = 'e2e_rotation'"
            " and tablename = 'events_p2020_01'"
        ).fetchone()
    assert left == (0,), "the expired partition was archived and dropped"
    assert list((tmp_path / "archive").rglob("events_p2020_01*.parquet"))
