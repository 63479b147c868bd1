"""The main job end to end (`perfops demo`), and the private cluster it falls back to."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from demo.embedded_postgres import ensure_private_cluster, stop_private_cluster
from tests.command import run_perfops
from tests.conftest import ADMIN_DSN
from tests.servers import free_port


def test_demo_runs_to_the_end_and_is_fast_the_second_time(
    prefect_api_url: str, tmp_path: Path
) -> None:
    env = {"PREFECT_API_URL": prefect_api_url, "PERFOPS_DEMO_DSN": ADMIN_DSN}
    runs = []
    for _ in range(2):
        out = str(tmp_path / "out")
        result = run_perfops("demo", "--json", "--out", out, env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        runs.append(json.loads(result.stdout))
    first, second = runs
    assert first["database"].endswith("/perfops_demo")
    assert first["workload"]["rows"] == {
        "agents": 2000,
        "workflows": 500,
        "agent_executions": 300000,
        "workflow_runs": 100000,
    }
    assert second["workload"]["loaded"] is False and second["workload"]["statements_run"] == 0
    assert set(first["extensions"]) == {"pg_stat_statements", "hypopg", "pg_partman"}
    flows = {f["flow"]: f for f in second["flows"]}
    assert {name: (f["state"], f["artifact"]) for name, f in flows.items()} == {
        "check_connections": ("Completed", "perfops-connections"),
        "refresh_stale_statistics": ("Completed", "perfops-stats-refresh"),
        "suggest_indexes": ("Completed", "perfops-index-suggestions"),
        "find_slow_queries": ("Completed", "perfops-slow-queries"),
        "check_index_health": ("Completed", "perfops-index-health"),
        "generate_weekly_report": ("Completed", "perfops-weekly-report"),
        "rotate_partitions": ("Completed", "perfops-partitions-rotate"),
        "evaluate_slos": ("Completed", "perfops-sla"),
        "scale_predictively": ("Completed", "perfops-scaling-decision"),
        "run_load_test": ("Completed", "perfops-load-demo-platform-api"),
        "warm_cache": ("Completed", "perfops-cache-warmup"),
        "invalidate_cache": ("Completed", "perfops-cache-invalidation"),
        "collect_cache_stats": ("Completed", "perfops-cache-stats"),
    }
    assert "dry run, nothing changed" in flows["scale_predictively"]["found"]
    assert flows["warm_cache"]["found"].startswith("warmed 50 of 50 keys of workflow_definitions")
    assert flows["invalidate_cache"]["found"].startswith("dropped 1 of 1 keys for event")
    assert "postgres ok" in flows["check_connections"]["found"]
    assert "public.agent_executions(agent_id, started_at)" in flows["suggest_indexes"]["found"]
    assert " generic plans" in flows["find_slow_queries"]["found"]
    assert "covered" in flows["check_index_health"]["found"]  # agents_name_idx, the demo's example
    report = flows["generate_weekly_report"]
    assert "targets met" in report["found"] and "sent to 1 of 1" in report["found"]
    assert Path(report["files"][0]).name == "index.html" and Path(report["files"][0]).exists()
    # the second run of the same week keeps the first run's archived report, and says so
    assert "archive kept: a report for" in report["found"]
    assert (
        "archive kept"
        not in {f["flow"]: f for f in first["flows"]}["generate_weekly_report"]["found"]
    )
    assert "rows waiting in the default partition" in flows["rotate_partitions"]["found"]
    sla = flows["evaluate_slos"]["found"]
    assert "before the outage: 0 alerts" in sla and "notices: fire level 1" in sla
    assert "escalate level 2" in sla
    # the workload left its statements in pg_stat_statements
    dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname="perfops_demo")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select sum(calls) from pg_stat_statements s join pg_database d on d.oid = s.dbid "
            "where d.datname = 'perfops_demo' and s.query like %s",
            ("%from agent_executions where agent_id = $1%",),
        ).fetchone()
    assert row is not None and row[0] >= 120


@pytest.fixture()
def private_dir() -> Iterator[Path]:
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("needs runuser to start PostgreSQL as root")
    base = Path(tempfile.mkdtemp(prefix="perfops-pg-", dir="/tmp"))
    base.chmod(0o755)
    yield base / "pgdata"
    stop_private_cluster(base / "pgdata")
    shutil.rmtree(base, ignore_errors=True)


def test_private_cluster_starts_with_pg_stat_statements(private_dir: Path) -> None:
    port = free_port()
    dsn = ensure_private_cluster(private_dir, port=port)
    assert ensure_private_cluster(private_dir, port=port) == dsn  # idempotent when running
    with psycopg.connect(dsn) as conn:
        preload = conn.execute("show shared_preload_libraries").fetchone()
        listen = conn.execute("show listen_addresses").fetchone()
    assert preload == ("pg_stat_statements",) and listen == ("127.0.0.1",)
