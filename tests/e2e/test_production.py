"""End to end, the way an operator runs perfops in production (issue 13): `perfops deploy`
keeps what operators set and starts schedules only once their systems are configured, the API
refuses unknown parameters, triggers act on the event's target once per storm, blocks come from
the work pool's environment, and a worker that cannot see the project fails the run naming
PERFOPS_PROJECT_DIR."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.stack import (
    BIN,
    POOL,
    ROOT,
    command,
    perfops,
    rotation_policy,
    run,
    run_ids,
    wait_for_runs,
    worker,
)

pytestmark = pytest.mark.e2e


def _deployment(http: httpx.Client, name: str) -> dict[str, Any]:
    found = http.get(f"/deployments/name/{name}/{name}")
    assert found.status_code == 200, f"{name} is not deployed"
    data: dict[str, Any] = found.json()
    return data


def _active(http: httpx.Client, name: str) -> list[bool]:
    return [bool(s["active"]) for s in _deployment(http, name)["schedules"]]


def _save_block(env: dict[str, str], system: str, name: str, settings: dict[str, str]) -> None:
    command("python", {**env, **settings}, "deployments/create_blocks.py", system, "--name", name)


@contextmanager
def _pool_env(http: httpx.Client, env: dict[str, str]) -> Iterator[None]:
    """The work pool's job environment set to `env` (what an operator sets in the UI's work
    pool page or with `prefect work-pool update --base-job-template`), restored afterwards."""
    pool = http.get(f"/work_pools/{POOL}").json()
    template = pool["base_job_template"]
    original = json.loads(json.dumps(template))
    template["variables"]["properties"]["env"]["default"] = env
    assert (
        http.patch(f"/work_pools/{POOL}", json={"base_job_template": template}).status_code == 204
    )
    try:
        yield
    finally:
        http.patch(f"/work_pools/{POOL}", json={"base_job_template": original})


def _event(name: str, resource_id: str, **labels: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": name,
        "resource": {"prefect.resource.id": resource_id, **labels},
        "payload": {},
    }


def test_deploy_gates_schedules_keeps_operator_settings_and_refuses_unknown_parameters(
    deployed: dict[str, str],
) -> None:
    env = deployed
    http = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)
    # Fresh install, nothing configured: only what needs no outside system is scheduled.
    assert _active(http, "check_connections") == [True]
    assert _active(http, "apply_scaling_schedule") == [True]
    for name in ("evaluate_slos", "refresh_stale_statistics", "generate_weekly_report"):
        assert _active(http, name) == [False], name

    # Unknown top-level parameters are refused with their name, not accepted and crashed.
    slos = _deployment(http, "evaluate_slos")
    refused = http.post(
        f"/deployments/{slos['id']}/create_flow_run", json={"parameters": {"dryrun": True}}
    )
    assert refused.status_code == 409, refused.text
    assert "dryrun" in refused.text

    # Automations carry names a person recognises.
    automations = http.post("/automations/filter", json={}).json()
    names = {a["name"] for a in automations}
    assert "perfops: scale the group an SLA degradation names" in names

    # The operator: a Prometheus block named in the UI, a paused schedule, Slack on the
    # workers' own environment, Redis through the work pool's environment (--pool-env).
    _save_block(env, "prometheus", "prom-prod", {"PERFOPS_PROMETHEUS_URL": "http://127.0.0.1:9"})
    params = {**slos["parameters"], "prometheus_block": "prom-prod"}
    assert http.patch(f"/deployments/{slos['id']}", json={"parameters": params}).status_code == 204
    connections = _deployment(http, "check_connections")
    [schedule] = connections["schedules"]
    http.patch(
        f"/deployments/{connections['id']}/schedules/{schedule['id']}", json={"active": False}
    )
    redis = "PERFOPS_REDIS_URL=redis://127.0.0.1:6379/14"
    secret = perfops(
        env, "deploy", "--pool-env", "PERFOPS_DSN=postgresql://u:pw@db/app", check=False
    )
    assert secret.returncode == 2 and "secret" in secret.stderr
    redeploy = perfops(env, "deploy", "--configured", "slack", "--pool-env", redis)
    pool = http.get(f"/work_pools/{POOL}").json()
    pool_env = pool["base_job_template"]["variables"]["properties"]["env"]["default"]
    assert pool_env["PERFOPS_REDIS_URL"] == "redis://127.0.0.1:6379/14"
    assert "kept prometheus_block='prom-prod'" in redeploy.stdout, redeploy.stdout
    after = _deployment(http, "evaluate_slos")
    assert after["parameters"]["prometheus_block"] == "prom-prod"
    assert after["parameters"]["definitions_path"] == "deployments/slos.yaml"
    assert _active(http, "evaluate_slos") == [True], redeploy.stdout
    assert _active(http, "check_connections") == [False], "the paused schedule stays paused"
    # still gated: refresh needs PostgreSQL, which nobody configured
    assert _active(http, "refresh_stale_statistics") == [False]


def test_triggers_act_on_the_group_the_event_names_once_per_storm(
    deployed: dict[str, str],
) -> None:
    http = httpx.Client(base_url=deployed["PREFECT_API_URL"], timeout=30)
    scaling = _deployment(http, "scale_predictively")
    earlier = run_ids(http, scaling["id"])  # other tests run this deployment too
    storm = [
        _event(
            "perfops.sla.breached",
            "perfops.sla.degradation.latency-degradation",
            **{"perfops.scaling.group": "group-b"},
        )
        for _ in range(5)
    ]
    other = _event(
        "perfops.sla.breached",
        "perfops.sla.degradation.latency-degradation",
        **{"perfops.scaling.group": "group-c"},
    )
    unnamed = _event("perfops.sla.breached", "perfops.sla.degradation.latency-degradation")
    schedule = _deployment(http, "apply_scaling_schedule")
    earlier_schedule = run_ids(http, schedule["id"])
    try:
        assert http.post("/events", json=[*storm, other, unnamed]).status_code == 204
        runs = wait_for_runs(http, scaling["id"], 2, besides=earlier)
        time.sleep(5)  # any extra run the storm would cause has been created by now
        runs = wait_for_runs(http, scaling["id"], 2, besides=earlier)
        groups = sorted(str(r["parameters"]["group"]) for r in runs)  # type: ignore[index]
        assert groups == ["group-b", "group-c"], runs
        assert all(r["parameters"]["dry_run"] is True for r in runs)  # type: ignore[index]

        changed = _event(
            "perfops.scaling.schedule.changed",
            "perfops.scaling.group.web-blue",
            **{"perfops.scaling.group": "web-blue"},
        )
        assert http.post("/events", json=[changed]).status_code == 204
        [created] = wait_for_runs(http, schedule["id"], 1, besides=earlier_schedule)
        assert created["parameters"]["aws"] == {"group": "web-blue"}  # type: ignore[index]
    finally:
        # The triggered runs wait for a worker: left behind on the shared server, a later
        # test's worker would take them, and scale_predictively's concurrency limit of 1
        # would hold that test's own run back.
        for deployment, before in ((scaling, earlier), (schedule, earlier_schedule)):
            for run_id in run_ids(http, deployment["id"]) - before:
                http.delete(f"/flow_runs/{run_id}")


def test_blocks_from_the_work_pool_environment_and_a_worker_without_the_project(
    deployed: dict[str, str], pg_dsn: str, tmp_path: Path
) -> None:
    env = {**deployed, "PERFOPS_OUT_DIR": str(tmp_path / "out")}
    http = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)
    _save_block(env, "postgres", "pg-from-pool", {"PERFOPS_DSN": pg_dsn})
    with _pool_env(http, {"PERFOPS_POSTGRES_BLOCK": "pg-from-pool"}):
        with worker({**env, "PERFOPS_PROJECT_DIR": str(ROOT)}, tmp_path) as log:
            run_id, state = run(
                http,
                "check_connections/check_connections",
                {"parameters": {"fail_when_unreachable": False}},
            )
            assert state["type"] == "COMPLETED", (state, log.read_text()[-3000:])
            # Deployed by a bare `prefect deploy`, the schema takes any name: the worker's pull
            # step refuses the run then, naming the parameter, instead of an exit code.
            checks = _deployment(http, "check_connections")
            schema = checks["parameter_openapi_schema"]
            opened = {k: v for k, v in schema.items() if k != "additionalProperties"}
            patch = f"/deployments/{checks['id']}"
            assert http.patch(patch, json={"parameter_openapi_schema": opened}).status_code == 204
            try:
                _, refused = run(
                    http, "check_connections/check_connections", {"parameters": {"dryrun": True}}
                )
            finally:
                http.patch(patch, json={"parameter_openapi_schema": schema})
            assert refused["type"] == "FAILED", (refused, log.read_text()[-3000:])
            assert (refused.get("message") or "").startswith(
                "unknown parameter dryrun: check_connections takes "
            ), refused
        found = http.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        ).json()
        data = found[0]["data"]
        rows = json.loads(data) if isinstance(data, str) else data
        postgres = next(r for r in rows if r["system"] == "postgres")
        assert postgres["origin"] == "block", postgres
        assert postgres["result"] == "ok", postgres

    # A worker whose environment lacks PERFOPS_PROJECT_DIR fails the run and says so.
    bare = {k: v for k, v in env.items() if k != "PERFOPS_PROJECT_DIR"}
    with worker(bare, tmp_path) as log:
        _, state = run(http, "check_connections/check_connections", {})
    assert state["type"] in {"FAILED", "CRASHED"}, state
    assert "PERFOPS_PROJECT_DIR" in (state.get("message") or ""), (state, log.read_text()[-3000:])


def _unit(name: str) -> dict[str, list[str]]:
    """A systemd unit's [Service] keys (repeatable keys keep every value)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in (ROOT / "deployments" / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def test_the_worker_unit_starts_a_worker_that_its_stop_signal_stops(
    deployed: dict[str, str], tmp_path: Path
) -> None:
    import shlex
    import signal
    import subprocess

    unit = _unit("perfops-worker@.service")
    assert "PERFOPS_PROJECT_DIR=/srv/perfops" in unit["Environment"]
    stop_signal = getattr(signal, unit["KillSignal"][0])
    timeout = float(unit["TimeoutStopSec"][0])
    command = [
        part.replace("/srv/perfops/.venv/bin", str(BIN)).replace("%i", "unit-test")
        for part in shlex.split(unit["ExecStart"][0])
    ]
    log = tmp_path / "unit-worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env={**deployed, "PERFOPS_PROJECT_DIR": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 60
        while "started!" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.5)
        assert "started!" in log.read_text(), log.read_text()
        process.send_signal(stop_signal)
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert _unit("prefect-server.service")["KillSignal"] == unit["KillSignal"]


