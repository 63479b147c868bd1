"""SCAN and UNLINK over the masters of one Redis server or Redis Cluster: the core the cache
invalidation tasks (`tasks.cache_keys`) run. Plain redis-py, no Prefect: a test can run it in
a process it kills half way (tests/caches/test_invalidation.py) without paying Prefect's import.

Never KEYS, never FLUSH*: SCAN visits `scan_count` buckets per call, each UNLINK batch frees big
values in the background, and the masters are scanned in parallel.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

SAMPLES = 10


@dataclass
class CacheConnection:
    """A connection to the cache: `router` sends a command to the node owning its key (a plain
    client on one server), `masters` are the nodes a SCAN must visit (one on one server)."""

    url: str
    router: redis.Redis | RedisCluster
    masters: list[tuple[str, redis.Redis]]
    cluster: bool

    def close(self) -> None:
        self.router.close()

    def master_of(self, key: bytes) -> redis.Redis:
        if not isinstance(self.router, RedisCluster):
            return self.masters[0][1]
        node = self.router.nodes_manager.get_node_from_slot(key_slot(key))
        return self.router.get_redis_connection(node)


@dataclass
class ScanOptions:
    """How a pattern is scanned and dropped: buckets per SCAN, keys per UNLINK batch, a pause
    after each SCAN call (pacing, 0 = none)."""

    scan_count: int = 1000
    batch_size: int = 1000
    pause_s: float = 0.0
    # keys under this prefix (perfops' own state: the block's key_prefix) never match
    protected_prefix: str = ""


@dataclass
class KeyCount:
    """What a count or a drop saw: keys matched (stopped past `stop_after`, if given), keys
    dropped (UNLINK's own count), a few sample keys, per-node figures."""

    matched: int = 0
    dropped: int = 0
    samples: list[str] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)
    stopped_early: bool = False
    seconds: float = 0.0
    # the matching keys by node, kept by a count while there are at most `collect` of them
    keys: dict[str, list[bytes]] = field(default_factory=dict, repr=False)
    complete: bool = True  # every matching key is in `keys`
    protected: int = 0  # keys that matched under `protected_prefix`, left alone
    # the nodes whose server restarted while they were scanned (INFO run_id changed): a SCAN
    # cursor means nothing to the new process (its hash seed is new), so the pass may have
    # missed keys its server still has
    restarted: list[str] = field(default_factory=list)


def decode_key(key: bytes) -> str:
    return key.decode("utf-8", errors="replace")


def unlink_batch(client: redis.Redis, keys: list[bytes], cluster: bool) -> int:
    """UNLINK `keys` on the node that owns them, in one round trip: one UNLINK on a single
    server; on a cluster node one UNLINK per hash slot (a multi-key command must stay in one
    slot), pipelined."""
    if not keys:
        return 0
    if not cluster:
        return int(client.execute_command("UNLINK", *keys))
    by_slot: dict[int, list[bytes]] = defaultdict(list)
    for k in keys:
        by_slot[key_slot(k)].append(k)
    pipe = client.pipeline(transaction=False)
    for group in by_slot.values():
        pipe.execute_command("UNLINK", *group)
    return sum(int(n) for n in pipe.execute())


def server_run_id(client: redis.Redis) -> str:
    """The Redis process's `run_id` (INFO server): a new one after every restart."""
    info: Any = client.info("server")
    return str(info.get("run_id", ""))


def _scan_node(
    name: str,
    client: redis.Redis,
    pattern: str,
    options: ScanOptions,
    *,
    drop: bool,
    cluster: bool,
    stop_after: int | None,
    on_batch: Callable[[list[bytes]], None] | None,
    collect: int = 0,
) -> KeyCount:
    result = KeyCount()
    kept: list[bytes] = []
    pending: list[bytes] = []
    cursor = 0
    started_as = server_run_id(client)
    protect = options.protected_prefix.encode()

    def flush() -> None:
        if not pending:
            return
        result.dropped += unlink_batch(client, pending, cluster)
        if on_batch is not None:
            on_batch(pending)
        pending.clear()

    while True:
        reply: Any = client.scan(cursor=cursor, match=pattern, count=options.scan_count)
        cursor, keys = reply
        if protect:
            mine = [k for k in keys if not k.startswith(protect)]
            result.protected += len(keys) - len(mine)
            keys = mine
        if options.pause_s:  # pacing: Redis serves other clients in between
            time.sleep(options.pause_s)
        result.matched += len(keys)
        if len(result.samples) < SAMPLES:
            result.samples += [decode_key(k) for k in keys[: SAMPLES - len(result.samples)]]
        if drop:
            pending += keys
            if len(pending) >= options.batch_size:
                flush()
        elif result.complete and collect:
            if len(kept) + len(keys) <= collect:
                kept += keys
            else:
                result.complete = False
                kept = []
        if stop_after is not None and result.matched > stop_after:
            result.stopped_early = True
            break
        if cursor == 0:
            break
    if drop:
        flush()
    if server_run_id(client) != started_as:
        result.restarted.append(name)
    result.nodes[name] = result.matched
    result.keys[name] = kept
    result.complete = result.complete and not result.stopped_early and (drop or bool(collect))
    return result


def scan_pattern(
    conn: CacheConnection,
    pattern: str,
    options: ScanOptions,
    *,
    drop: bool,
    stop_after: int | None = None,
    on_batch: Callable[[list[bytes]], None] | None = None,
    collect: int = 0,
) -> KeyCount:
    """Count (and with `drop`, UNLINK) the keys matching `pattern` on every master, in parallel.
    A count keeps the matching keys while there are at most `collect` of them per node."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(conn.masters)) as pool:
        parts = list(
            pool.map(
                lambda node: _scan_node(
                    node[0],
                    node[1],
                    pattern,
                    options,
                    drop=drop,
                    cluster=conn.cluster,
                    stop_after=stop_after,
                    on_batch=on_batch,
                    collect=collect,
                ),
                conn.masters,
            )
        )
    total = KeyCount(seconds=round(time.monotonic() - started, 3))
    for p in parts:
        total.matched += p.matched
        total.dropped += p.dropped
        total.samples += p.samples[: SAMPLES - len(total.samples)]
        total.nodes.update(p.nodes)
        total.stopped_early |= p.stopped_early
        total.keys.update(p.keys)
        total.complete = total.complete and p.complete and not p.restarted
        total.restarted += p.restarted
        total.protected += p.protected
    return total
