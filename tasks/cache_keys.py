"""Redis key work for the cache flows, on one server or a Redis Cluster: count and drop the keys
of a glob (SCAN MATCH COUNT, then UNLINK in pipelined batches, on every master at once), drop the
members of a tag index set, read and forget a cache's versions, tell L1 holders on pub/sub.

Never KEYS, never FLUSH*: SCAN visits `scan_count` buckets per call and each UNLINK batch frees
big values in the background, so no call blocks other clients for long. Every drop is
idempotent (UNLINK of a gone key is a no-op; a tag's members leave its set only once their keys
are gone; a version leaves its sorted set only once its keys are gone), so a run killed half way
is finished by the next one.

Keys are bytes end to end (any key, binary or not, is dropped as it is); samples are decoded for
people with `errors="replace"`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

import redis
from prefect import task
from prefect.cache_policies import NO_CACHE
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from blocks import RedisTarget
from blocks.redis_target import redis_address
from decisions.cache_policy import refusal
from perfops.errors import ConnectionFailed, PerfopsError
from perfops.redaction import register_secret
from tasks.cache_scan import (
    SAMPLES,
    CacheConnection,
    KeyCount,
    ScanOptions,
    decode_key,
    scan_pattern,
    server_run_id,
    unlink_batch,
)

# A count keeps the matching keys (up to this many per node, about 15 MB), so an applied
# invalidation drops exactly what it counted without a second SCAN. Past it (only with a
# max_keys above it) a second, dropping SCAN follows. Memory is bounded by this, never by the
# number of keys in Redis.
COLLECT = 200_000
# Dropping SCAN passes in all, when servers restart under them (a pass that spans a restart
# may miss keys: its cursor means nothing to the new process); past it the run says so.
MAX_PASSES = 4


def _kwargs(target: RedisTarget) -> dict[str, Any]:
    password = target.password.get_secret_value() if target.password else None
    register_secret(password)
    return {
        "username": target.username,
        "password": password,
        "socket_timeout": target.socket_timeout_s,
        "socket_connect_timeout": target.socket_timeout_s,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), target.retries),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def failed(target: RedisTarget, exc: BaseException) -> ConnectionFailed:
    return ConnectionFailed(f"Redis at {target.shown_url} failed: {exc}")


def connect(target: RedisTarget) -> CacheConnection:
    """Connect, finding out whether the server is a cluster node (`INFO cluster`)."""
    try:
        probe = redis.Redis.from_url(target.url, **_kwargs(target))
        with probe:
            info: dict[str, Any] = probe.info("cluster")  # type: ignore[assignment]
            enabled = int(info.get("cluster_enabled", 0)) == 1
        if not enabled:
            client = redis.Redis.from_url(target.url, **_kwargs(target))
            return CacheConnection(target.url, client, [(target.url, client)], cluster=False)
        kwargs = _kwargs(target)
        kwargs.pop("retry_on_error")
        cluster = RedisCluster.from_url(target.url, **kwargs)
        masters = [(n.name, cluster.get_redis_connection(n)) for n in cluster.get_primaries()]
        return CacheConnection(target.url, cluster, masters, cluster=True)
    except redis.RedisError as exc:
        raise failed(target, exc) from exc


@contextmanager
def connected(target: RedisTarget) -> Iterator[CacheConnection]:
    conn = connect(target)
    try:
        yield conn
    except redis.RedisError as exc:
        raise failed(target, exc) from exc
    finally:
        conn.close()


def is_cluster(target: RedisTarget) -> bool:
    """Whether `target` is a Redis Cluster node (False when it does not answer: the steps
    that needed it already said why)."""
    try:
        with connected(target) as conn:
            return conn.cluster
    except PerfopsError:
        return False


def node_name(target: RedisTarget) -> str:
    """`<host>:<port>/<db>` of the target's URL: never its user or password (a URL may carry
    them, `redis://:pw@cache:6379/0`), so the name is safe in artifacts, events and Redis."""
    server, db = redis_address(target.url)
    return f"{server}/{db}"


def resource_id(target: RedisTarget) -> str:
    """`perfops.redis.<host>:<port>/<db>`: the events' resource."""
    return f"perfops.redis.{node_name(target)}"


@dataclass
class PatternResult:
    """One pattern's invalidation: keys matched (before), dropped (UNLINK's count), samples,
    whether it was refused and why, SCAN passes made, and sample keys still there after."""

    matched: int
    dropped: int
    samples: list[str]
    nodes: dict[str, int]
    refused: str | None
    passes: int
    left: list[str]
    seconds: float
    kept: list[str] = field(default_factory=list)  # dropped keys, the first `keep_keys`
    rewritten: int = 0  # sampled keys there again, written since the drop (the app's refill)
    # nodes whose server restarted during the last pass (its keys may be left, or the count
    # be short): an applied run fails saying so, a dry run's count is an estimate
    restarted: list[str] = field(default_factory=list)
    # keys of perfops' own state (under the block's key_prefix) that matched, left alone
    protected: int = 0
    protected_prefix: str = ""


