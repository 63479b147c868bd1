"""The cache deployments end to end, as production runs them: a real Prefect server, the
deployments of prefect.yaml (`perfops deploy`), a process worker, and platform events POSTed to
the server. `platform.user.updated` makes the invalidate_cache automation start a run that drops
that user's keys from Redis and no other; `platform.agent.updated` drops an agent's keys, and
the perfops.cache.invalidated event it emits makes the warm_cache automation fetch the agent's
configuration keys again from the application (agent_configs: proactive refresh); a run whose
work failed (a refused pattern) ends Failed on the worker with its artifact."""

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
import redis

from tests.caches.conftest import App
from tests.e2e.stack import (
    POOL,
    ROOT,
    artifact_keys,
    run_ids,
    wait_final,
    wait_for_runs,
    worker,
)
from tests.e2e.stack import run as run_deployment

pytestmark = pytest.mark.e2e

REDIS_URL = "redis://127.0.0.1:6379/12"  # e2e tests own fixed dbs: 11, 12 (this file) and 14


def _deployment(http: httpx.Client, name: str) -> dict[str, Any]:
    found = http.get(f"/deployments/name/{name}/{name}")
    assert found.status_code == 200, f"{name} is not deployed"
    data: dict[str, Any] = found.json()
    return data


@contextmanager
def _pool_env(http: httpx.Client, env: dict[str, str]) -> Iterator[None]:
    """The work pool's job environment set to `env` (it overrides the worker's own: an earlier
    test may have left another Redis there), restored afterwards."""
    template = http.get(f"/work_pools/{POOL}").json()["base_job_template"]
    original = json.loads(json.dumps(template))
    template["variables"]["properties"]["env"]["default"] = env
    assert http.patch(f"/work_pools/{POOL}", json={"base_job_template": template}).is_success
    try:
        yield
    finally:
        http.patch(f"/work_pools/{POOL}", json={"base_job_template": original})


@contextmanager
def _parameters(http: httpx.Client, names: list[str], **changes: Any) -> Iterator[None]:
    """The deployments' default parameters with `changes` (as an operator sets them in the UI),
    restored afterwards."""
    before = {n: _deployment(http, n) for n in names}
    try:
        for d in before.values():
            body = {"parameters": {**d["parameters"], **changes}}
            assert http.patch(f"/deployments/{d['id']}", json=body).status_code == 204
        yield
    finally:
        for d in before.values():
            http.patch(f"/deployments/{d['id']}", json={"parameters": d["parameters"]})