def test_rotation_without_its_archive_block_and_a_least_privilege_role_end_failed(
    deployed: dict[str, str], pg_dsn: str, partitioned_table: str, tmp_path: Path
) -> None:
    """Finding 1 and 2 of issue 13, through deployments and a worker: the rotation whose
    archive block does not exist detaches nothing and ends Failed; refresh_stale_statistics as
    docs/production.md's least-privilege role ends Failed with the privilege named."""
    import psycopg
    from psycopg import sql

    role = f"perfops_e2e_ro_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
        for grant in ("grant pg_monitor to {}", "grant pg_read_all_stats to {}"):
            conn.execute(sql.SQL(grant).format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("grant usage on schema e2e_rotation to {}").format(sql.Identifier(role))
        )
        conn.execute("analyze e2e_rotation.events")
        conn.execute(
            "insert into e2e_rotation.events select now(), g from generate_series(1, 500) g"
        )
    env = {
        **deployed,
        "PERFOPS_PROJECT_DIR": str(ROOT),
        "PERFOPS_DSN": pg_dsn,
        "PERFOPS_OUT_DIR": str(tmp_path / "out"),
    }
    http = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)
    rotate = rotation_policy(partitioned_table, "s3-block:perfops-archive")
    least = psycopg.conninfo.make_conninfo(pg_dsn, user=role)
    try:
        with worker(env, tmp_path) as log:
            _, rotated = run(
                http,
                "rotate_partitions/rotate_partitions",
                {"parameters": {"policies_file": None, "policies": [rotate]}},
            )
            _, refreshed = run(
                http,
                "refresh_stale_statistics/refresh_stale_statistics",
                {"job_variables": {"env": {"PERFOPS_DSN": least}}},
            )
            tail = log.read_text()[-3000:]
        assert rotated["type"] == "FAILED", (rotated, tail)
        assert "perfops-archive" in (rotated.get("message") or ""), rotated
        with psycopg.connect(pg_dsn) as conn:
            attached = conn.execute(
                "select count(*) from pg_inherits"
                " where inhrelid = 'e2e_rotation.events_p2020_01'::regclass"
            ).fetchone()
        assert attached == (1,), "nothing was detached"
        assert refreshed["type"] == "FAILED", (refreshed, tail)
        message = refreshed.get("message") or ""
        assert "needs ownership of e2e_rotation.events" in message, refreshed
        assert f"to {role}" in message, refreshed
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
