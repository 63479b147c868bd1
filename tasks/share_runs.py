"""Share runs: one piece of a parent run's work started as a run of a deployment, so that any
worker of the pool can take it (a spread fleet run, tasks/fleet_runs.py; a load test in shares,
tasks/load_shares.py). The parent starts it, reads its state, and takes it back when no worker
has taken it in time.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, cast
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_WORKER_QUERY_SECONDS
from prefect.states import Cancelled, Cancelling, Pending, State


def start_share_run(deployment: UUID | str, parameters: dict[str, Any], name: str, tag: str) -> str:
    """A run of `deployment` for any worker of its pool, a subflow of the current run in the
    UI, tagged `tag`; its id. Returns at once (the run is Scheduled)."""
    run = cast(
        "FlowRun",
        run_deployment(
            name=deployment,
            parameters=parameters,
            flow_run_name=name,
            tags=[tag],
            timeout=0,
            as_subflow=True,
        ),
    )
    return str(run.id)


def share_run_states(run_ids: list[str]) -> dict[str, State[Any]]:
    """The current state of each run (one request)."""
    if not run_ids:
        return {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in run_ids]))
        )
    return {str(r.id): r.state for r in runs if r.state is not None}


def claim_window_s() -> float:
    """How long a started share is left to the pool's workers before its parent may take it
    back: two of their polls and a second (PREFECT_WORKER_QUERY_SECONDS, which a process
    worker passes on to the runs it starts: 10 s by default, so 21 s). Without it, a parent
    whose own share took less than one poll took back every share, and the spread happened
    only when a worker's poll fell in that moment."""
    return 2.0 * float(PREFECT_WORKER_QUERY_SECONDS.value()) + 1.0


def take_back(run_id: str, message: str) -> bool:
    """Claim a share run no worker has taken (Pending, which the server grants to one
    proposer only, as it does between two workers), then cancel it with `message`; False when
    a worker got it first.

    A claim the server refuses while the run stays Scheduled (AwaitingConcurrencySlot: its
    deployment's concurrency limit is full, perhaps with the parent's own run) means no worker
    can start it either: the run is cancelled all the same (forced, as the claim cannot be
    granted). Only a slot freed in the moment between the refusal and the cancel could let a
    worker start it first."""
    with get_client(sync_client=True) as client:
        claimed: OrchestrationResult[Any] = client.set_flow_run_state(run_id, Pending())
        if claimed.status != SetStateStatus.ACCEPT:
            now = client.read_flow_run(UUID(run_id)).state
            if now is None or not now.is_scheduled():  # a worker has it
                return False
        client.set_flow_run_state(run_id, Cancelled(message=message), force=True)
    return True


def give_up(run_id: str, message: str) -> None:
    """Cancel a share run its parent no longer waits for (Cancelling, so the worker running
    it stops it; the server makes a run no worker started Cancelled at once); a run that no
    longer exists is left so."""
    with get_client(sync_client=True) as client, suppress(ObjectNotFound):
        client.set_flow_run_state(run_id, Cancelling(message=message))
