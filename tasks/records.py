"""Run records: the Prefect artifact a person reads, the event automations react to, and the
run's final state.

Every flow ends by calling `publish_table` (or `publish_markdown`) and `emit` so the UI, the
weekly report and automations read the same record, then returns through `end_run`, so a run
whose work did not fully succeed ends Failed with a message saying what failed. Event names are
`perfops.<area>.<what>`.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from prefect.states import Completed, Failed

from perfops.errors import RunFailed
from perfops.redaction import redact

EVENT_PREFIX = "perfops."
R = TypeVar("R")


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


def end_run(
    result: R,
    failed: str | None = None,
    *,
    partial: bool = False,
    allow_partial: bool = False,
    note: str | None = None,
    error: BaseException | None = None,
) -> R:
    """What a flow returns last, once its artifact and events are written: the run's final state
    tells the truth.

    - `failed` (one line: what did not succeed and why): the run ends **Failed** with that
      message. Its data is `RunFailed(message, report)` (Prefect wants an exception there; its
      engine logged a TypeError for any other data), so `state.result(raise_on_failure=False)`
      gives it and `perfops.errors.report_of` the flow's report (the CLI prints it), or
      `error` when given (a direct call then raises it). When only part of
      the work failed (`partial`) and the operator set `allow_partial`, it ends Completed, the
      message still saying what failed.
    - `note` (a run with nothing to do says so, and why): Completed with that message.
    - neither: `result` as it is (Completed).

    Typed as the flow's own result: Prefect takes the returned state as the run's final state and
    gives callers the result (or, for Failed, raises: call with `return_state=True` to keep it).
    """
    if failed is not None:
        message = redact(failed)
        if partial and allow_partial:
            return cast(R, Completed(message=f"{message} (allowed: allow_partial)", data=result))
        get_run_logger().error("run failed: %s", message)
        data = error if error is not None else RunFailed(message, result)
        return cast(R, Failed(message=message, data=data))
    if note is not None:
        return cast(R, Completed(message=redact(note), data=result))
    return result
