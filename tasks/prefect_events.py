"""Prefect API task: the `perfops.*` events of a time range (POST /api/events/filter, every page).

This is what perfops' flows recorded (tasks/records.emit); the weekly report reads it instead of
recomputing what they did.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

from perfops.errors import ConnectionFailed
from tasks.records import EVENT_PREFIX
from tasks.reporting import RecordedEvent
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
