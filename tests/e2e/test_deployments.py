"""End to end, as an operator runs perfops: a real Prefect server, a process work pool,
`perfops deploy` of prefect.yaml, a worker, runs triggered through the REST API, and the runs'
states and artifacts read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from decisions.reporting import last_complete_week
from demo.sample_metrics import demo_prometheus
from tests.conftest import REDIS_TEST_URL
from tests.e2e.stack import POOL, ROOT, artifact_keys, rotation_policy, run, worker
from tests.servers import free_port

pytestmark = pytest.mark.e2e


def test_deploy_all_then_run_through_the_api(
    deployed: dict[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    env = {
        **deployed,
        "PERFOPS_PROJECT_DIR": str(ROOT),
        "PERFOPS_DSN": pg_dsn,
        "PERFOPS_OUT_DIR": str(tmp_path / "out"),
    }
    api = env["PREFECT_API_URL"]
    http = httpx.Client(base_url=api, timeout=30)
    for slug in (
        "perfops-postgres-target",
        "perfops-prometheus-source",
        "perfops-redis-target",
        "perfops-slack-escalation-target",
    ):
        assert http.get(f"/block_types/slug/{slug}").status_code == 200, slug

    deployment = http.get("/deployments/name/check_connections/check_connections").json()
    assert deployment["work_pool_name"] == POOL
    assert deployment["enforce_parameter_schema"] is True
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert {"perfops", "connections"} <= set(deployment["tags"])
    assert deployment["description"].startswith("Touch every configured system")
    [schedule] = deployment["schedules"]
    assert schedule["schedule"]["timezone"] == "UTC"
    assert deployment["pull_steps"] == [{"perfops.project.enter_project_dir": {}}]

    with worker(env, tmp_path) as worker_log:
        run_id, state = run(
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
        systems = {row["system"]: row["result"] for row in rows}
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


@pytest.fixture()
def report_metrics(tmp_path: Path) -> Iterator[str]:
    """A Prometheus holding the demo's data for the last complete week (what the report scores)."""
    with demo_prometheus(tmp_path / "prometheus", last_complete_week(datetime.now(UTC))) as url:
        yield url


def test_changed_flows_end_completed_when_their_work_succeeds_and_failed_when_it_fails(
    report_metrics: str,
    deployed: dict[str, str],
    pg_dsn: str,
    partitioned_table: str,
    tmp_path: Path,
) -> None:
    """Each flow the layout moved apart, run as a deployment by a worker: once where its work
    succeeds (Completed, its artifact written) and once where it fails (Failed)."""
    env = {
        **deployed,
        "PERFOPS_PROJECT_DIR": str(ROOT),
        "PERFOPS_DSN": pg_dsn,
        "PERFOPS_OUT_DIR": str(tmp_path / "out"),
        "PERFOPS_REDIS_URL": REDIS_TEST_URL,
    }
    http = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)
    rotate = rotation_policy(partitioned_table, str(tmp_path / "archive"))
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
            {
                "parameters": {"recipients": ["sre@example.com"]},
                "job_variables": {"env": {"PERFOPS_PROMETHEUS_URL": report_metrics}},
            },
            "COMPLETED",
            "perfops-weekly-report",
        ),
        (
            "generate_weekly_report/generate_weekly_report",
            {
                "parameters": {"recipients": ["sre@example.com"]},
                "job_variables": {"env": {**closed_smtp, "PERFOPS_PROMETHEUS_URL": report_metrics}},
            },
            "FAILED",
            "perfops-weekly-report",  # archived and recorded, then failed: not emailed
        ),
    ]
    with worker(env, tmp_path) as worker_log:
        for deployment, body, expected, artifact in cases:
            run_id, state = run(http, deployment, body)
            assert state.get("type") == expected, (
                deployment,
                body,
                state,
                worker_log.read_text()[-3000:],
            )
            if artifact is not None:
                assert artifact in artifact_keys(http, run_id), (deployment, body)
        # evaluate_slos at a minute of the demo week: it read Prometheus and ends Completed;
        # with Prometheus unreachable it is blind: its record is written, then it ends Failed
        minute = last_complete_week(datetime.now(UTC)).start + timedelta(days=2, hours=10)
        closed = f"http://127.0.0.1:{free_port()}"
        for url, expected in ((report_metrics, "COMPLETED"), (closed, "FAILED")):
            body = {
                # prometheus_block None: another test of the session points the deployment
                # at a block of its own (test_production's prom-prod, unreachable)
                "parameters": {"at": minute.isoformat(), "notify": False, "prometheus_block": None},
                "job_variables": {"env": {"PERFOPS_PROMETHEUS_URL": url}},
            }
            run_id, state = run(http, "evaluate_slos/evaluate_slos", body)
            assert state.get("type") == expected, (
                state.get("message"),
                body,
                worker_log.read_text()[-3000:],
            )
            assert "perfops-sla" in artifact_keys(http, run_id)
            if expected == "FAILED":
                assert "no SLO or rule could be evaluated: cannot reach Prometheus" in str(
                    state.get("message")
                ), state
    with psycopg.connect(pg_dsn) as conn:
        left = conn.execute(
            "select count(*) from pg_tables where schemaname = 'e2e_rotation'"
            " and tablename = 'events_p2020_01'"
        ).fetchone()
    assert left == (0,), "the expired partition was archived and dropped"
    assert list((tmp_path / "archive").rglob("events_p2020_01*.parquet"))


def test_database_flows_end_failed_on_a_table_filter_naming_no_table(
    deployed: dict[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    """refresh_stale_statistics, suggest_indexes and check_index_health as deployments run by a
    worker: Completed where their work succeeds; Failed, saying which names, when a table
    filter names no table of the database (a typo must not pass as "nothing to do"), and
    check_index_health Failed without its block."""
    env = {
        **deployed,
        "PERFOPS_PROJECT_DIR": str(ROOT),
        "PERFOPS_DSN": pg_dsn,
        "PERFOPS_OUT_DIR": str(tmp_path / "out"),
    }
    http = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)
    typo = ["e2e_no_such_table"]
    refused = "no table matches include_tables e2e_no_such_table (--table): "
    # postgres_block None: the deployment reads PERFOPS_DSN whatever another test saved
    # (deployment, parameters, final state, its artifact when Completed / message when Failed)
    cases: list[tuple[str, dict[str, object], str, str]] = [
        (
            "refresh_stale_statistics/refresh_stale_statistics",
            {"dry_run": True, "postgres_block": None},
            "COMPLETED",
            "perfops-stats-refresh",
        ),
        (
            "refresh_stale_statistics/refresh_stale_statistics",
            {"dry_run": True, "postgres_block": None, "policy": {"include_tables": typo}},
            "FAILED",
            refused,
        ),
        (
            "suggest_indexes/suggest_indexes",
            {"postgres_block": None, "settings": {"include_tables": typo}},
            "FAILED",
            refused,
        ),
        (
            "check_index_health/check_index_health",
            {"postgres_block": None},
            "COMPLETED",
            "perfops-index-health",
        ),
        (
            "check_index_health/check_index_health",
            {"postgres_block": "no-such-block"},
            "FAILED",
            "no-such-block",
        ),
    ]
    with worker(env, tmp_path) as worker_log:
        for deployment, parameters, expected, said in cases:
            run_id, state = run(http, deployment, {"parameters": parameters})
            assert state.get("type") == expected, (
                deployment,
                parameters,
                state,
                worker_log.read_text()[-3000:],
            )
            if expected == "COMPLETED":
                assert said in artifact_keys(http, run_id), (deployment, parameters)
            else:
                assert said in (state.get("message") or ""), (deployment, state)