def _drop_collected(conn: CacheConnection, found: KeyCount, batch_size: int) -> int:
    clients = dict(conn.masters)
    dropped = 0
    for name, keys in found.keys.items():
        for i in range(0, len(keys), batch_size):
            dropped += unlink_batch(clients[name], keys[i : i + batch_size], conn.cluster)
    return dropped


def _ttls(conn: CacheConnection, keys: list[str]) -> dict[str, int]:
    """PTTL of each key (ms; -1 without a TTL, -2 when gone), pipelined."""
    if not keys:
        return {}
    pipe = conn.router.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    return {k: int(t) for k, t in zip(keys, pipe.execute(), strict=True)}


def _still_there(
    conn: CacheConnection, samples: list[str], before: dict[str, int] | None = None
) -> tuple[list[str], int]:
    """The sampled keys the drop left, and how many are there again because they were written
    since (the application refilling a hot key on its next miss: a TTL longer than the key's
    before the drop, or one it had none, or none where it had one). Without `before`, every
    key there is left."""
    after = {k: t for k, t in _ttls(conn, samples).items() if t != -2}
    if before is None:
        return list(after), 0
    # written since: a longer TTL than before, or none where it had one (a TTL-less write;
    # a key the drop missed keeps its TTL running down)
    fresh = [
        k for k, t in after.items() if t > before.get(k, -2) or (t == -1 and before.get(k, -2) >= 0)
    ]
    return [k for k in after if k not in fresh], len(fresh)


@task(name="invalidate_cache_pattern", cache_policy=NO_CACHE)
def invalidate_pattern(
    target: RedisTarget,
    pattern: str,
    options: ScanOptions,
    *,
    apply: bool,
    max_keys: int,
    force: bool,
    label: str = "",
    keep_keys: int = 0,
) -> PatternResult:
    """Count the keys of `pattern` (a dry run stops there), refuse past `max_keys` unless
    `force`, then UNLINK them in pipelined batches: the keys the count kept (one SCAN pass in
    all) while there were at most `COLLECT` per node, else a second SCAN that drops as it goes.
    With `force` a single dropping SCAN. A pass during which a server restarted (its INFO
    run_id changed: the SCAN cursor is meaningless to the new process, and the pass may have
    missed keys) is followed by another dropping pass, up to `MAX_PASSES` in all; a server
    that keeps restarting is reported (`restarted`). Afterwards the sampled keys are checked
    gone (one there again with a longer TTL than before the drop was written since:
    `rewritten`, the application's refill, not a key left). The first `keep_keys` dropped
    keys are returned (`kept`: what a warm-up refetches)."""
    started = time.monotonic()
    kept: list[bytes] = []
    # perfops' own state (scaling locks and cooldowns, SLA incidents, the stats sample) lives
    # under the block's key_prefix, in the Redis it invalidates by default: never a cache key
    options = replace(options, protected_prefix=target.key_prefix)

    def keep(batch: list[bytes]) -> None:  # called from one thread per master
        room = keep_keys - len(kept)
        if room > 0:
            kept.extend(batch[:room])

    before: dict[str, int] | None = None  # the samples' TTLs before the drop
    restarted: list[str] = []  # nodes restarted during the last pass
    with connected(target) as conn:
        if apply and force:  # samples taken as they go: no TTL before the drop to compare
            found = scan_pattern(conn, pattern, options, drop=True, on_batch=keep)
            matched, dropped, passes, refused = found.matched, found.dropped, 1, None
            restarted = found.restarted
        else:
            found = scan_pattern(
                conn,
                pattern,
                options,
                drop=False,
                stop_after=max_keys if apply else None,
                collect=COLLECT if apply else 0,
            )
            matched, dropped, passes = found.matched, 0, 1
            restarted = found.restarted
            refused = (
                refusal(label or pattern, pattern, matched, max_keys, force) if apply else None
            )
            if apply and refused is None:
                before = _ttls(conn, found.samples)
                if found.complete:  # (never after a restart: the count may have missed keys)
                    dropped = _drop_collected(conn, found, options.batch_size)
                    for keys in found.keys.values():
                        keep(keys)
                    restarted = []
                else:
                    again = scan_pattern(conn, pattern, options, drop=True, on_batch=keep)
                    dropped, passes, restarted = again.dropped, 2, again.restarted
        while apply and refused is None and restarted and passes < MAX_PASSES:
            again = scan_pattern(conn, pattern, options, drop=True, on_batch=keep)
            dropped, passes, restarted = dropped + again.dropped, passes + 1, again.restarted
        left: list[str] = []
        rewritten = 0
        if apply and refused is None:
            left, rewritten = _still_there(conn, found.samples, before)
    return PatternResult(
        matched=matched,
        dropped=dropped,
        samples=found.samples,
        nodes=found.nodes,
        refused=refused,
        passes=passes,
        left=left,
        seconds=round(time.monotonic() - started, 3),
        kept=[decode_key(k) for k in kept[:keep_keys]],
        rewritten=rewritten,
        restarted=restarted,
        protected=found.protected,
        protected_prefix=target.key_prefix,
    )


