"""A load test spread over two process workers (docs/load-tests.md "Shares"): `run_load_test`
with `shares: 2, spread: true` on one worker sends share 1 itself and starts share 2 as a run of
the `run_load_share` deployment, which the other worker takes; both begin at the start the
parent gave, each asks half the rate, and the parent's figures are the two shares' histograms
merged. With the second worker gone, the parent takes share 2 back and sends it itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.target_server import TargetBehaviour, TargetServer
from tests.e2e.stack import POOL, ROOT, wait_final, worker
from tests.e2e.stack import run as run_deployment
from tests.e2e.test_workers import (
    _create_run,
    _drop_waiting_runs,
    _parent_run_of,
    _picked_by,
    _runs_named,
    _wait_started,
)

# two runs of ~60 s each (the shares begin 40 s after the parent asks), after the session's
# server and `perfops deploy` (up to ~150 s when this test comes first)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REDIS_URL = "redis://127.0.0.1:6379/13"
TESTS = """\
tests:
  - name: spread
    duration: 4s
    pattern: {rps: 100}
    scenarios:
      - name: list
        steps: [{url: /api/v1/agents, assert: {status: [200]}}]
    criteria:
      - {endpoint: all, max_error_rate: 0.01}
"""
PARENT = "run_load_test/run_load_test"
SHARES = ["run_load_share-spread-1-of-2", "run_load_share-spread-2-of-2"]


def _artifact(http: httpx.Client, run_id: str, key: str) -> Any:
    body = {"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": [key]}}}
    [artifact] = http.post("/artifacts/filter", json=body).json()
    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


def _share_result(http: httpx.Client, run_id: str) -> dict[str, Any]:
    """The result a share published for its parent (histograms, counts, where it ran)."""
    data = _artifact(http, run_id, "perfops-load-spread-share")
    return dict(json.loads(data["result"]))


def test_a_load_test_in_two_shares_runs_them_on_two_workers_and_merges_them(
    deployed: dict[str, str], tmp_path: Path
) -> None:
    tests_file = tmp_path / "load_tests.yaml"
    tests_file.write_text(TESTS, encoding="utf-8")
    http = httpx.Client(base_url=deployed["PREFECT_API_URL"], timeout=30)
    parameters = {
        "name": "spread",
        "tests_file": str(tests_file),
        "shares": 2,
        "spread": True,
        "keep_history": False,
    }
    _drop_waiting_runs(http, POOL)
    with TargetServer(TargetBehaviour(median_ms=5)) as server:
        env = {
            **deployed,
            "PERFOPS_PROJECT_DIR": str(ROOT),
            "PERFOPS_OUT_DIR": str(tmp_path / "out"),
            "PERFOPS_REDIS_URL": REDIS_URL,
            "PERFOPS_LOAD_TARGET_URL": server.url,  # loopback: no block needed
        }
        with (
            worker(env, tmp_path, name="load-1", limit=1) as log1,
            worker(env, tmp_path, name="load-2", limit=1) as log2,
        ):
            _wait_started(log1, log2)
            parent = _create_run(http, PARENT, parameters)
            state = wait_final(http, parent, timeout_s=240)
            tails = f"{log1.read_text()[-3000:]}\n{log2.read_text()[-3000:]}"
        assert state["type"] == "COMPLETED", (state, tails)
        assert server.log is not None
        numbers = sorted(server.log.numbers)

        runs = _runs_named(http, SHARES)
        here, away = runs[SHARES[0]], runs[SHARES[1]]
        assert "perfops-load-share" in away["tags"] and away["deployment_id"]
        assert here["deployment_id"] is None  # a subflow in the parent's process
        assert _parent_run_of(http, away) == _parent_run_of(http, here) == parent
        # each worker (limit 1) started one of the two runs: the parent or share 2
        logs = {"load-1": log1, "load-2": log2}
        by_parent = _picked_by(logs, http.get(f"/flow_runs/{parent}").json()["name"])
        by_share = _picked_by(logs, SHARES[1])
        assert len(by_parent) == 1 and by_share == set(logs) - by_parent, tails
        # ... in two processes, as each share's result says
        results = [_share_result(http, r["id"]) for r in (here, away)]
        assert results[0]["ran_on"] != results[1]["ran_on"]
        assert [r["flow_run_id"] for r in results] == [here["id"], away["id"]]
        # share 1 in the parent's process, share 2 in the one the other worker started
        infra = http.get(f"/flow_runs/{parent}").json()["infrastructure_pid"]
        assert results[0]["ran_on"].endswith(f":{infra}"), (results[0]["ran_on"], infra)
        assert results[1]["ran_on"].endswith(f":{away['infrastructure_pid']}")

        # the rate divided, each arrival sent once, the merge exact in its counts
        assert [(r["share"], r["shares"], r["asked"]) for r in results] == [
            (0, 2, 200),
            (1, 2, 200),
        ]
        assert numbers == list(range(400))
        rows = _artifact(http, parent, "perfops-load-spread")
        total = next(r for r in rows if r["what"] == "endpoint all")
        sent = [sum(c["requests"] for c in r["endpoints"].values()) for r in results]
        assert total["requests"] == sum(sent) == 400 and all(s == 200 for s in sent)
        share_rows = [r for r in rows if r["what"].startswith("share ")]
        assert [(r["what"], r["result"]) for r in share_rows] == [
            ("share 1 of 2", "on time"),
            ("share 2 of 2", "on time"),
        ]
        assert "on a worker of the pool" in share_rows[1]["reason"]

        # The second worker is gone and the first is busy with the parent: nobody takes
        # share 2, so the parent takes it back before the start and sends it itself.
        for run in runs.values():
            http.delete(f"/flow_runs/{run['id']}")
        with worker(env, tmp_path, name="load-1", limit=1) as log1:
            _wait_started(log1)
            parent = _create_run(http, PARENT, parameters)
            state = wait_final(http, parent, timeout_s=240)
            tail = log1.read_text()[-3000:]
        assert state["type"] == "COMPLETED", (state, tail)
    named = {"flow_runs": {"name": {"any_": [SHARES[1]]}}}
    runs_2 = http.post("/flow_runs/filter", json=named).json()  # the pool's run, and here
    cancelled = [r for r in runs_2 if r["deployment_id"]]
    assert [r["state"]["type"] for r in cancelled] == ["CANCELLED"], runs_2
    sent_here = [r for r in runs_2 if not r["deployment_id"]]
    assert [r["state"]["type"] for r in sent_here] == ["COMPLETED"], runs_2
    assert _parent_run_of(http, sent_here[0]) == parent
    assert "its parent run sent it" in (cancelled[0]["state"]["message"] or "")
    rows = _artifact(http, parent, "perfops-load-spread")
    share_rows = [r for r in rows if r["what"].startswith("share ")]
    assert [r["what"] for r in share_rows] == ["share 1 of 2", "share 2 of 2"]
    assert "taken back from the pool" in share_rows[1]["reason"]
    assert next(r for r in rows if r["what"] == "endpoint all")["requests"] == 400

    # A test whose work fails (every answer a 500: its error-rate criterion missed) ends Failed
    # on the worker, saying which criterion, with its artifact written.
    with (
        TargetServer(TargetBehaviour(median_ms=5, error_rate=1.0)) as broken,
        worker(env, tmp_path, name="load-1", limit=1) as log1,
    ):
        _wait_started(log1)
        body = {
            "parameters": {**parameters, "shares": 1, "spread": False},
            "job_variables": {"env": {"PERFOPS_LOAD_TARGET_URL": broken.url}},
        }
        run_id, state = run_deployment(http, PARENT, body, timeout_s=240)
        tail = log1.read_text()[-3000:]
    assert state["type"] == "FAILED", (state, tail)
    assert "criteria missed" in (state["message"] or ""), state
    rows = _artifact(http, run_id, "perfops-load-spread")
    assert next(r for r in rows if r["what"] == "endpoint all")["requests"] > 0
