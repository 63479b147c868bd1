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
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERFOPS_", "PREFECT_"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
        }
    )
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
        )
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

    worker_env = {
        **env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL],
            env=worker_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        created = http.post(
            f"/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": {"fail_when_unreachable": True}},
        )
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        deadline = time.monotonic() + 150
        state: dict[str, str] = {}
        while time.monotonic() < deadline:
            state = http.get(f"/flow_runs/{run_id}").json()["state"]
            if state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                break
            time.sleep(1)
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
    finally:
        _stop(worker)


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