def _drop_members(conn: CacheConnection, members: list[bytes]) -> int:
    if not conn.cluster:
        return unlink_batch(conn.masters[0][1], members, cluster=False)
    by_node: dict[int, tuple[redis.Redis, list[bytes]]] = {}
    for m in members:
        client = conn.master_of(m)
        by_node.setdefault(id(client), (client, []))[1].append(m)
    return sum(unlink_batch(c, keys, cluster=True) for c, keys in by_node.values())


@task(name="drop_tagged_cache_keys", cache_policy=NO_CACHE)
def drop_tagged(
    target: RedisTarget, tag_key: str, batch_size: int, *, apply: bool, max_keys: int, force: bool
) -> tuple[PatternResult, list[list[str]]]:
    """The keys listed in the tag index set `tag_key` (SCARD first: past `max_keys` refused
    unless `force`): counted, or (with `apply`) UNLINKed a batch at a time (SSCAN), each batch
    then removed from the set (SREM), and the set itself once empty, so a re-run after a crash
    finds only what is left. A pass during which the set's server restarted (its run_id
    changed: the SSCAN cursor means nothing to the new process) is followed by another, up to
    `MAX_PASSES` (an applied one: the members dropped already left the set). Returns the
    result and, when applied, the dropped keys by batch (for L1 notices)."""
    started = time.monotonic()
    matched = dropped = passes = 0
    samples: list[str] = []
    before: dict[str, int] = {}
    dropped_batches: list[list[str]] = []
    restarted: list[str] = []
    protect, protected = target.key_prefix.encode(), 0
    with connected(target) as conn:
        router = conn.router
        holder = conn.master_of(tag_key.encode())
        where = next((n for n, c in conn.masters if c is holder), node_name(target))
        size = int(cast(int, router.scard(tag_key)))
        refused = refusal(tag_key, None, size, max_keys, force) if apply else None
        while refused is None and passes < MAX_PASSES:
            passes += 1
            started_as = server_run_id(holder)
            cursor = 0
            while True:
                page: Any = router.sscan(tag_key, cursor=cursor, count=batch_size)
                cursor, members = page
                if protect:  # perfops' own state listed in a tag: never dropped
                    mine = [m for m in members if not m.startswith(protect)]
                    protected += len(members) - len(mine)
                    members = mine
                matched += len(members)
                if len(samples) < SAMPLES:
                    taken = [decode_key(m) for m in members[: SAMPLES - len(samples)]]
                    samples += taken
                    if apply:  # their TTLs before the drop: a refill since is not a key left
                        before.update(_ttls(conn, taken))
                if apply and members:
                    dropped += _drop_members(conn, members)
                    router.srem(tag_key, *members)
                    dropped_batches.append([decode_key(m) for m in members])
                if cursor == 0:
                    break
            restarted = [] if server_run_id(holder) == started_as else [where]
            if not restarted or not apply:  # a dry run's count is an estimate, said so
                break
        if refused:
            matched = size
        if apply and refused is None and router.scard(tag_key) == 0:
            router.unlink(tag_key)
        left: list[str] = []
        rewritten = 0
        if apply and refused is None:
            left, rewritten = _still_there(conn, samples, before)
    result = PatternResult(
        matched=matched,
        dropped=dropped,
        samples=samples,
        nodes={},
        refused=refused,
        passes=max(passes, 1),
        left=left,
        seconds=round(time.monotonic() - started, 3),
        rewritten=rewritten,
        restarted=restarted,
        protected=protected,
        protected_prefix=target.key_prefix,
    )
    return result, dropped_batches


@task(name="read_cache_versions", cache_policy=NO_CACHE)
def read_versions(target: RedisTarget, versions_key: str) -> list[tuple[str, float]]:
    """A versioned cache's versions and their deploy times (ZRANGE ... WITHSCORES)."""
    with connected(target) as conn:
        rows: Any = conn.router.zrange(versions_key, 0, -1, withscores=True)
    return [(decode_key(v), float(s)) for v, s in rows]


@task(name="forget_cache_version", cache_policy=NO_CACHE)
def forget_version(target: RedisTarget, versions_key: str, version: str) -> None:
    """ZREM a version whose keys are gone."""
    with connected(target) as conn:
        conn.router.zrem(versions_key, version)


@task(name="notify_l1_holders", cache_policy=NO_CACHE)
def notify_l1(target: RedisTarget, channel: str, messages: list[dict[str, Any]]) -> int:
    """PUBLISH each message (JSON) on `channel`; returns how many subscribers heard the last."""
    heard = 0
    with connected(target) as conn:
        for message in messages:
            heard = int(
                cast(int, conn.router.publish(channel, json.dumps(message, sort_keys=True)))
            )
    return heard
