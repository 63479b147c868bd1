"""Run records: the Prefect artifact a person reads and the event automations react to.

Every flow ends by calling `publish_table` (or `publish_markdown`) and `emit` so the UI, the
weekly report and automations read the same record. Event names are `perfops.<area>.<what>`.
"""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from perfops.redaction import redact

EVENT_PREFIX = "perfops."


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A keyed table artifact; every cell passes through redaction."""
    clean = [{k: redact(str(v)) if isinstance(v, str) else v for k, v in r.items()} for r in rows]
    create_table_artifact(table=clean, key=key, description=redact(description))


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """A keyed markdown artifact (redacted)."""
    create_markdown_artifact(markdown=redact(markdown), key=key, description=redact(description))


def emit(event: str, resource_id: str, payload: dict[str, Any], **labels: str) -> None:
    """Emit `perfops.<area>.<what>` about `resource_id` with a JSON payload."""
    if not event.startswith(EVENT_PREFIX):
        raise ValueError(f"perfops events are named perfops.<area>.<what>, got {event!r}")
    resource = {"prefect.resource.id": resource_id, **labels}
    emit_event(event=event, resource=resource, payload=payload)
