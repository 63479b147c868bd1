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

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from decisions.load_results import ShareResult
from decisions.load_schedule import Shape, arrival_times
from perfops.errors import PerfopsError
from tasks.load_engine import LoadPlan, plan_json, run_share

__all__ = ["GeneratorFailed", "LoadPlan", "generate_load", "run_share", "run_share_in_process"]


class GeneratorFailed(PerfopsError):
    """The generator process could not run the share (not: the target answered badly)."""


def run_share_in_process(plan: LoadPlan, timeout_s: float | None = None) -> ShareResult:
    """Run one share in a child Python process (a core of its own) and return its result."""
    limit = timeout_s or plan.test.seconds + 60 + max(
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
