"""AWS Auto Scaling tasks (boto3): describe a group, set its desired capacity, write scheduled
actions idempotently (bounds only: an action never sets the desired capacity) and delete the
ones of windows the schedule no longer has.

Throttling, 5xx and connection errors are retried by botocore's "standard" retry mode
(exponential backoff with jitter, `blocks.resolve.BOTO_RETRY_CONFIG`); anything else
(a missing group, a validation error, denied access) fails at once with a clear message.
perfops enforces the group's min/max itself before every change (moto, and a group whose bounds
changed meanwhile, would not stop it) and reads the group back after each change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from prefect import task
from pydantic import BaseModel, Field

from blocks.resolve import BOTO_RETRY_CONFIG, load_block
from decisions.fleet import Target
from decisions.time_zones import same_time_zone
from perfops.errors import ConfigurationError, ConnectionFailed, PerfopsError

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials


class AutoScalingTarget(BaseModel):
    """Where the Auto Scaling group lives (credentials come from an AwsCredentials block, or
    boto3's default chain)."""

    group: str = Field(min_length=1, description="Auto Scaling group name.")
    region: str = Field(
        default_factory=lambda: (
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        ),
        description="AWS region (default: AWS_REGION or AWS_DEFAULT_REGION on the worker, else "
        "us-east-1).",
    )
    endpoint_url: str | None = Field(None, description="Endpoint override (moto, LocalStack).")
    credentials_block: str | None = Field(None, description="prefect-aws AwsCredentials block.")


def group_target(target: Target) -> AutoScalingTarget:
    """Where a fleet target's Auto Scaling group lives (`deployments/fleet.yaml`)."""
    scaling = target.autoscaling
    if scaling is None:
        raise ConfigurationError(f"target {target.name} has no autoscaling group in the fleet file")
    return AutoScalingTarget(
        group=scaling.group, **scaling.model_dump(exclude={"group"}, exclude_none=True)
    )


class GroupChanged(PerfopsError):
    """The group's desired capacity changed between the decision's read and its write (an
    operator, a scheduled action, another scaler): nothing was set, the next run decides again."""


@dataclass(frozen=True)
class GroupState:
    name: str
    min_size: int
    max_size: int
    desired: int
    instances: int


@dataclass(frozen=True)
class ScheduledAction:
    """One recurring scheduled action (cron in `timezone`) that sets the group's bounds.

    `desired` is what an action read back from the group sets as DesiredCapacity: perfops
    writes none (AWS then clamps the group's desired into the new bounds, so perfops' own
    decisions keep their guardrails), and rewrites an action found with one.
    """

    name: str
    recurrence: str
    min_size: int
    max_size: int
    timezone: str = "UTC"
    desired: int | None = None


ACTION_PREFIX = "perfops-"  # the scheduled actions perfops writes: perfops-<window>-start/-end


def stale_actions(existing: dict[str, ScheduledAction], wanted: list[ScheduledAction]) -> list[str]:
    """perfops' actions on the group that the schedule no longer has (a window removed or
    renamed): left there, they would keep setting the group's bounds. Other actions stay."""
    names = {a.name for a in wanted}
    return sorted(n for n in existing if n.startswith(ACTION_PREFIX) and n not in names)


def action_change(existing: ScheduledAction | None, wanted: ScheduledAction) -> str | None:
    """Why `wanted` must be written over what the group has (None: already in place)."""
    if existing is None:
        return "missing on the group"
    if existing.desired is not None:
        return (
            f"sets desired capacity {existing.desired} when it runs, overriding the scaling "
            "decisions: rewritten with bounds only"
        )
    differs = action_differences(existing, wanted)
    if differs:
        return "different on the group: " + "; ".join(differs)
    return None


def action_differences(existing: ScheduledAction, wanted: ScheduledAction) -> list[str]:
    """What of `wanted` the group's action has otherwise (empty: the same action). The time zone
    is compared as a zone, not as a name: AWS may give it back as an alias (`Etc/UTC` for
    `UTC`), which is the same action and no change."""
    fields: list[tuple[str, object, object]] = [
        ("recurrence", existing.recurrence, wanted.recurrence),
        ("min", existing.min_size, wanted.min_size),
        ("max", existing.max_size, wanted.max_size),
        ("desired", existing.desired, wanted.desired),
    ]
    differs = [
        f"{what} {have} on the group, {want} wanted" for what, have, want in fields if have != want
    ]
    if not same_time_zone(existing.timezone, wanted.timezone):
        differs.append(f"time zone {existing.timezone} on the group, {wanted.timezone} wanted")
    return differs


def client_for(target: AutoScalingTarget, credentials: AwsCredentials | None = None) -> Any:
    """An `autoscaling` client with timeouts and botocore's standard retries."""
    session = credentials.get_boto3_session() if credentials is not None else boto3.Session()
    return session.client(
        "autoscaling",
        region_name=target.region,
        endpoint_url=target.endpoint_url,
        config=Config(**BOTO_RETRY_CONFIG),  # type: ignore[arg-type]
    )


def load_credentials(target: AutoScalingTarget) -> AwsCredentials | None:
    """The AwsCredentials block named by the target, if any."""
    if not target.credentials_block:
        return None
    from prefect_aws import AwsCredentials

    return load_block(AwsCredentials, target.credentials_block)


def _fail(target: str, what: str, exc: Exception) -> Exception:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", str(exc))
        if code in {"Throttling", "ThrottlingException", "RequestLimitExceeded"}:
            return ConnectionFailed(f"Auto Scaling kept throttling {what} for {target}: {message}")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status >= 500:  # botocore's retries are spent: unavailable, not a refusal
            return ConnectionFailed(
                f"Auto Scaling kept failing {what} for {target} (HTTP {status} {code}): {message}"
            )
        return ConfigurationError(f"Auto Scaling refused {what} for {target}: {code} {message}")
    return ConnectionFailed(f"cannot reach Auto Scaling for {what} ({target}): {exc}")


def describe_group(client: Any, group: str) -> GroupState:
    """The group's bounds, desired capacity and instance count; a clear error when missing."""
    try:
        found = client.describe_auto_scaling_groups(AutoScalingGroupNames=[group])
    except (ClientError, BotoCoreError) as exc:
        raise _fail(group, "describe_auto_scaling_groups", exc) from exc
    groups = found.get("AutoScalingGroups", [])
    if not groups:
        raise ConfigurationError(
            f"Auto Scaling group {group!r} does not exist in this account/region "
            "(check the group name, region and endpoint)"
        )
    g = groups[0]
    return GroupState(
        name=g["AutoScalingGroupName"],
        min_size=int(g["MinSize"]),
        max_size=int(g["MaxSize"]),
        desired=int(g["DesiredCapacity"]),
        instances=len(g.get("Instances", [])),
    )


def set_capacity(client: Any, group: str, desired: int, expected: int | None = None) -> GroupState:
    """Set the desired capacity after checking it against the group's own min/max (perfops
    enforces them: moto does not); returns the group as read back afterwards.

    `expected` is the desired capacity the decision started from: a group found at another one
    (changed meanwhile) is left as it is (`GroupChanged`), since the decision's step and
    cooldowns were measured from `expected`. An error answer to the write (a 5xx after the
    retries) is checked against the group read back: a change AWS stored anyway is done."""
    before = describe_group(client, group)
    if expected is not None and before.desired not in (expected, desired):
        raise GroupChanged(
            f"group {group!r} is at desired capacity {before.desired}, not the {expected} this "
            f"decision started from (changed meanwhile): {desired} not set, nothing changed; "
            "the next run decides from the group's capacity then"
        )
    if not before.min_size <= desired <= before.max_size:
        raise ConfigurationError(
            f"desired capacity {desired} is outside group {group!r}'s bounds "
            f"[{before.min_size}, {before.max_size}]: nothing changed"
        )
    if before.desired != desired:
        try:
            client.set_desired_capacity(
                AutoScalingGroupName=group, DesiredCapacity=desired, HonorCooldown=False
            )
        except (ClientError, BotoCoreError) as exc:
            failure = _fail(group, "set_desired_capacity", exc)
            try:
                stored = describe_group(client, group).desired == desired
            except PerfopsError:
                stored = False
            if not stored:
                raise failure from exc
    after = describe_group(client, group)
    if after.desired != desired:
        raise ConnectionFailed(
            f"group {group!r} reports desired capacity {after.desired} after setting {desired}"
        )
    return after


def scheduled_actions(client: Any, group: str) -> dict[str, ScheduledAction]:
    try:
        pages = client.get_paginator("describe_scheduled_actions").paginate(
            AutoScalingGroupName=group
        )
        found = [a for page in pages for a in page.get("ScheduledUpdateGroupActions", [])]
    except (ClientError, BotoCoreError) as exc:
        raise _fail(group, "describe_scheduled_actions", exc) from exc
    return {
        a["ScheduledActionName"]: ScheduledAction(
            name=a["ScheduledActionName"],
            recurrence=a.get("Recurrence", ""),
            min_size=int(a.get("MinSize", -1)),
            max_size=int(a.get("MaxSize", -1)),
            timezone=a.get("TimeZone") or "UTC",
            desired=int(a["DesiredCapacity"]) if a.get("DesiredCapacity") is not None else None,
        )
        for a in found
    }


def put_schedule(client: Any, group: str, actions: list[ScheduledAction]) -> list[str]:
    """Write the scheduled actions that differ from what the group has (`action_change`);
    returns their names (empty on a rerun: idempotent) after reading them back.

    An action is written with MinSize and MaxSize only. One the group has with a
    DesiredCapacity (written by an older perfops) is deleted and written again, so no desired
    capacity survives whatever AWS keeps of an updated action's omitted fields."""
    for action in actions:
        if action.desired is not None or not action.min_size <= action.max_size:
            raise ConfigurationError(
                f"scheduled action {action.name!r}: bounds [{action.min_size}, "
                f"{action.max_size}] without a desired capacity expected (got {action.desired})"
            )
    describe_group(client, group)  # a clear error when the group does not exist
    existing = scheduled_actions(client, group)
    changed = []
    for action in actions:
        old = existing.get(action.name)
        if action_change(old, action) is None:
            continue
        try:
            if old is not None and old.desired is not None:
                client.delete_scheduled_action(
                    AutoScalingGroupName=group, ScheduledActionName=action.name
                )
            client.put_scheduled_update_group_action(
                AutoScalingGroupName=group,
                ScheduledActionName=action.name,
                Recurrence=action.recurrence,
                MinSize=action.min_size,
                MaxSize=action.max_size,
                TimeZone=action.timezone,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _fail(group, f"put_scheduled_update_group_action {action.name}", exc) from exc
        changed.append(action.name)
    if changed:
        after = scheduled_actions(client, group)
        wrong = [
            a.name
            for a in actions
            if a.name in changed and action_change(after.get(a.name), a) is not None
        ]
        if wrong:
            raise ConnectionFailed(
                f"group {group!r} reports the scheduled actions {', '.join(wrong)} differently "
                "after writing them (a concurrent writer?): rerun to write them again"
            )
    return changed


def delete_actions(client: Any, group: str, names: list[str]) -> list[str]:
    """Delete the scheduled actions `names` (one already gone counts as deleted: a rerun after
    a crash finishes the work); returns them after checking that the group has none of them."""
    for name in names:
        try:
            client.delete_scheduled_action(AutoScalingGroupName=group, ScheduledActionName=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ValidationError":
                raise _fail(group, f"delete_scheduled_action {name}", exc) from exc
            # AWS answers ValidationError for an action that no longer exists: checked below
        except BotoCoreError as exc:
            raise _fail(group, f"delete_scheduled_action {name}", exc) from exc
    left = [n for n in names if n in scheduled_actions(client, group)]
    if left:
        raise ConnectionFailed(
            f"group {group!r} still has the scheduled actions {', '.join(left)} after deleting "
            "them: rerun to delete them again"
        )
    return names


@task(name="describe_autoscaling_group")
def describe_group_task(client: Any, group: str) -> GroupState:
    """Task wrapper of `describe_group`."""
    return describe_group(client, group)


@task(name="set_desired_capacity")
def set_capacity_task(
    client: Any, group: str, desired: int, expected: int | None = None
) -> GroupState:
    """Task wrapper of `set_capacity` (one change, verified before and after)."""
    return set_capacity(client, group, desired, expected)


@task(name="put_scheduled_actions")
def put_schedule_task(client: Any, group: str, actions: list[ScheduledAction]) -> list[str]:
    """Task wrapper of `put_schedule`."""
    return put_schedule(client, group, actions)


@task(name="delete_scheduled_actions")
def delete_actions_task(client: Any, group: str, names: list[str]) -> list[str]:
    """Task wrapper of `delete_actions`."""
    return delete_actions(client, group, names)
