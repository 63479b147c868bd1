"""Redis tasks of the scaling flows: one lock per group, the decision state (last action,
cooldowns, recent recommendations) and the scaling history `perfops scaling history` reads.

`group` is the group's key (`decisions.fleet.scaling_key`: `api`, or `eu-west-1/api` where a
region, endpoint or credentials block is configured), so groups of one name in two regions or
accounts have their own lock, state, history and tuning.
Keys (under the RedisTarget's prefix): `scaling:<group>:lock`, `scaling:<group>:state` (JSON),
`scaling:<group>:tuned` (the tuned policy, JSON, written by `tune_scaling`),
`scaling:<group>:history` (a list of JSON records, newest first, capped). Redis being down is a
`ConnectionFailed`: the flow then decides nothing and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

import redis
from prefect import task

from blocks import RedisTarget
from decisions.scaling_policy import ScalingState
from perfops.errors import ConnectionFailed, LockBusy

HISTORY_LENGTH = 1000
LOCK_TTL_S = 300


def _key(target: RedisTarget, group: str, what: str) -> str:
    return f"{target.key_prefix}scaling:{group}:{what}"


def _down(target: RedisTarget, exc: redis.RedisError) -> ConnectionFailed:
    return ConnectionFailed(
        f"Redis at {target.shown_url} failed ({exc}): scaling state and lock unavailable, "
        "no action taken"
    )


@contextmanager
def group_lock(target: RedisTarget, group: str, ttl_s: int = LOCK_TTL_S) -> Iterator[None]:
    """Hold the group's lock or raise LockBusy at once (another run is deciding)."""
    client = target.get_client()
    try:
        lock = client.lock(_key(target, group, "lock"), timeout=ttl_s, blocking=False)
        if not lock.acquire():
            raise LockBusy(
                f"another scaling run holds the lock of group {group!r}: this run skips "
                "(one decision per group at a time)"
            )
    except (redis.RedisError, LockBusy) as exc:
        client.close()  # a skipped run leaves no connection behind (one per run, every 10 min)
        if isinstance(exc, LockBusy):
            raise
        raise _down(target, exc) from exc
    try:
        yield
    finally:
        with suppress(redis.RedisError):  # expired or Redis gone: the TTL frees it
            lock.release()
        client.close()


def state_to_json(state: ScalingState) -> str:
    return json.dumps(
        {
            "last_action_at": state.last_action_at.isoformat() if state.last_action_at else None,
            "last_scale_out_at": (
                state.last_scale_out_at.isoformat() if state.last_scale_out_at else None
            ),
            "last_burst_at": state.last_burst_at.isoformat() if state.last_burst_at else None,
            "recommendations": [[t.isoformat(), n] for t, n in state.recommendations],
        }
    )


def state_from_json(text: str | None) -> ScalingState:
    if not text:
        return ScalingState()
    raw = json.loads(text)

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return ScalingState(
        last_action_at=when(raw.get("last_action_at")),
        last_scale_out_at=when(raw.get("last_scale_out_at")),
        last_burst_at=when(raw.get("last_burst_at")),
        recommendations=tuple(
            (datetime.fromisoformat(t), int(n)) for t, n in raw.get("recommendations", [])
        ),
    )


@task(name="load_scaling_state")
def load_state(target: RedisTarget, group: str) -> ScalingState:
    """The group's remembered decision state (empty on the first run)."""
    try:
        with target.get_client() as client:
            return state_from_json(client.get(_key(target, group, "state")))
    except redis.RedisError as exc:
        raise _down(target, exc) from exc


@task(name="save_scaling_state")
def save_state(
    target: RedisTarget, group: str, state: ScalingState, record: dict[str, Any]
) -> None:
    """Store the new state and prepend `record` to the group's history, in one transaction."""
    try:
        with target.get_client() as client:
            pipe = client.pipeline(transaction=True)
            pipe.set(_key(target, group, "state"), state_to_json(state))
            pipe.lpush(_key(target, group, "history"), json.dumps(record, default=str))
            pipe.ltrim(_key(target, group, "history"), 0, HISTORY_LENGTH - 1)
            pipe.execute()
    except redis.RedisError as exc:
        raise _down(target, exc) from exc


def read_history(target: RedisTarget, group: str, limit: int = 20) -> list[dict[str, Any]]:
    """The group's latest decisions, newest first."""
    try:
        with target.get_client() as client:
            items = client.lrange(_key(target, group, "history"), 0, max(0, limit - 1))
    except redis.RedisError as exc:
        raise _down(target, exc) from exc
    return [json.loads(item) for item in items]


@task(name="save_scaling_tuning")
def save_tuning(target: RedisTarget, group: str, record: dict[str, Any]) -> None:
    """Store the group's tuned policy (`tune_scaling`); `scale_predictively` uses it."""
    try:
        with target.get_client() as client:
            client.set(_key(target, group, "tuned"), json.dumps(record, default=str))
    except redis.RedisError as exc:
        raise _down(target, exc) from exc


@task(name="load_scaling_tuning")
def load_tuning(target: RedisTarget, group: str) -> dict[str, Any] | None:
    """The group's tuned policy, or None when it was never tuned."""
    try:
        with target.get_client() as client:
            text = client.get(_key(target, group, "tuned"))
    except redis.RedisError as exc:
        raise _down(target, exc) from exc
    return json.loads(text) if text else None
