"""Share runs against the Prefect test harness: a share its deployment's concurrency limit keeps
waiting (its parent holds the only slot) is taken back, not waited on forever; one a worker
has is left to it; the parent reads the deployment's limit to spread within it."""

from __future__ import annotations

import uuid
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Pending, Running

from decisions.fleet import AWAITING_SLOT
from tasks.fleet_runs import deployment_limit
from tasks.share_runs import take_back

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _deployment(limit: int | None) -> UUID:
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(f"share-runs-{uuid.uuid4().hex[:6]}")
        return client.create_deployment(flow_id, "test", concurrency_limit=limit)


def _run(deployment: UUID) -> str:
    with get_client(sync_client=True) as client:
        return str(client.create_flow_run_from_deployment(deployment).id)


def test_a_share_waiting_for_the_slot_its_parent_holds_is_taken_back() -> None:
    deployment = _deployment(1)
    with get_client(sync_client=True) as client:
        assert deployment_limit(client.read_deployment(deployment)) == (1, False)
        parent = _run(deployment)
        assert client.set_flow_run_state(parent, Pending()).status.value == "ACCEPT"
        client.set_flow_run_state(parent, Running())
        share = _run(deployment)
        # a worker's claim: refused, the run waits for the slot the parent holds
        client.set_flow_run_state(share, Pending())
        state = client.read_flow_run(UUID(share)).state
        assert state is not None and state.name == AWAITING_SLOT

        assert take_back(share, "taken back") is True  # was False: the parent polled forever
        state = client.read_flow_run(UUID(share)).state
        assert state is not None and state.is_cancelled() and state.message == "taken back"


def test_a_share_a_worker_has_is_not_taken_back() -> None:
    deployment = _deployment(None)
    with get_client(sync_client=True) as client:
        assert deployment_limit(client.read_deployment(deployment)) == (None, False)
        share = _run(deployment)
        client.set_flow_run_state(share, Pending())  # a worker claimed it
        assert take_back(share, "taken back") is False
        state = client.read_flow_run(UUID(share)).state
        assert state is not None and state.is_pending()
