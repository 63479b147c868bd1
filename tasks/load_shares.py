"""A load test in shares (docs/load-tests.md "Shares"): every share asks rate/shares and begins
at one wall-clock time; the parent merges their HDR histograms exactly.

- Here: each share a `run_load_share` subflow in the parent's process, started from a thread,
  each driving its own generator process (N cores of one machine).
- Spread (`spread=True` and a `run_load_share` deployment on the server): share 1 runs in the
  parent's run, shares 2..N as runs of that deployment, which any worker of its pool takes
  (tasks.share_runs, as a spread fleet run does). Each share publishes its result as the
  artifact `perfops-load-<test>-share` on its own run; the parent reads it back. A share no
  worker has taken `TAKE_BACK_BEFORE_S` before the shared start is taken back (claimed,
  cancelled saying why) and run in the parent's run, still at the shared start.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run as runtime_flow_run

from decisions.load_results import ShareResult
from decisions.load_shares import Where
from perfops.errors import PerfopsError
from tasks.share_runs import share_run_states, start_share_run, take_back

SHARE_DEPLOYMENT = "run_load_share/run_load_share"
SHARE_TAG = "perfops-load-share"
START_HERE_S = 8.0  # shares in this process begin together this long after the parent asks
# Spread shares begin together this long after the parent asks: a worker polls (10 s by
# default), starts a process and imports the flow (2-10 s on a busy 2-core machine)
START_SPREAD_S = 40.0
# A spread share no worker has taken this long before the start is run here instead
TAKE_BACK_BEFORE_S = 12.0
POLL_S = 1.0
FINISH_GRACE_S = 180.0  # a share not final this long after the test's end is given up
TAKEN_BACK = "no worker took this share in time: its parent run sent it"


def share_key(test: str) -> str:
    return f"perfops-load-{test}-share"


def share_deployment() -> UUID | None:
    """The `run_load_share` deployment's id, None when the server has none (a laptop)."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(SHARE_DEPLOYMENT).id
        except ObjectNotFound:
            return None


def signed(result: ShareResult) -> ShareResult:
    """The result marked with where it ran: this host and process, this flow run."""
    run_id = runtime_flow_run.get_id()
    return result.model_copy(
        update={
            "ran_on": f"{socket.gethostname()}:{os.getpid()}",
            "flow_run_id": str(run_id) if run_id else None,
        }
    )


def publish_share_result(test: str, result: ShareResult) -> None:
    """The share's result as the artifact `perfops-load-<test>-share` of its run (type
    `result`: the UI shows its fields; `result` holds the histograms the parent merges).
    No secret is in it: the plan's auth header never reaches the result."""
    data = {
        "share": f"{result.share + 1} of {result.shares}",
        "ran_on": result.ran_on,
        "start_late_s": result.start_late_s,
        "asked": result.asked,
        "sent": result.sent,
        "aborted": result.aborted or "",
        "result": result.model_dump_json(),
    }
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(
                key=share_key(test),
                type="result",
                description=f"Share {result.share + 1} of {result.shares} of load test {test}: "
                "its histograms, merged by the parent run_load_test.",
                data=data,
                flow_run_id=runtime_flow_run.get_id(),
            )
        )


def read_share_result(test: str, run_id: str) -> ShareResult | None:
    """The result a share run published, None when it left none."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[share_key(test)]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]),
            ),
            limit=1,
        )
    if not found:
        return None
    data: Any = found[0].data
    data = json.loads(data) if isinstance(data, str) else data
    return ShareResult.model_validate_json(data["result"])


def run_shares(
    test: str,
    shares: int,
    seconds: float,
    run_here: Callable[[int, float], ShareResult],
    parameters: dict[str, Any],
    deployment: UUID | None,
) -> tuple[list[ShareResult], dict[int, Where]]:
    """Every share's result (by share) and where each ran. `run_here(k, start_at)` runs share
    k in this run; with a `deployment`, shares 2..N are its runs (`parameters` plus share,
    shares and the start). A share that failed or left no result fails the whole test."""
    logger = get_run_logger()
    start_at = time.time() + (START_SPREAD_S if deployment else START_HERE_S)
    where: dict[int, Where] = {}
    remote: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=shares, thread_name_prefix="perfops-share") as pool:

        def here(k: int) -> Future[ShareResult]:
            return pool.submit(copy_context().run, run_here, k, start_at)

        local = {0: here(0)}
        for k in range(1, shares):
            if deployment is None:
                local[k] = here(k)
                continue
            where[k] = "worker"
            remote[k] = start_share_run(
                deployment,
                {**parameters, "share": k, "shares": shares, "start_at_unix": start_at},
                f"run_load_share-{test}-{k + 1}-of-{shares}",
                SHARE_TAG,
            )
        if remote:
            logger.info(
                "shares 2..%d started for any worker of the pool, all beginning in %.0f s",
                shares,
                start_at - time.time(),
            )
        results: dict[int, ShareResult] = {}
        failures: list[str] = []
        deadline = start_at + seconds + FINISH_GRACE_S
        while remote:
            states = share_run_states(list(remote.values()))
            for k, run_id in list(remote.items()):
                state = states.get(run_id)
                if state is not None and state.is_final():
                    del remote[k]
                    got = read_share_result(test, run_id) if state.is_completed() else None
                    if got is None:
                        failures.append(
                            f"share {k + 1} (run {run_id}) ended {state.name} with no result"
                            + (f": {state.message}" if state.message else "")
                        )
                    else:
                        results[k] = got
                elif (
                    state is not None
                    and state.is_scheduled()
                    and time.time() >= start_at - TAKE_BACK_BEFORE_S
                    and take_back(run_id, TAKEN_BACK)
                ):
                    del remote[k]
                    logger.warning("no worker took share %d in time: sending it here", k + 1)
                    where[k] = "taken back"
                    local[k] = here(k)
                elif time.time() > deadline:
                    del remote[k]
                    failures.append(f"share {k + 1} (run {run_id}) did not finish in time")
            if remote:
                time.sleep(POLL_S)
        for k, future in local.items():
            try:
                results[k] = future.result()
            except Exception as exc:  # noqa: BLE001 - reported with the others
                failures.append(f"share {k + 1} failed: {exc}")
    if failures:
        raise PerfopsError(f"load test {test}: " + "; ".join(failures))
    return [results[k] for k in range(shares)], where
