"""apply_scaling_schedule: write the business-hours / off-hours schedule as recurring Auto
Scaling scheduled actions, idempotently (a rerun changes nothing). CLI
`perfops scaling apply-schedule`.

dry_run (the default) lists the actions that differ from the group's and changes nothing.
Records: a table artifact of the actions and the event `perfops.scaling.scheduled`
{group, actions, changed, dry_run}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from decisions.scaling_policy import Schedule, schedule_actions
from perfops.redaction import install_log_redaction
from tasks.autoscaling import (
    AutoScalingTarget,
    ScheduledAction,
    client_for,
    describe_group,
    load_credentials,
    put_schedule_task,
    scheduled_actions,
)
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-scaling-schedule"
EVENT_SCHEDULED = "perfops.scaling.scheduled"


@dataclass
class ScheduleRun:
    group: str
    dry_run: bool
    actions: list[dict[str, Any]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        if not self.changed:
            return f"{self.group}: schedule already in place ({len(self.actions)} actions)"
        return f"{self.group}: {verb} {len(self.changed)} of {len(self.actions)} scheduled actions"


@flow(
    name="apply_scaling_schedule",
    description="Write the business/off-hours schedule as Auto Scaling scheduled actions "
    "(idempotent; dry_run lists the differences only).",
    log_prints=False,
)
def apply_scaling_schedule(
    aws: AutoScalingTarget,
    schedule: Schedule = Schedule(),  # noqa: B008 - immutable default
    dry_run: bool = True,
) -> ScheduleRun:
    """Apply `schedule` to the group `aws.group`.

    Args:
        aws: the Auto Scaling group (name, region, endpoint, AwsCredentials block name).
        schedule: windows (default Mon-Fri 09:00-17:00 UTC, min 4) and off-hours bounds.
        dry_run: list the actions that would change; write nothing.
    """
    install_log_redaction()
    logger = get_run_logger()
    client = client_for(aws, load_credentials(aws))
    actions = [ScheduledAction(*a) for a in schedule_actions(schedule)]
    describe_group(client, aws.group)
    if dry_run:
        existing = scheduled_actions(client, aws.group)
        changed = [a.name for a in actions if existing.get(a.name) != a]
    else:
        changed = put_schedule_task(client, aws.group, actions)
    run = ScheduleRun(aws.group, dry_run, [asdict(a) for a in actions], changed)
    logger.info("%s", run.summary)
    publish_table(
        ARTIFACT_KEY,
        [
            {
                "name": a["name"],
                "result": ("would write" if dry_run else "written")
                if a["name"] in changed
                else "unchanged",
                "reason": "missing or different on the group"
                if a["name"] in changed
                else "already on the group",
            }
            | a
            for a in run.actions
        ],
        run.summary,
    )
    emit(
        EVENT_SCHEDULED,
        f"perfops.scaling.group.{aws.group}",
        {
            "group": aws.group,
            "actions": [a.name for a in actions],
            "changed": changed,
            "dry_run": dry_run,
        },
    )
    return end_run(run, note=None if changed else f"nothing to do: {run.summary}")