def _drop_waiting_runs(http: httpx.Client) -> None:
    """Runs earlier tests' triggers created with no worker to run them would be taken first."""
    waiting = {
        "work_pools": {"name": {"any_": [POOL]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING"]}}},
    }
    for run in http.post("/flow_runs/filter", json=waiting).json():
        http.delete(f"/flow_runs/{run['id']}")


def _emit(http: httpx.Client, name: str, resource: str, payload: dict[str, Any]) -> None:
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": name,
        "resource": {"prefect.resource.id": resource},
        "payload": payload,
    }
    assert http.post("/events", json=[event]).status_code == 204


def _triggered_run(
    http: httpx.Client, deployment: dict[str, Any], earlier: set[str], log: Path
) -> dict[str, Any]:
    """The one run the deployment's automation started since `earlier`, once final."""
    runs = wait_for_runs(http, deployment["id"], 1, timeout_s=90, besides=earlier)
    assert len(runs) == 1, (runs, log.read_text()[-3000:])
    run = runs[0]
    state = wait_final(http, str(run["id"]), timeout_s=150)
    assert state["type"] == "COMPLETED", (state, log.read_text()[-3000:])
    return run


def test_platform_events_invalidate_through_the_automation_and_warm_proactive_caches_again(
    deployed: dict[str, str], tmp_path: Path
) -> None:
    http = httpx.Client(base_url=deployed["PREFECT_API_URL"], timeout=30)
    cache = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    cache.flushdb()
    gone = ["user:42:profile:main", "user:42:profile:avatar", "user:42:preferences:ui"]
    kept = ["user:43:profile:main", "user:420:profile:main", "user:4:profile:main",
            "session:42", "agent:42:config:main", "workflow:42:definition:v1"]  # fmt: skip
    cache.mset({k: "v" for k in gone + kept})
    app = App()  # the application the warm-up fetches values from
    policy = tmp_path / "caches.yaml"
    policy.write_text(
        (ROOT / "deployments" / "caches.yaml")
        .read_text()
        .replace("https://app.internal/internal/cache/{key}", app.url),
        encoding="utf-8",
    )
    invalidate = _deployment(http, "invalidate_cache")
    warm = _deployment(http, "warm_cache")
    worker_env = {**deployed, "PERFOPS_PROJECT_DIR": str(ROOT),
                  "PERFOPS_OUT_DIR": str(tmp_path / "out")}  # fmt: skip
    _drop_waiting_runs(http)
    try:
        with (
            _pool_env(http, {"PERFOPS_REDIS_URL": REDIS_URL}),
            worker(worker_env, tmp_path) as log,
        ):
            # A user changed: the automation runs invalidate_cache with the event and payload.
            earlier = run_ids(http, invalidate["id"])
            _emit(http, "platform.user.updated", "platform.user.42", {"user_id": "42"})
            run = _triggered_run(http, invalidate, earlier, log)
            assert run["parameters"]["event"] == "platform.user.updated"
            assert json.loads(run["parameters"]["payload"]) == {"user_id": "42"}
            assert run["parameters"]["apply"] is True
            assert not any(cache.exists(k) for k in gone)
            assert sorted(k for k in cache.scan_iter("*")) == sorted(kept)

            # An agent changed: its configuration keys are warmed again (proactive refresh);
            # its state keys (agent_state) and every other key are left as they are.
            cache.mset({"agent:7:config:main": "old", "agent:7:config:tools": "old",
                        "agent:7:state:run": "old"})  # fmt: skip
            with _parameters(http, ["invalidate_cache", "warm_cache"], policy_path=str(policy)):
                earlier = run_ids(http, invalidate["id"])
                earlier_warm = run_ids(http, warm["id"])
                _emit(http, "platform.agent.updated", "platform.agent.7", {"agent_id": "7"})
                _triggered_run(http, invalidate, earlier, log)
                warmed = _triggered_run(http, warm, earlier_warm, log)

            # A run whose work failed ends Failed on the worker, its record still written: a
            # bare pattern would span every cache and is refused; nothing is dropped.
            keys_before = sorted(cache.scan_iter("*"))
            refused, state = run_deployment(
                http, "invalidate_cache/invalidate_cache", {"parameters": {"pattern": "*"}}
            )
            assert state["type"] == "FAILED", (state, log.read_text()[-3000:])
            assert "has no literal prefix and spans every cache" in state["message"]
            assert "perfops-cache-invalidation" in artifact_keys(http, refused)
            assert sorted(cache.scan_iter("*")) == keys_before
            time.sleep(0.5)
    finally:
        app.server.shutdown()
        app.server.server_close()
    assert warmed["parameters"]["cache"] == "agent_configs"
    assert sorted(warmed["parameters"]["keys"]) == ["agent:7:config:main", "agent:7:config:tools"]
    assert warmed["parameters"]["keys_sql"] is None  # not the schedule's query
    assert sorted(app.seen) == ["agent:7:config:main", "agent:7:config:tools"]
    value = cache.get("agent:7:config:main")
    assert isinstance(value, str) and json.loads(value) == {"key": "agent:7:config:main"}
    assert cache.get("agent:7:state:run") is None
    assert sorted(k for k in cache.scan_iter("*") if not k.startswith("agent:7:")) == sorted(kept)
