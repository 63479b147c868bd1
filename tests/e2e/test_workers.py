"""Workers take their environment from the work pool (docs/workers.md): two process workers on one
pool whose job environment `perfops deploy --pool-env` set (the project dir and a fleet file),
a fleet run over two databases and a second run, each picked by a different worker; and a
Kubernetes work pool made from deployments/kubernetes/base-job-template.json."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import ADMIN_DSN
from tests.e2e.stack import POOL, ROOT, command, perfops, prefect, wait_final, worker

pytestmark = pytest.mark.e2e

REDIS_URL = "redis://127.0.0.1:6379/11"
TEMPLATE = ROOT / "deployments" / "kubernetes" / "base-job-template.json"


@pytest.fixture()
def two_databases(
    deployed: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Path, dict[str, str]]]:
    """Two small databases, each with one never-analyzed table and a block saved for it, and
    a fleet file in tmp naming them: (the file, each target's DSN)."""
    run = uuid.uuid4().hex[:6]
    targets = [f"a-{run}", f"b-{run}"]
    names = {t: f"perfops_workers_{run}_{t[0]}" for t in targets}
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        for db in names.values():
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(db)))
    try:
        save = ["from pydantic import SecretStr", "from blocks import PostgresTarget"]
        for target, db in names.items():
            dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=db)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "create table items with (autovacuum_enabled = false) as "
                    "select g as id from generate_series(1, 100) g"
                )
            save.append(f"PostgresTarget(dsn=SecretStr({dsn!r})).save({'workers-' + target!r})")
        command("python", deployed, "-c", "\n".join(save))
        fleet = tmp_path / "fleet.yaml"
        entries = "".join(
            f"  - name: {t}\n    blocks: {{postgres: workers-{t}}}\n    cluster: local-{t}\n"
            for t in targets
        )
        fleet.write_text(f"max_parallel: 2\ntargets:\n{entries}", encoding="utf-8")
        yield (
            fleet,
            {t: psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=names[t]) for t in targets},
        )
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            for db in names.values():
                admin.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(db))
                )


@contextmanager
def _pool_restored(http: httpx.Client, pool: str) -> Iterator[None]:
    """The pool's base job template as it was, whatever the test set in it."""
    original = http.get(f"/work_pools/{pool}").json()["base_job_template"]
    try:
        yield
    finally:
        http.patch(f"/work_pools/{pool}", json={"base_job_template": original})


