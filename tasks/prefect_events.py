"""Prefect API tasks: the `perfops.*` events of a time range (POST /api/events/filter, every
page), and the latest version of a keyed table artifact created in a time range
(POST /api/artifacts/filter).

This is what perfops' flows recorded (tasks/records); the weekly report reads it instead of
recomputing what they did.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

from decisions.reporting import RecordedEvent
from perfops.errors import ConnectionFailed
from tasks.records import EVENT_PREFIX
from tasks.transient_errors import RETRY_DEFAULTS

PAGE_SIZE = 50  # the most the events API returns per page
MAX_EVENTS = 20_000  # a week of perfops events is hundreds; stop well before memory matters


@task(name="read_perfops_events", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def read_perfops_events(start: datetime, end: datetime) -> list[RecordedEvent]:
    """Every `perfops.*` event that occurred in [start, end), oldest first."""
    event_filter = EventFilter(
        event=EventNameFilter(prefix=[EVENT_PREFIX]),
        occurred=EventOccurredFilter(since=start, until=end),
        order="ASC",
    )
    events: list[RecordedEvent] = []
    try:
        with get_client(sync_client=True) as client:
            page = client.read_events(event_filter, limit=PAGE_SIZE)
            while True:
                events += [
                    RecordedEvent(
                        event=e.event,
                        occurred=datetime.fromtimestamp(e.occurred.timestamp(), UTC),
                        resource=e.resource.id,
                        payload=dict(e.payload),
                    )
                    for e in page.events
                    if e.occurred < end
                ]
                if page.next_page is None or len(events) >= MAX_EVENTS:
                    break
                page = client.read_events_page(str(page.next_page))
    except httpx.TransportError as exc:
        raise ConnectionFailed(f"cannot read perfops events from the Prefect API: {exc}") from exc
    return events


ARTIFACT_PAGE = 50


@task(name="read_table_artifact", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def read_table_artifact(
    key: str, start: datetime, end: datetime
) -> tuple[datetime, list[dict[str, Any]]] | None:
    """The rows of the newest version of table artifact `key` created in [start, end), with its
    creation time; None when no run wrote it in that range."""
    artifact_filter = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    offset = 0
    try:
        with get_client(sync_client=True) as client:
            while True:
                page = client.read_artifacts(
                    artifact_filter=artifact_filter,
                    sort=ArtifactSort.CREATED_DESC,
                    limit=ARTIFACT_PAGE,
                    offset=offset,
                )
                for artifact in page:
                    created = artifact.created
                    if created is None:
                        continue
                    when = datetime.fromtimestamp(created.timestamp(), UTC)
                    if when >= end:
                        continue
                    if when < start:
                        return None
                    data = artifact.data
                    rows = json.loads(data) if isinstance(data, str) else data
                    return when, rows if isinstance(rows, list) else []
                if len(page) < ARTIFACT_PAGE:
                    return None
                offset += ARTIFACT_PAGE
    except httpx.TransportError as exc:
        raise ConnectionFailed(f"cannot read artifact {key} from the Prefect API: {exc}") from exc
