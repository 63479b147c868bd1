"""The demo's load test: the platform's three endpoints at a tenth of their asked rates for a
few seconds, against `demo.target_server` started here on 127.0.0.1, through the real flow
(`run_load_test`, history in the demo database, a baseline established on the way)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from decisions.load_baseline import ComparePolicy
from demo.outcome import FlowOutcome, Progress
from demo.target_server import TargetBehaviour, TargetServer
from perfops.errors import report_of
from perfops.redaction import redact
from perfops.settings import get_settings

DEMO_TESTS = """\
# The demo's load test (perfops demo): the platform's mix at a tenth of its asked rates.
tests:
  - name: demo-platform-api
    description: GET /api/v1/agents, POST /api/v1/agents/execute, POST /api/v1/workflows/run
    duration: 5s
    pattern: {kind: constant, rps: 160}
    scenarios:
      - {name: list-agents, weight: 1000, steps: [{method: GET, url: /api/v1/agents,
          assert: {status: [200], json: {status: ok}}}]}
      - {name: execute-agent, weight: 500, steps: [{method: POST, url: /api/v1/agents/execute,
          body: {agent_id: demo-agent}}]}
      - {name: run-workflow, weight: 100, steps: [{method: POST, url: /api/v1/workflows/run,
          body: {workflow_id: demo-workflow}}]}
    criteria:
      - {endpoint: GET /api/v1/agents, p95_ms: 100}
      - {endpoint: POST /api/v1/agents/execute, p95_ms: 200}
      - {endpoint: POST /api/v1/workflows/run, p95_ms: 500}
      - {endpoint: all, max_error_rate: 0.01}
"""


DEMO_PORT = 38089  # one port run after run: baselines are kept per target (its base URL)


def _demo_port() -> int:
    """DEMO_PORT when it is free, so a second demo compares with the first; else any port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", DEMO_PORT))
        except OSError:
            return 0
    return DEMO_PORT


def run_load_demo(progress: Progress) -> FlowOutcome:
    from flows.run_load_test import run_load_test

    progress("running run_load_test (a local target server, 5 s)", 0, 1)
    folder = get_settings().out_dir / "load-tests"
    folder.mkdir(parents=True, exist_ok=True)
    tests_file = Path(folder / "demo.yaml").resolve()
    tests_file.write_text(DEMO_TESTS)
    before = os.environ.get("PERFOPS_LOAD_TARGET_URL")
    key = "perfops-load-demo-platform-api"
    behaviour = TargetBehaviour(median_ms=10, sigma=0.3)
    with TargetServer(behaviour, port=_demo_port(), keep_log=False) as server:
        os.environ["PERFOPS_LOAD_TARGET_URL"] = server.url
        try:
            state = run_load_test(
                name="demo-platform-api",
                tests_file=str(tests_file),
                baseline=True,
                # a 5 s run on a laptop that is also running Prefect and PostgreSQL: only a
                # doubling of the typical second's p95 counts as a regression here
                compare=ComparePolicy(min_effect=1.0),
                return_state=True,
            )
        finally:
            if before is None:
                os.environ.pop("PERFOPS_LOAD_TARGET_URL", None)
            else:
                os.environ["PERFOPS_LOAD_TARGET_URL"] = before
    run: Any = report_of(state.result(raise_on_failure=False))
    if isinstance(run, BaseException) or run is None:
        return FlowOutcome("run_load_test", state.name or "Failed", redact(str(run)), key)
    charts = sorted((folder / "demo-platform-api").glob("*.png"))
    return FlowOutcome(
        "run_load_test",
        state.name or "",
        f"{run.summary}; {run.baseline or ''}",
        key,
        [str(charts[-1])] if charts else [],
    )
