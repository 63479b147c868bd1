"""apply_scaling_schedule: write the business-hours / off-hours schedule as recurring Auto
Scaling scheduled actions, idempotently (a rerun changes nothing). CLI
`perfops scaling apply-schedule`.

The actions set the group's min and max only, never its desired capacity (AWS clamps the
desired into the new bounds; scale-in stays with perfops' guarded decisions); an action found
with a desired capacity (an older perfops wrote them so) is rewritten without it.
perfops' actions (`perfops-*`) of windows the schedule no longer has are deleted, after the
new ones are written. dry_run (the default) lists the actions that differ from the group's
(and those it would delete) and changes nothing. Records: a table artifact of the actions and
the event `perfops.scaling.scheduled` {group, actions, changed, deleted, dry_run}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger

from decisions.fleet import AUTOSCALING, FleetReport, keyed, target_labels
from decisions.scaling_policy import Schedule, loosened_bounds, schedule_actions
from perfops.errors import ConfigurationError
from perfops.redaction import install_log_redaction
from tasks.autoscaling import (
    ACTION_PREFIX,
    AutoScalingTarget,
    ScheduledAction,
    action_change,
    client_for,
    delete_actions_task,
    describe_group,
    group_target,
    load_credentials,
    put_schedule_task,
    scheduled_actions,
    stale_actions,
)
from tasks.fleet_runs import run_over_fleet, verified_fleet_target
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-scaling-schedule"
EVENT_SCHEDULED = "perfops.scaling.scheduled"
EVENT_FLEET = "perfops.scaling.fleet_scheduled"


@dataclass
class ScheduleRun:
    group: str
    dry_run: bool
    actions: list[dict[str, Any]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # perfops' actions no window has now
    # a group perfops' actions did not manage yet: how the schedule loosens its own bounds
    loosened: list[str] = field(default_factory=list)
    bounds: tuple[int, int] | None = None  # the group's MinSize, MaxSize as found

    @property
    def summary(self) -> str:
        if not self.changed and not self.deleted:
            return f"{self.group}: schedule already in place ({len(self.actions)} actions)"
        if self.loosened and self.bounds is not None:
            return f"{self._done()}; {self._loosened()}"
        return self._done()

    def _loosened(self) -> str:
        low, high = self.bounds or (0, 0)
        verb = "would loosen" if self.dry_run else "loosened"
        return f"the schedule {verb} the group's own bounds [{low}, {high}]: it " + " and ".join(
            self.loosened
        )

    def _done(self) -> str:
        done = []
        if self.changed:
            verb = "would write" if self.dry_run else "wrote"
            done.append(f"{verb} {len(self.changed)} of {len(self.actions)} scheduled actions")
        if self.deleted:
            verb = "would delete" if self.dry_run else "deleted"
            done.append(f"{verb} {len(self.deleted)} no longer in the schedule")
        return f"{self.group}: {'; '.join(done)}"


@flow(
    name="apply_scaling_schedule",
    description="Write the business/off-hours schedule as Auto Scaling scheduled actions "
    "(idempotent; dry_run lists the differences only).",
    log_prints=False,
)
def apply_scaling_schedule(
    aws: AutoScalingTarget | None = None,
    schedule: Schedule = Schedule(),  # noqa: B008 - immutable default
    dry_run: bool = True,
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> ScheduleRun | FleetReport:
    """Apply `schedule` to the group `aws.group`, or to every group of a fleet.

    Args:
        aws: the Auto Scaling group (name, region, endpoint, AwsCredentials block name).
        schedule: windows (default Mon-Fri 09:00-17:00 UTC, min 4) and off-hours bounds,
            written as each window's min/max at its start and the off-hours min/max at its
            end (no desired capacity).
        dry_run: list the actions that would change; write nothing.
        targets: instead of `aws`, the fleet's targets with an Auto Scaling group
            (docs/fleet.md): one child run per group, a summary `perfops-scaling-schedule-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child (artifact and event label).
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    if targets is not None:  # the parent of a fleet run: one child run per group
        return run_over_fleet(
            apply_scaling_schedule,
            targets,
            fleet_file,
            lambda _, target: (
                {
                    "aws": group_target(target),
                    "schedule": schedule,
                    "dry_run": dry_run,
                    "fleet_target": target.name,
                },
                {},
            ),
            lambda run: run.summary,
            artifact_key=f"{ARTIFACT_KEY}-fleet",
            event=EVENT_FLEET,
            dry_run=dry_run,
            system=AUTOSCALING,
        )
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    if aws is None:
        raise ConfigurationError("give aws (the Auto Scaling group) or targets (a fleet)")
    logger = get_run_logger()
    client = client_for(aws, load_credentials(aws))
    actions = [ScheduledAction(*a) for a in schedule_actions(schedule)]
    found = describe_group(client, aws.group)
    existing = scheduled_actions(client, aws.group)
    # a group none of perfops' actions manage yet has the operator's own floor and ceiling:
    # say (dry run and applied) where the schedule goes below or above them
    managed = any(name.startswith(ACTION_PREFIX) for name in existing)
    loosened = [] if managed else loosened_bounds(schedule, found.min_size, found.max_size)
    why = {a.name: action_change(existing.get(a.name), a) for a in actions}
    stale = stale_actions(existing, actions)
    if dry_run:
        changed = [a.name for a in actions if why[a.name] is not None]
    else:  # the new actions first, then the old ones go: the group is never without bounds
        changed = put_schedule_task(client, aws.group, actions)
        stale = delete_actions_task(client, aws.group, stale)
    shown = [{k: v for k, v in asdict(a).items() if k != "desired"} for a in actions]
    run = ScheduleRun(
        aws.group, dry_run, shown, changed, stale, loosened, (found.min_size, found.max_size)
    )
    (logger.warning if run.loosened and changed else logger.info)("%s", run.summary)
    publish_table(
        keyed(ARTIFACT_KEY, fleet_target),
        [
            {
                "name": a["name"],
                "result": ("would write" if dry_run else "written")
                if a["name"] in changed
                else "unchanged",
                "reason": (why[a["name"]] or "changed on the group meanwhile")
                if a["name"] in changed
                else "already on the group",
            }
            | a
            for a in run.actions
        ]
        + [
            {
                "name": name,
                "result": "would delete" if dry_run else "deleted",
                "reason": "not in the schedule (its window was removed or renamed): it would "
                "keep setting the group's bounds",
            }
            | {k: v for k, v in asdict(existing[name]).items() if k not in ("name", "desired")}
            for name in run.deleted
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
            "deleted": run.deleted,
            "dry_run": dry_run,
            "loosened": run.loosened if changed else [],
        },
        **target_labels(fleet_target),
    )
    busy = changed or run.deleted
    return end_run(run, note=None if busy else f"nothing to do: {run.summary}")
