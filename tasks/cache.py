"""Redis tasks: server info, and the small key operations cache flows build on.

Connection errors and timeouts are retried inside redis-py (see `RedisTarget.get_client`).
"""

from __future__ import annotations

from typing import Any

import redis
from prefect import task

from blocks import RedisTarget
from perfops.errors import ConnectionFailed


def _client(target: RedisTarget) -> redis.Redis:
    return target.get_client()


def _wrap(target: RedisTarget, exc: redis.RedisError) -> ConnectionFailed:
    return ConnectionFailed(f"Redis at {target.shown_url} failed: {exc}")


@task(name="fetch_redis_info")
def fetch_redis_info(target: RedisTarget) -> dict[str, Any]:
    """`INFO server` and `INFO memory` essentials: version, mode, used memory, max memory."""
    try:
        with _client(target) as client:
            info: dict[str, Any] = client.info("server") | client.info("memory")
    except redis.RedisError as exc:
        raise _wrap(target, exc) from exc
    return {
        "redis_version": info.get("redis_version"),
        "redis_mode": info.get("redis_mode"),
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory_policy": info.get("maxmemory_policy"),
    }


def probe_redis(target: RedisTarget, timeout_s: float) -> tuple[bool, str]:
    """Can perfops reach `target`? `INFO server` within `timeout_s`, no retries: (True,
    "Redis 7.0.15, standalone") or (False, one line saying why, no password). A plain
    function, not a task: `perfops fleet list` probes many targets at once from threads."""
    quick = target.model_copy(update={"socket_timeout_s": float(timeout_s), "retries": 0})
    try:
        with _client(quick) as client:
            info: dict[str, Any] = client.info("server")
    except redis.RedisError as exc:
        return False, str(_wrap(quick, exc))
    return True, f"Redis {info.get('redis_version')}, {info.get('redis_mode', 'standalone')}"


@task(name="set_cache_value")
def set_value(target: RedisTarget, key: str, value: str, ttl_s: int | None = None) -> bool:
    """SET one key, with an optional time to live."""
    try:
        with _client(target) as client:
            return bool(client.set(key, value, ex=ttl_s))
    except redis.RedisError as exc:
        raise _wrap(target, exc) from exc


@task(name="get_cache_value")
def get_value(target: RedisTarget, key: str) -> str | None:
    """GET one key (None when absent)."""
    try:
        with _client(target) as client:
            value = client.get(key)
    except redis.RedisError as exc:
        raise _wrap(target, exc) from exc
    return None if value is None else str(value)


@task(name="delete_cache_keys")
def delete_keys(target: RedisTarget, keys: list[str]) -> int:
    """DEL (UNLINK) the given keys; returns how many existed."""
    if not keys:
        return 0
    try:
        with _client(target) as client:
            return int(client.unlink(*keys))
    except redis.RedisError as exc:
        raise _wrap(target, exc) from exc