def _drop_waiting_runs(http: httpx.Client, pool: str) -> None:
    """Delete the pool's runs still waiting for a worker: runs earlier tests created without
    one to run them (the triggers' runs) would otherwise be picked before this test's."""
    waiting = {
        "work_pools": {"name": {"any_": [pool]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING"]}}},
    }
    for run in http.post("/flow_runs/filter", json=waiting).json():
        http.delete(f"/flow_runs/{run['id']}")


def _create_run(http: httpx.Client, deployment: str, parameters: dict[str, Any]) -> str:
    found = http.get(f"/deployments/name/{deployment}")
    assert found.status_code == 200, f"{deployment} is not deployed"
    created = http.post(
        f"/deployments/{found.json()['id']}/create_flow_run", json={"parameters": parameters}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _wait_started(*logs: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not all("started!" in log.read_text() for log in logs):
        assert time.monotonic() < deadline, "a worker did not start"
        time.sleep(0.5)


def _picked_by(logs: dict[str, Path], run_name: str) -> set[str]:
    """The workers that started the run: both may log "submitting" a run, only the one whose
    Pending proposal the server accepted logs "Flow run 'NAME' submitted to infrastructure"."""
    line = f"Flow run '{run_name}' submitted to infrastructure"
    return {name for name, log in logs.items() if line in log.read_text()}


def test_two_workers_take_the_environment_from_the_pool_and_share_the_runs(
    deployed: dict[str, str], two_databases: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    fleet, dsns = two_databases
    targets = sorted(dsns)
    http = httpx.Client(base_url=deployed["PREFECT_API_URL"], timeout=30)
    # The workers' own environment has neither the project nor the fleet file: both come
    # from the pool's job environment.
    workers_env = {
        **deployed,
        "PERFOPS_OUT_DIR": str(tmp_path / "out"),
        "PERFOPS_REDIS_URL": REDIS_URL,
    }
    assert not {"PERFOPS_PROJECT_DIR", "PERFOPS_FLEET_FILE"} & set(workers_env)
    names = ["perfops-worker-1", "perfops-worker-2"]
    _drop_waiting_runs(http, POOL)
    # The workers start while perfops deploy runs (they read the pool's job environment for
    # each run they submit, not when they start); each works on one run at a time.
    with (
        _pool_restored(http, POOL),
        worker(workers_env, tmp_path, name=names[0], limit=1) as log1,
        worker(workers_env, tmp_path, name=names[1], limit=1) as log2,
    ):
        perfops(
            deployed,
            "deploy",
            "refresh_stale_statistics",
            "--pool-env",
            f"PERFOPS_PROJECT_DIR={ROOT}",
            "--pool-env",
            f"PERFOPS_FLEET_FILE={fleet}",
        )
        template = http.get(f"/work_pools/{POOL}").json()["base_job_template"]
        pool_env = template["variables"]["properties"]["env"]["default"]
        assert pool_env["PERFOPS_FLEET_FILE"] == str(fleet)
        assert pool_env["PERFOPS_PROJECT_DIR"] == str(ROOT)

        _wait_started(log1, log2)  # so that neither takes both runs one after the other
        fleet_run = _create_run(
            http, "refresh_stale_statistics/refresh_stale_statistics", {"targets": "all"}
        )
        other_run = _create_run(
            http, "check_connections/check_connections", {"fail_when_unreachable": False}
        )
        fleet_state = wait_final(http, fleet_run, timeout_s=120)
        other_state = wait_final(http, other_run, timeout_s=120)
        tails = f"{log1.read_text()[-2000:]}\n{log2.read_text()[-2000:]}"
    assert fleet_state["type"] == "COMPLETED", (fleet_state, tails)
    assert other_state["type"] == "COMPLETED", (other_state, tails)

    # The fleet came from the pool's PERFOPS_FLEET_FILE: one child per target of that file,
    # named after it, a subflow of the fleet run, and each database analyzed.
    expected = [f"refresh_stale_statistics-{t}" for t in targets]
    children = http.post(
        "/flow_runs/filter", json={"flow_runs": {"name": {"any_": expected}}}
    ).json()
    assert sorted(c["name"] for c in children) == expected, children
    for child in children:
        assert child["state"]["type"] == "COMPLETED", child
        parent_task = http.get(f"/task_runs/{child['parent_task_run_id']}").json()
        assert parent_task["flow_run_id"] == fleet_run
    for target, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            analyzed = conn.execute(
                "select last_analyze is not null from pg_stat_user_tables where relname = 'items'"
            ).fetchone()
        assert analyzed == (True,), target

    # Each worker (limit 1) started one of the two runs.
    logs = {names[0]: log1, names[1]: log2}
    picked = {
        run: _picked_by(logs, http.get(f"/flow_runs/{run}").json()["name"])
        for run in (fleet_run, other_run)
    }
    assert all(len(p) == 1 for p in picked.values()), (picked, tails)
    assert set().union(*picked.values()) == set(names), (picked, tails)


def _runs_named(http: httpx.Client, names: list[str]) -> dict[str, dict[str, Any]]:
    found = http.post("/flow_runs/filter", json={"flow_runs": {"name": {"any_": names}}}).json()
    return {r["name"]: r for r in found}


def _parent_run_of(http: httpx.Client, run: dict[str, Any]) -> str:
    return str(http.get(f"/task_runs/{run['parent_task_run_id']}").json()["flow_run_id"])


def _fleet_rows(http: httpx.Client, run_id: str, key: str) -> list[dict[str, Any]]:
    body = {"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": [key]}}}
    [artifact] = http.post("/artifacts/filter", json=body).json()
    data = artifact["data"]
    return list(json.loads(data) if isinstance(data, str) else data)


def test_a_spread_fleet_run_gives_a_share_to_another_worker_or_takes_it_back(
    deployed: dict[str, str], two_databases: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`spread: 2`: the parent (on one worker, limit 1) runs the first target itself and
    starts the second as a share run of the same deployment, which the other worker takes;
    with that worker gone, no worker can take the share, so the parent takes it back
    (claims it, cancels it saying why) and runs its target itself. Each time the parent's
    summary has one row per target."""
    fleet, dsns = two_databases
    targets = list(dsns)  # the file's order: share 1 is targets[0], share 2 targets[1]
    fleet.write_text("spread: 2\n" + fleet.read_text(), encoding="utf-8")
    http = httpx.Client(base_url=deployed["PREFECT_API_URL"], timeout=30)
    env = {**deployed, "PERFOPS_OUT_DIR": str(tmp_path / "out"), "PERFOPS_REDIS_URL": REDIS_URL}
    deployment = "refresh_stale_statistics/refresh_stale_statistics"
    share_name = "refresh_stale_statistics-share-2-of-2"
    children = [f"refresh_stale_statistics-{t}" for t in targets]
    _drop_waiting_runs(http, POOL)
    with (
        _pool_restored(http, POOL),
        worker(env, tmp_path, name="spread-1", limit=1) as log1,
    ):
        perfops(
            deployed,
            "deploy",
            "refresh_stale_statistics",
            "--pool-env",
            f"PERFOPS_PROJECT_DIR={ROOT}",
            "--pool-env",
            f"PERFOPS_FLEET_FILE={fleet}",
        )
        with worker(env, tmp_path, name="spread-2", limit=1) as log2:
            _wait_started(log1, log2)
            parent = _create_run(http, deployment, {"targets": "all", "dry_run": True})
            state = wait_final(http, parent, timeout_s=120)
            tails = f"{log1.read_text()[-2000:]}\n{log2.read_text()[-2000:]}"
        assert state["type"] == "COMPLETED", (state, tails)
        runs = _runs_named(http, [share_name, *children])
        share = runs[share_name]
        assert share["state"]["type"] == "COMPLETED", share
        assert "perfops-fleet-share" in share["tags"]
        assert _parent_run_of(http, share) == parent  # a subflow of the parent, in the UI
        assert _parent_run_of(http, runs[children[0]]) == parent
        assert _parent_run_of(http, runs[children[1]]) == share["id"]
        logs = {"spread-1": log1, "spread-2": log2}
        by_parent = _picked_by(logs, http.get(f"/flow_runs/{parent}").json()["name"])
        assert len(by_parent) == 1 and _picked_by(logs, share_name) == set(logs) - by_parent
        rows = _fleet_rows(http, parent, "perfops-stats-refresh-fleet")
        assert [(r["target"], r["result"]) for r in rows] == [(t, "done") for t in targets]
        assert all(r["run"] for r in rows), rows

        # The second worker is gone and the first is busy with the parent: the share waits.
        for run in runs.values():
            http.delete(f"/flow_runs/{run['id']}")
        parent = _create_run(http, deployment, {"targets": "all", "dry_run": True})
        state = wait_final(http, parent, timeout_s=120)
        assert state["type"] == "COMPLETED", (state, log1.read_text()[-3000:])
    runs = _runs_named(http, [share_name, *children])
    share = runs[share_name]
    assert share["state"]["type"] == "CANCELLED", share
    assert "its parent ran its targets" in (share["state"]["message"] or "")
    assert {_parent_run_of(http, runs[c]) for c in children} == {parent}
    rows = _fleet_rows(http, parent, "perfops-stats-refresh-fleet")
    assert [(r["target"], r["result"]) for r in rows] == [(t, "done") for t in targets]


def test_the_kubernetes_template_makes_a_work_pool_that_takes_pool_env(
    deployed: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prefect work-pool create --type kubernetes --base-job-template ...` as docs/workers.md
    says (the server checks the template), and `--pool-env` merges into its environment."""
    from cli.commands.deploy import PrefectApi

    name = f"perfops-k8s-{uuid.uuid4().hex[:6]}"
    http = httpx.Client(base_url=deployed["PREFECT_API_URL"], timeout=30)
    template = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    prefect(
        deployed,
        "work-pool",
        "create",
        name,
        "--type",
        "kubernetes",
        "--base-job-template",
        str(TEMPLATE),
    )
    try:
        pool = http.get(f"/work_pools/{name}").json()
        assert pool["type"] == "kubernetes"
        assert pool["base_job_template"] == template
        monkeypatch.setenv("PREFECT_API_URL", deployed["PREFECT_API_URL"])
        api = PrefectApi()
        api.set_pool_env(name, {"PERFOPS_FLEET_FILE": "/etc/perfops/fleet.yaml"})
        env = api.pool_env(name)
        defaults = template["variables"]["properties"]["env"]["default"]
        assert env == {**defaults, "PERFOPS_FLEET_FILE": "/etc/perfops/fleet.yaml"}
    finally:
        http.delete(f"/work_pools/{name}")
