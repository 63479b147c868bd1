"""Redis reads for cache statistics: each master's counters (INFO), a sample of keys with their
memory and TTL (SCAN + pipelined MEMORY USAGE and TTL), and the previous sample perfops stored
(a hash in Redis, so the hit ratio is measured between runs wherever they run)."""

from __future__ import annotations

import json
import time
from typing import Any, cast
from urllib.parse import quote

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks import RedisTarget
from decisions.cache_stats import KeySample, NodeSample
from tasks.cache_keys import connected, node_name

STATE_KEY = "perfops:cache:stats:last"
STATE_TTL_S = 7 * 86400


@task(name="sample_cache_nodes", cache_policy=NO_CACHE)
def sample_nodes(target: RedisTarget) -> tuple[bool, list[NodeSample]]:
    """Whether it is a cluster, and each master's INFO counters now."""
    with connected(target) as conn:
        out = []
        for name, client in conn.masters:
            info: dict[str, Any] = {}
            for section in ("stats", "memory", "server"):
                info |= cast(dict[str, Any], client.info(section))
            out.append(
                NodeSample(
                    node=name if conn.cluster else node_name(target),
                    at=time.time(),
                    keyspace_hits=int(info.get("keyspace_hits", 0)),
                    keyspace_misses=int(info.get("keyspace_misses", 0)),
                    evicted_keys=int(info.get("evicted_keys", 0)),
                    expired_keys=int(info.get("expired_keys", 0)),
                    used_memory=int(info.get("used_memory", 0)),
                    maxmemory=int(info.get("maxmemory", 0)),
                    fragmentation=float(info.get("mem_fragmentation_ratio", 0.0)),
                    key_count=int(cast(int, client.dbsize())),
                    uptime_s=int(info.get("uptime_in_seconds", 0)),
                    run_id=str(info.get("run_id", "")),
                )
            )
        return conn.cluster, out


@task(name="sample_cache_keys", cache_policy=NO_CACHE)
def sample_keys(target: RedisTarget, limit: int, scan_count: int = 1000) -> list[KeySample]:
    """Up to `limit` keys (spread over the masters, SCAN order: by hash, so no prefix is
    favoured), each with MEMORY USAGE and TTL, pipelined a SCAN page at a time."""
    samples: list[KeySample] = []
    with connected(target) as conn:
        per_node = max(1, limit // len(conn.masters))
        for _, client in conn.masters:
            cursor, taken = 0, 0
            while taken < per_node:
                reply: Any = client.scan(cursor=cursor, count=scan_count)
                cursor, keys = reply
                keys = keys[: per_node - taken]
                if keys:
                    pipe = client.pipeline(transaction=False)
                    for k in keys:
                        pipe.memory_usage(k)
                        pipe.ttl(k)
                    replies = pipe.execute()
                    for i, k in enumerate(keys):
                        size, ttl = replies[2 * i], replies[2 * i + 1]
                        if size is None or ttl == -2:  # gone meanwhile
                            continue
                        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
                        samples.append(KeySample(key=key, bytes=int(size), ttl_s=int(ttl)))
                    taken += len(keys)
                if cursor == 0:
                    break
    return samples


@task(name="read_previous_cache_sample", cache_policy=NO_CACHE)
def read_previous(target: RedisTarget) -> dict[str, NodeSample]:
    with connected(target) as conn:
        raw: Any = conn.router.hgetall(STATE_KEY)
    fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    # a node's name never holds an `@`: such a field is an older version's (see store_sample)
    return {k: NodeSample.model_validate_json(v) for k, v in fields.items() if "@" not in k}


@task(name="store_cache_sample", cache_policy=NO_CACHE)
def store_sample(target: RedisTarget, samples: list[NodeSample]) -> None:
    """Store this run's counters (the next run's previous sample). The field versions before
    2026-12-07 named a single node by, its URL after the scheme with the user and password in it
    (`:pw@host:port/db`, spelled again from the block, whose URL no longer holds them), is
    removed (HDEL: a write, so the hit counters do not move)."""
    leaked = None
    if target.password is not None:
        user = quote(target.username or "", safe="")
        secret = quote(target.password.get_secret_value(), safe="")
        leaked = f"{user}:{secret}@{target.url.split('//')[-1]}"
    with connected(target) as conn:
        pipe = conn.router.pipeline(transaction=False)
        if leaked:
            pipe.hdel(STATE_KEY, leaked)
        pipe.hset(STATE_KEY, mapping={s.node: json.dumps(s.model_dump()) for s in samples})
        pipe.expire(STATE_KEY, STATE_TTL_S)
        pipe.execute()
