"""What a run left behind, read back from the Prefect API: the newest artifact of a key and the
events of a name (both reach the server asynchronously, so the readers wait a little)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventRelatedFilter,
)
from prefect.events.schemas.events import ReceivedEvent

from decisions.fleet import FleetReport
from perfops.errors import report_of

T = TypeVar("T")


def latest_artifact(key: str) -> Any:
    """The data of the newest artifact called `key`, as stored (a table's JSON text, a
    markdown artifact's text)."""
    with get_client(sync_client=True) as client:
        latest = [a for a in client.read_latest_artifacts() if a.key == key]
    assert latest, f"no {key} artifact"
    return latest[0].data


def artifact_rows(key: str) -> list[dict[str, Any]]:
    """The rows of the newest table artifact called `key`."""
    data = latest_artifact(key)
    return json.loads(data) if isinstance(data, str) else data


def wait_for_events(
    name: str,
    *,
    prefix: bool = False,
    at_least: int = 1,
    since: datetime | None = None,
    until: datetime | None = None,
    flow_run_id: UUID | str | None = None,
    where: Callable[[ReceivedEvent], bool] | None = None,
    timeout_s: float = 20.0,
) -> list[ReceivedEvent]:
    """At least `at_least` events called `name` (every name starting with it, with `prefix`;
    occurred between `since` and `until`, related to one flow run, and for which `where`
    holds), newest first; fails the test after `timeout_s`."""
    names = EventNameFilter(prefix=[name]) if prefix else EventNameFilter(name=[name])
    only = EventFilter(event=names)
    if since is not None or until is not None:
        default = EventOccurredFilter()
        only.occurred = EventOccurredFilter(
            since=since or default.since, until=until or default.until
        )
    if flow_run_id is not None:
        only.related = EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"])
    deadline = time.monotonic() + timeout_s
    found: list[ReceivedEvent] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(only, limit=50)
            found = sorted(
                (e for e in page.events if where is None or where(e)),
                key=lambda e: e.occurred,
                reverse=True,
            )
            if len(found) >= at_least or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    assert len(found) >= at_least, f"{len(found)} {name} event(s) within {timeout_s} s"
    return found


def wait_for_event(name: str, **kwargs: Any) -> ReceivedEvent:
    """The newest event called `name` that matches (see `wait_for_events`)."""
    return wait_for_events(name, **kwargs)[0]


def failed_run(state: Any) -> tuple[Any, str]:
    """A flow run that must have ended Failed (called with `return_state=True`): its result,
    the flow's report as the CLI gets it, and its state message saying what failed."""
    assert state.is_failed(), state
    return report_of(state.result(raise_on_failure=False)), state.message or ""


def superuser_fix(owner: str, role: str) -> str:
    """The privilege message's fix for tables owned by a superuser (the tests' tables are owned
    by the admin role they connect as): never "grant <superuser> to ..."."""
    return (
        f"tables owned by the superuser {owner}: give them an owner role that {role} may join "
        f"(alter table ... owner to app_owner; grant app_owner to {role}), never a superuser "
        "role (or run perfops as the owner)"
    )


def one_target(flow: Callable[..., T | FleetReport], /, **parameters: Any) -> T:
    """Call a flow that runs for one database or a fleet, for one database: its report (a
    fleet parent's FleetReport fails the test)."""
    report = flow(**parameters)
    assert not isinstance(report, FleetReport), report
    return report
