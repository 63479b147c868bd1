"""Prefect API tasks: the `perfops.*` events of a time range the weekly report reads (POST
/api/events/filter, one query per section, newest first, paged), and the latest version of a
keyed table artifact created in a time range (POST /api/artifacts/filter).

This is what perfops' flows recorded (tasks/records); the weekly report reads it instead of
recomputing what they did.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

from decisions.reporting import (
    MAX_EVENTS_PER_QUERY,
    EventQuery,
    EventsRead,
    PartialRead,
    RecordedEvent,
    event_queries,
)
from perfops.errors import ConnectionFailed
from tasks.transient_errors import RETRY_DEFAULTS

PAGE_SIZE = 50  # the most the events API returns per page


@task(name="read_perfops_events", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def read_perfops_events(start: datetime, end: datetime) -> EventsRead:
    """The `perfops.*` events the report reads that occurred in [start, end), oldest first: one
    query per section (decisions.reporting.event_queries), each newest first up to its cap;
    the queries that hit their cap come back in `partial` (read, and how many matched)."""
    events: list[RecordedEvent] = []
    partial: list[PartialRead] = []
    try:
        with get_client(sync_client=True) as client:
            for query in event_queries():
                cap = 1 if query.latest_only else MAX_EVENTS_PER_QUERY
                got, total = _read(client, query, start, end, cap)
                events += got
                if total > len(got) and not query.latest_only:
                    partial.append(
                        PartialRead(section=query.section, what=query.label, read=len(got),
                                    total=total, cap=cap)
                    )  # fmt: skip
    except httpx.TransportError as exc:
        raise ConnectionFailed(f"cannot read perfops events from the Prefect API: {exc}") from exc
    return EventsRead(events=sorted(events, key=lambda e: e.occurred), partial=partial)


def _read(
    client: Any, query: EventQuery, start: datetime, end: datetime, cap: int
) -> tuple[list[RecordedEvent], int]:
    """The newest `cap` events of one query and how many match in all."""
    names = EventNameFilter(
        prefix=query.prefixes or None,
        name=query.names or None,
        exclude_name=query.exclude_names or None,
    )
    # `until` is inclusive: the last microsecond before `end`, so the total counts [start, end)
    until = end - timedelta(microseconds=1)
    event_filter = EventFilter(
        event=names, occurred=EventOccurredFilter(since=start, until=until), order="DESC"
    )
    page = client.read_events(event_filter, limit=min(PAGE_SIZE, cap))
    total = int(page.total)
    got: list[RecordedEvent] = []
    while True:
        got += [
            RecordedEvent(
                event=e.event,
                occurred=datetime.fromtimestamp(e.occurred.timestamp(), UTC),
                resource=e.resource.id,
                payload=dict(e.payload),
            )
            for e in page.events
            if e.occurred < end
        ]
        if page.next_page is None or len(got) >= cap:
            return got[:cap], total
        page = client.read_events_page(str(page.next_page))


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
