"""acknowledge_alert: stop the escalation of the incident holding an alert (CLI
`perfops sla ack ALERT [--at TIME]`, or a flow run through the API with the alert key). Posts
an "acknowledged" reply in each of the incident's Slack threads and records it in Redis; the
ack is also in the reply's metadata, so it survives a Redis that lost its data. A reply Slack
refused fails the run (the acknowledgement itself holds); running it again posts it. A run that
could not take the SLA lock (an evaluation holds it) or reach Redis acknowledges nothing: its
artifact says so and it ends Failed; running it again acknowledges.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from pydantic import BaseModel

from blocks.resolve import check_block_names, resolve_redis, resolve_slack
from decisions.slo_definitions import load_definitions
from perfops.errors import ConfigurationError, ConnectionFailed, LockBusy
from perfops.redaction import install_log_redaction
from tasks.records import emit, end_run, publish_table
from tasks.sla_delivery import SlaStore, acknowledge_alert_in_store
from tasks.slack.threads import messenger_for

ARTIFACT_KEY = "perfops-sla-ack"


class AckResult(BaseModel):
    alert: str
    incident: str
    group: str
    acked_by: str
    acked_at: datetime
    newly_acked: bool
    level: int
    alerts: list[str]
    replies: list[str]  # where the thread says so: "<channel> ts=<ts>" or "<channel>: why not"
    replies_failed: int = 0


@flow(
    name="acknowledge_alert",
    description="Acknowledge an SLA alert: its incident stops escalating and reminding; the "
    "Slack thread says who acknowledged it.",
    log_prints=False,
)
def acknowledge_alert(
    alert: str,
    by: str = "perfops",
    definitions_path: str | None = None,
    redis_block: str | None = None,
    slack_block: str | None = None,
    at: datetime | None = None,
) -> AckResult:
    """Acknowledge the open incident holding `alert` (an alert key such as
    `availability/page-fast`, a group, or an incident id); `by` names who did, `at` when
    (default now; a replay passes the replayed minute)."""
    from flows.evaluate_slos import DEFAULT_DEFINITIONS

    install_log_redaction()
    check_block_names(redis_block=redis_block, slack_block=slack_block)
    definitions = load_definitions(definitions_path or DEFAULT_DEFINITIONS)
    store = SlaStore(resolve_redis(redis_block).value)
    slack = resolve_slack(slack_block)
    now = (at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    try:
        done = acknowledge_alert_in_store(
            store, messenger_for(slack.value), definitions, alert, by, now
        )
    except LookupError as exc:
        raise ConfigurationError(str(exc).strip("'\"")) from None
    except (LockBusy, ConnectionFailed) as exc:  # nothing changed: say so, then fail
        why = (
            "an SLA evaluation holds the SLA lock"
            if isinstance(exc, LockBusy)
            else str(exc).removesuffix(".")
        ) + "; nothing was acknowledged: run it again"
        publish_table(
            ARTIFACT_KEY,
            [{"alert": alert, "result": "not acknowledged", "reason": why}],
            f"Acknowledgement of {alert}: not done",
        )
        raise type(exc)(why) from exc
    state, new = done.state, done.newly_acked
    assert state.acked_at is not None and state.acked_by is not None
    result = AckResult(
        alert=alert,
        incident=state.incident,
        group=state.group,
        acked_by=state.acked_by,
        acked_at=state.acked_at,
        newly_acked=new,
        level=state.level,
        alerts=sorted(state.alerts),
        replies=[
            f"{r.channel} ts={r.ts}" if r.outcome != "failed" else f"{r.channel}: {r.note}"
            for r in done.replies
        ],
        replies_failed=len(done.failed_replies),
    )
    get_run_logger().info(
        "%s %s by %s at level %d",
        state.incident,
        "acknowledged" if new else "was already acknowledged",
        state.acked_by,
        state.level,
    )
    publish_table(
        ARTIFACT_KEY,
        [
            {
                "alert": alert,
                "result": "acknowledged" if new else "already acknowledged",
                "reason": f"escalation of {state.incident} stopped at level {state.level}",
            }
            | result.model_dump(
                mode="json", exclude={"alert", "newly_acked", "replies", "replies_failed"}
            )
            | {"replies": "; ".join(result.replies)}
        ],
        f"Acknowledgement of {alert}: escalation of {state.incident} stopped",
    )
    if new:
        emit(
            "perfops.sla.acknowledged",
            "perfops.sla",
            {"alert": alert, "incident": state.incident, "by": by, "level": state.level},
        )
    failed = done.failed_replies
    return end_run(
        result,
        f"{state.incident} acknowledged (escalation stopped), but {len(failed)} of "
        f"{len(done.replies)} thread replies were not posted: {failed[0].note}; run it again "
        "to post them"
        if failed
        else None,
        note=None if new else f"nothing to do: {state.incident} was already acknowledged",
    )
