"""The load generator task: one share of a load test run in a child process of its own
(`python -m tasks.load_engine`, the plan on stdin: the auth header never appears in an argument,
an environment variable or a log), so each share has a core and an interpreter of its own and
starts without importing Prefect. The engine (open model, HDR histograms) is
`tasks.load_engine`.

Why not httpx: the engine is asyncio protocols and callbacks, about 130 us of CPU per request
here; httpx.AsyncClient costs several times that per request (docs/load-tests.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks import LoadTarget
from decisions.load_results import ShareResult
from decisions.load_scenarios import LoadTest, cap_problems, load_tests
from decisions.load_schedule import Shape, arrival_times
from perfops.errors import ConfigurationError, PerfopsError
from perfops.settings import get_settings
from tasks.load_engine import LoadPlan, plan_json, run_share

__all__ = [
    "GeneratorFailed",
    "LoadPlan",
    "check_test",
    "generate_load",
    "read_test",
    "run_share",
    "run_share_in_process",
    "share_plan",
]


class GeneratorFailed(PerfopsError):
    """The generator process could not run the share (not: the target answered badly)."""


def read_test(name: str, tests_file: str | None) -> LoadTest:
    """Test `name` of `tests_file` (default PERFOPS_LOAD_TESTS_FILE, else
    deployments/load_tests.yaml)."""
    return load_tests(Path(tests_file) if tests_file else get_settings().load_tests_file).get(name)


def check_test(test: LoadTest, target: LoadTarget, shares: int) -> None:
    """Refuse, before any request, a test the target's allow-list or caps do not allow
    (ConfigurationError listing every reason)."""
    problems = cap_problems(
        test,
        max_rps=target.max_rps,
        max_connections=target.max_connections,
        max_duration_s=target.max_duration_s,
    )
    for scenario in test.scenarios:
        for step in scenario.steps:
            url = step.url if not step.url.startswith("/") else target.base_url + step.url
            try:
                target.check_url(url)
            except ConfigurationError as exc:
                problems.append(str(exc))
    if shares > target.max_connections:
        problems.append(f"{shares} shares need more connections than the cap allows")
    if problems:
        raise ConfigurationError(f"load test {test.name} refused: " + "; ".join(problems))


def share_plan(
    test: LoadTest, target: LoadTarget, share: int, shares: int, start_at: float | None
) -> LoadPlan:
    """Share `share` (0-based) of `shares`: rate/shares, the target's connections and its rate
    cap divided, the auth header from the block."""
    auth = target.auth()
    return LoadPlan(
        test=test,
        base_url=target.base_url,
        auth_header=auth[0] if auth else None,
        auth_value=auth[1] if auth else None,
        share=share,
        shares=shares,
        max_connections=max(1, min(test.max_connections, target.max_connections // shares)),
        max_rps=target.max_rps / shares,
        start_at_unix=start_at,
    )


def run_share_in_process(plan: LoadPlan, timeout_s: float | None = None) -> ShareResult:
    """Run one share in a child Python process (a core of its own) and return its result."""
    waits = max(0.0, (plan.start_at_unix or 0.0) - time.time())  # for the shared start
    limit = timeout_s or waits + plan.test.seconds + 60 + max(
        s.timeout.total_seconds() for sc in plan.test.scenarios for s in sc.steps
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tasks.load_engine"],
            input=plan_json(plan),
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GeneratorFailed(
            f"the load generator of share {plan.share} did not finish within {limit:.0f} s"
        ) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise GeneratorFailed(
            f"the load generator of share {plan.share} exited {done.returncode}: {last}"
        )
    return ShareResult.model_validate_json(done.stdout)


@task(name="generate_load", cache_policy=NO_CACHE)
def generate_load(plan: LoadPlan, in_process: bool = False) -> ShareResult:
    """One share of a load test against the target. No retries: a load test's errors are its
    findings, recorded by cause."""
    return run_share(plan) if in_process else run_share_in_process(plan)


def intended_times(plan: LoadPlan, result: ShareResult) -> np.ndarray:
    """The intended start (the generator's monotonic clock) of each arrival of the whole test,
    indexed by request number: what a target's request log is matched against."""
    return arrival_times(Shape.of(plan.test)) + result.started_monotonic
