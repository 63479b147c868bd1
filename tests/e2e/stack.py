"""The Prefect stack the end-to-end tests run against, as an operator runs it: `prefect server
start` on its own PostgreSQL database, a process work pool, workers started and stopped by PID,
runs created through the REST API."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "perfops-process"


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> None:
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


def spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """`prefect ARGS` in the background, its output in `log` (stop it with `stop`)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "prefect"), *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def prefect(env: dict[str, str], *args: str) -> str:
    """`prefect ARGS` from the checkout; its stdout (fails the test when it fails)."""
    return command("prefect", env, *args).stdout


@contextmanager
def worker(
    env: dict[str, str],
    workdir: Path,
    pool: str = POOL,
    name: str | None = None,
    limit: int | None = None,
) -> Iterator[Path]:
    """A process worker on `pool`, polling every second; yields its log file. `name` names the
    worker (its log is then worker-<name>.log); `limit` caps the runs it works on at once."""
    worker_env = {
        **env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    log = workdir / f"worker-{name or pool}.log"
    args = ["worker", "start", "--pool", pool]
    args += ["--name", name] if name else []
    args += ["--limit", str(limit)] if limit else []
    process = spawn(args, worker_env, log, workdir)
    try:
        yield log
    finally:
        stop(process)


def run(
    http: httpx.Client, deployment: str, body: dict[str, object], timeout_s: float = 150
) -> tuple[str, dict[str, str]]:
    """Create a run of `deployment` (flow/deployment name) through the REST API and wait for its
    final state: (run id, state)."""
    found = http.get(f"/deployments/name/{deployment}")
    assert found.status_code == 200, f"{deployment} is not deployed"
    created = http.post(f"/deployments/{found.json()['id']}/create_flow_run", json=body)
    assert created.status_code == 201, created.text
    run_id = str(created.json()["id"])
    return run_id, wait_final(http, run_id, timeout_s)


def artifact_keys(http: httpx.Client, run_id: str) -> list[str]:
    found = http.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return [a["key"] for a in found.json()]


def perfops(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`perfops ARGS` as an operator types it, from the checkout."""
    return command("perfops", env, *args, check=check)


def command(
    program: str, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The virtualenv's `program ARGS` run from the checkout, output captured; with `check`, a
    non-zero exit fails the test showing both outputs."""
    result = subprocess.run(
        [str(BIN / program), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, (
            f"{program} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def run_ids(http: httpx.Client, deployment_id: str) -> set[str]:
    """The ids of the deployment's flow runs so far."""
    runs_filter = {"deployments": {"id": {"any_": [deployment_id]}}}
    return {str(r["id"]) for r in http.post("/flow_runs/filter", json=runs_filter).json()}


def wait_for_runs(
    http: httpx.Client,
    deployment_id: str,
    count: int,
    timeout_s: float = 60,
    besides: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, object]]:
    """The deployment's flow runs other than `besides` (ids of earlier ones), once there are at
    least `count` (or when time is up)."""
    runs_filter = {"deployments": {"id": {"any_": [deployment_id]}}}
    deadline = time.monotonic() + timeout_s
    runs: list[dict[str, object]] = []
    while True:
        found = http.post("/flow_runs/filter", json=runs_filter).json()
        runs = [r for r in found if str(r["id"]) not in besides]
        if len(runs) >= count or time.monotonic() >= deadline:
            return runs
        time.sleep(1)


def wait_final(http: httpx.Client, run_id: str, timeout_s: float = 150) -> dict[str, str]:
    """The run's state once final (or the last seen when time is up)."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, str] = {}
    while time.monotonic() < deadline:
        state = http.get(f"/flow_runs/{run_id}").json()["state"]
        if state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            break
        time.sleep(1)
    return state


def rotation_policy(table: str, archive: str) -> dict[str, object]:
    """The monthly, 12 months' retention, archive-then-drop policy for `partitioned_table`."""
    return {
        "table": table,
        "interval": "month",
        "premake": 1,
        "retention": "12 months",
        "expired_action": "archive_then_drop",
        "archive": archive,
    }
