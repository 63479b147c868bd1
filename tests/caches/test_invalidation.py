"""Invalidation tasks against the real Redis and a real 3-master Redis Cluster: the right keys
go and no other is touched, hostile payloads, max_keys, tags, versions, a kill -9 half way
then a re-run, and a real L1 subscriber process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

import tasks.cache_keys as cache_keys
from blocks import RedisTarget
from decisions.cache_invalidation import l1_message, pattern_outcome
from decisions.cache_policy import Target, glob_regex, load_policy, targets_for_event
from tasks.cache_keys import (
    ScanOptions,
    connected,
    drop_tagged,
    forget_version,
    invalidate_pattern,
    notify_l1,
    read_versions,
)
from tests.caches.conftest import client_for
from tests.servers.ports import free_port
from tests.servers.redis_cluster import restart_private_redis, start_private_redis

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "deployments" / "caches.yaml")
OPTIONS = ScanOptions(scan_count=200, batch_size=100)
TARGET = Target(kind="pattern", cache="workflow_definitions", pattern="workflow:*")


def seed(target: RedisTarget, keys: list[str]) -> None:
    client = client_for(target)
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.set(k, "v", ex=3600)
    pipe.execute()


def existing(target: RedisTarget, keys: list[str]) -> set[str]:
    client = client_for(target)
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.exists(k)
    return {k for k, n in zip(keys, pipe.execute(), strict=True) if n}


def test_an_event_drops_its_users_keys_and_nothing_else(cache_target: RedisTarget) -> None:
    mine = [f"user:42:profile:{i}" for i in range(300)] + ["user:42:preferences:ui"]
    others = [f"user:43:profile:{i}" for i in range(50)] + ["user:420:profile:1", "agent:42:x"]
    seed(cache_target, mine + others)
    targets = targets_for_event(POLICY, "user_updated", {"user_id": "42"})
    dry = [
        invalidate_pattern.fn(
            cache_target, t.pattern, OPTIONS, apply=False, max_keys=10, force=False
        )
        for t in targets
    ]
    assert [d.matched for d in dry] == [300, 1] and all(d.refused is None for d in dry)
    assert len(dry[0].samples) == 10 and all(
        s.startswith("user:42:profile:") for s in dry[0].samples
    )
    assert existing(cache_target, mine) == set(mine)  # a dry run changes nothing
    done = [
        invalidate_pattern.fn(
            cache_target, t.pattern, OPTIONS, apply=True, max_keys=1000, force=False
        )
        for t in targets
    ]
    assert [d.dropped for d in done] == [300, 1] and [d.left for d in done] == [[], []]
    assert existing(cache_target, mine + others) == set(others)


def test_a_key_the_app_writes_again_after_the_drop_is_fresh_not_left(
    cache_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hot key is refilled by the application on its next miss, milliseconds after the
    drop: that is the invalidation working, not a key left behind (the run failed). A key
    the drop missed (its TTL running down as before) still fails it."""
    keys = [f"user:42:profile:{i}" for i in range(8)]  # all sampled (10 a pattern)
    seed(cache_target, keys)
    client = client_for(cache_target)
    client.expire(keys[0], 600)  # older than the rest: its TTL is below a refill's
    drop = cache_keys._drop_collected

    def drop_then_the_app_refills(conn: object, found: object, batch_size: int) -> int:
        dropped = drop(conn, found, batch_size)  # type: ignore[arg-type]
        client.set(keys[0], "fresh", ex=3600)  # the app's next read of user 42
        return dropped

    monkeypatch.setattr(cache_keys, "_drop_collected", drop_then_the_app_refills)
    done = invalidate_pattern.fn(
        cache_target, "user:42:profile:*", OPTIONS, apply=True, max_keys=1000, force=False
    )
    assert done.dropped == 8 and done.left == [] and done.rewritten == 1
    assert client.get(keys[0]) == b"fresh"
    [target] = [t for t in targets_for_event(POLICY, "user_updated", {"user_id": "42"})
                if t.cache == "user_profiles"]  # fmt: skip
    row = pattern_outcome(target, "user:42:profile:*", done, apply=True)
    assert row.result == "dropped"
    assert row.reason.endswith("; 1 sampled key written again since (refilled)")

    seed(cache_target, keys)

    def drop_all_but_one(conn: object, found: object, batch_size: int) -> int:
        dropped = drop(conn, found, batch_size)  # type: ignore[arg-type]
        client.set(keys[1], "v", ex=3000)  # as if the drop had missed it: TTL below before
        return dropped

    monkeypatch.setattr(cache_keys, "_drop_collected", drop_all_but_one)
    missed = invalidate_pattern.fn(
        cache_target, "user:42:profile:*", OPTIONS, apply=True, max_keys=1000, force=False
    )
    assert missed.left == [keys[1]] and missed.rewritten == 0


def test_a_key_the_app_writes_again_without_a_ttl_is_fresh_not_left(
    cache_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app that writes some keys without a TTL refills one after the drop: it had a TTL
    before and has none now, which only a write since gives it (a key the drop missed keeps
    its TTL running down). The run failed: 'sampled keys still there'."""
    keys = [f"user:43:profile:{i}" for i in range(4)]
    seed(cache_target, keys)
    client = client_for(cache_target)
    drop = cache_keys._drop_collected

    def drop_then_the_app_refills_without_ttl(conn: object, found: object, size: int) -> int:
        dropped = drop(conn, found, size)  # type: ignore[arg-type]
        client.set(keys[0], "fresh")  # no TTL
        return dropped

    monkeypatch.setattr(cache_keys, "_drop_collected", drop_then_the_app_refills_without_ttl)
    done = invalidate_pattern.fn(
        cache_target, "user:43:profile:*", OPTIONS, apply=True, max_keys=1000, force=False
    )
    assert (done.dropped, done.left, done.rewritten) == (4, [], 1)
    assert pattern_outcome(TARGET, "user:43:profile:*", done, apply=True).result == "dropped"


def test_a_tagged_key_the_app_writes_again_after_the_drop_is_fresh_not_left(
    cache_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"user:{i}:profile:main" for i in range(5)]
    seed(cache_target, keys)
    client = client_for(cache_target)
    client.sadd("tag:department:sales", *keys)
    drop = cache_keys._drop_members

    def drop_then_the_app_refills(conn: object, members: list[bytes]) -> int:
        dropped = drop(conn, members)  # type: ignore[arg-type]
        client.set(keys[0], "fresh", ex=7200)  # the app's next read, with its tag again
        return dropped

    monkeypatch.setattr(cache_keys, "_drop_members", drop_then_the_app_refills)
    done, _ = drop_tagged.fn(
        cache_target, "tag:department:sales", 100, apply=True, max_keys=1000, force=False
    )
    assert done.dropped == 5 and done.left == [] and done.rewritten == 1


def test_a_payload_of_star_drops_the_user_called_star_only(cache_target: RedisTarget) -> None:
    star = ["user:*:profile:a", "user:*:preferences:b"]
    others = ["user:1:profile:a", "user:2:preferences:b", "user:?:profile:c", "user:[*]:profile:d"]
    seed(cache_target, star + others)
    for hostile in ("*", "?", "[*]"):
        for t in targets_for_event(POLICY, "user_updated", {"user_id": hostile}):
            invalidate_pattern.fn(
                cache_target, t.pattern, OPTIONS, apply=True, max_keys=10, force=False
            )
    assert existing(cache_target, star + others) == {"user:1:profile:a", "user:2:preferences:b"}


def test_past_max_keys_is_refused_untouched_and_force_drops_it(
    cache_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"workflow:{i}:definition:v1" for i in range(400)]
    seed(cache_target, [*keys, "workflow-other"])
    refused = invalidate_pattern.fn(
        cache_target, "workflow:*", OPTIONS, apply=True, max_keys=100, force=False
    )
    assert refused.refused and "more than max_keys 100" in refused.refused
    assert refused.dropped == 0 and existing(cache_target, keys) == set(keys)
    # past what a count keeps in memory: a second SCAN drops as it goes
    monkeypatch.setattr(cache_keys, "COLLECT", 50)
    done = invalidate_pattern.fn(
        cache_target, "workflow:*", OPTIONS, apply=True, max_keys=100, force=True
    )
    assert (done.dropped, done.passes) == (400, 1)
    seed(cache_target, keys)
    twice = invalidate_pattern.fn(
        cache_target, "workflow:*", OPTIONS, apply=True, max_keys=1000, force=False
    )
    assert (twice.matched, twice.dropped, twice.passes) == (400, 400, 2)
    assert existing(cache_target, [*keys, "workflow-other"]) == {"workflow-other"}


def test_a_tag_drops_the_keys_its_index_lists_then_the_index(cache_target: RedisTarget) -> None:
    tagged = [f"user:42:profile:{i}" for i in range(250)]
    seed(cache_target, [*tagged, "user:43:profile:0"])
    client = client_for(cache_target)
    client.sadd("tag:user_id:42", *tagged, "user:42:profile:expired-already")
    refused, _ = drop_tagged.fn(
        cache_target, "tag:user_id:42", 100, apply=True, max_keys=10, force=False
    )
    assert refused.refused and refused.matched == 251
    result, batches = drop_tagged.fn(
        cache_target, "tag:user_id:42", 100, apply=True, max_keys=1000, force=False
    )
    assert (result.matched, result.dropped) == (251, 250)
    assert sum(len(b) for b in batches) == 251
    assert not client.exists("tag:user_id:42")
    assert existing(cache_target, [*tagged, "user:43:profile:0"]) == {"user:43:profile:0"}


def test_versions_beyond_the_newest_two_go(cache_target: RedisTarget) -> None:
    client = client_for(cache_target)
    client.zadd("cache:versions:api_responses", {"v1": 1, "v2": 2, "v3": 3, "v4": 4})
    keys = [f"api:v{n}:/users/{i}" for n in range(1, 5) for i in range(20)]
    seed(cache_target, keys)
    known = read_versions.fn(cache_target, "cache:versions:api_responses")
    assert [v for v, _ in known] == ["v1", "v2", "v3", "v4"]
    for version in ("v1", "v2"):
        invalidate_pattern.fn(
            cache_target, f"api:{version}:*", OPTIONS, apply=True, max_keys=100, force=False
        )
        forget_version.fn(cache_target, "cache:versions:api_responses", version)
    assert {k.split(":")[1] for k in existing(cache_target, keys)} == {"v3", "v4"}
    assert client.zrange("cache:versions:api_responses", 0, -1) == [b"v3", b"v4"]


# The core of an invalidation (tasks.cache_scan, what invalidate_pattern runs with force), in a
# process of its own without Prefect, paced so it is still dropping when it is killed.
KILLED = """
import sys
import redis
from tasks.cache_scan import CacheConnection, ScanOptions, scan_pattern
client = redis.Redis.from_url(sys.argv[1])
conn = CacheConnection(sys.argv[1], client, [("node", client)], cluster=False)
print("started", flush=True)
scan_pattern(conn, "session:*", ScanOptions(scan_count=100, batch_size=20, pause_s=0.03), drop=True)
print("finished", flush=True)
"""


def test_a_run_killed_half_way_is_finished_by_the_next(redis_target: RedisTarget) -> None:
    keys = [f"session:{i}" for i in range(5_000)]
    seed(redis_target, [*keys, "user:1:profile:x"])
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, redis_target.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    client = client_for(redis_target)
    deadline = time.monotonic() + 30
    while client.dbsize() > 4_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    left = len(existing(redis_target, keys))
    assert 0 < left < 4_000, left  # it was killed half way
    again = invalidate_pattern.fn(
        redis_target, "session:*", OPTIONS, apply=True, max_keys=100_000, force=False
    )
    assert again.dropped == left and again.left == []
    assert existing(redis_target, [*keys, "user:1:profile:x"]) == {"user:1:profile:x"}


SUBSCRIBER = Path(__file__).with_name("l1_subscriber.py")
# Runs the docs' subscriber in its own process: an LRU dict with four keys, then "subscribed";
# on "dump" it prints the keys it still holds and how many notices it took.
RUNNER = """
import json, sys, threading, time
import redis
sys.path.insert(0, sys.argv[2])
from l1_subscriber import L1, listen
l1 = L1(size=100)
for key in ("user:42:profile:a", "user:*:profile:x", "agent:1:config:a", "agent:1:config:b"):
    l1.put(key, "value")
ready = threading.Event()
client = redis.Redis.from_url(sys.argv[1], decode_responses=True)
threading.Thread(target=listen, args=(client, l1, ready), daemon=True).start()
ready.wait(10)
print("subscribed", flush=True)
for line in sys.stdin:
    deadline = time.monotonic() + 5
    while l1.invalidations < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    with l1.lock:
        print(json.dumps({"keys": list(l1), "invalidations": l1.invalidations}), flush=True)
"""


def test_an_l1_holder_drops_what_the_notice_names(cache_target: RedisTarget) -> None:
    """docs/caches.md's subscriber, run as it is, in its own process, holding an LRU dict."""
    doc = (ROOT / "docs" / "caches.md").read_text()
    example = doc.split("```python\n# l1_subscriber.py\n", 1)[1].split("```", 1)[0]
    assert SUBSCRIBER.read_text().split("\n", 1)[1].strip() == example.strip()
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, cache_target.url, str(SUBSCRIBER.parent)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "subscribed"
        channel = POLICY.settings.l1_channel
        glob = r"user:\*:profile:*"
        notify_l1.fn(
            cache_target,
            channel,
            [
                l1_message(
                    run="r", cache="user_profiles", pattern=glob, regex=glob_regex(glob), keys=[]
                ),
                l1_message(
                    run="r", cache=None, pattern=None, regex=None, keys=["agent:1:config:a"]
                ),
            ],
        )
        proc.stdin.write("dump\n")
        proc.stdin.flush()
        line = ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = proc.stdout.readline().strip()
            if line.startswith("{"):
                break
        state = json.loads(line)
        assert state["invalidations"] == 2
        assert sorted(state["keys"]) == ["agent:1:config:b", "user:42:profile:a"]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_keys_are_found_on_every_master(cluster_target: RedisTarget) -> None:
    keys = [f"agent:{i}:state:s" for i in range(600)]
    seed(cluster_target, keys)
    with connected(cluster_target) as conn:
        assert conn.cluster and len(conn.masters) == 3
    result = invalidate_pattern.fn(
        cluster_target, "agent:*", OPTIONS, apply=False, max_keys=10, force=False
    )
    assert result.matched == 600 and len(result.nodes) == 3
    assert all(n > 100 for n in result.nodes.values())  # spread over the three masters


def test_redis_errors_are_one_line_naming_the_server() -> None:
    target = RedisTarget(url="redis://127.0.0.1:1/0", retries=0, socket_timeout_s=1)
    with pytest.raises(Exception, match=r"Redis at redis://127\.0\.0\.1:1/0 failed"):
        invalidate_pattern.fn(target, "a:*", OPTIONS, apply=False, max_keys=1, force=False)


def test_a_redis_restarted_during_the_scan_is_scanned_again_not_reported_done(
    tmp_path: Path,
) -> None:
    """A SCAN cursor means nothing to a restarted server (its hash seed is new): a pass that
    spans a restart missed about a fifth of 20,000 keys and the run said `dropped` (its sampled
    keys, from the first pages, were gone). Another pass drops the rest; a server that restarts
    during every pass fails the step saying so."""
    port = free_port()
    servers = [start_private_redis(port, tmp_path)]
    restarter: threading.Thread | None = None
    try:
        client = redis.Redis(port=port)
        keys = [f"workflow:{i}:definition:v1" for i in range(20_000)]
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.set(k, "v")
        pipe.execute()
        target = RedisTarget(url=f"redis://127.0.0.1:{port}/0", retries=10)

        def restart() -> None:  # during the count (200 SCAN calls, 10 ms apart)
            time.sleep(0.3)
            restart_private_redis(servers, port, tmp_path)

        restarter = threading.Thread(target=restart)
        restarter.start()
        slow = ScanOptions(scan_count=100, batch_size=100, pause_s=0.01)
        result = invalidate_pattern.fn(
            target, "workflow:*", slow, apply=True, max_keys=100_000, force=False
        )
        restarter.join()
        assert len(servers) == 2  # it did restart, during the run
        assert redis.Redis(port=port).dbsize() == 0
        assert result.passes >= 2 and result.restarted == []
        outcome = pattern_outcome(TARGET, "workflow:*", result, apply=True)
        assert outcome.result == "dropped"
    finally:
        if restarter is not None:  # never a server it starts after this one stops the rest
            restarter.join(timeout=30)
        for server in servers:
            server.terminate()
            server.wait(timeout=20)
    again = cache_keys.PatternResult(
        matched=5, dropped=3, samples=[], nodes={}, refused=None, passes=4, left=[],
        seconds=1.0, restarted=[f"127.0.0.1:{port}"],
    )  # fmt: skip
    failed = pattern_outcome(TARGET, "workflow:*", again, apply=True)
    assert failed.result == "failed"
    assert f"Redis 127.0.0.1:{port} restarted during each of 4 SCAN passes" in failed.reason


def test_a_redis_restarted_during_a_tags_sscan_is_scanned_again_not_reported_done(
    tmp_path: Path,
) -> None:
    """The tag's SSCAN cursor means nothing to a restarted server either: the members it had
    not reached stayed listed, their keys in Redis, and the run said `dropped`."""
    port = free_port()
    servers = [start_private_redis(port, tmp_path)]
    restarter: threading.Thread | None = None
    try:
        client = redis.Redis(port=port)
        keys = [f"user:{i}:profile:p" for i in range(60_000)]
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(keys), 1000):
            pipe.mset(dict.fromkeys(keys[i : i + 1000], "v"))
            pipe.sadd("tag:department:ops", *keys[i : i + 1000])
        pipe.execute()
        target = RedisTarget(url=f"redis://127.0.0.1:{port}/0", retries=10)

        def restart() -> None:  # once the drop is under way
            while int(redis.Redis(port=port).scard("tag:department:ops")) > 45_000:  # type: ignore[arg-type]
                time.sleep(0.001)
            restart_private_redis(servers, port, tmp_path)

        restarter = threading.Thread(target=restart)
        restarter.start()
        result, _ = drop_tagged.fn(
            target, "tag:department:ops", 100, apply=True, max_keys=100_000, force=False
        )
        restarter.join()
        assert len(servers) == 2  # it did restart, during the run
        assert redis.Redis(port=port).dbsize() == 0  # every key and the emptied index
        assert result.passes >= 2 and result.restarted == []
        # (UNLINK's own count: a batch UNLINKed as the server went down, whose reply was lost,
        # counts 0 when the retry finds its keys gone)
        assert len(keys) - 100 <= result.dropped <= len(keys)
    finally:
        if restarter is not None:  # never a server it starts after this one stops the rest
            restarter.join(timeout=30)
        for server in servers:
            server.terminate()
            server.wait(timeout=20)


def test_perfops_own_state_in_the_same_redis_is_never_dropped_by_a_pattern_or_a_tag(
    cache_target: RedisTarget,
) -> None:
    """perfops keeps its scaling locks, cooldowns and tuning, its SLA incidents and its stats
    sample under the block's key_prefix (`perfops:`) in the Redis it invalidates by default:
    `--pattern 'p*' --apply` (a literal prefix, under max_keys) dropped them with the
    `product:` keys; a group's cooldown gone, its next decision may scale in at once."""
    state = ["perfops:scaling:web:state", "perfops:sla:incident:api", "perfops:cache:stats:last"]
    products = [f"product:{i}" for i in range(20)]
    seed(cache_target, state + products)
    dry = invalidate_pattern.fn(cache_target, "p*", OPTIONS, apply=False, max_keys=100, force=False)
    assert (dry.matched, dry.protected) == (20, 3)
    done = invalidate_pattern.fn(cache_target, "p*", OPTIONS, apply=True, max_keys=100, force=False)
    assert (done.dropped, done.protected) == (20, 3)
    assert existing(cache_target, state + products) == set(state)
    row = pattern_outcome(TARGET, "p*", done, apply=True)
    assert row.result == "dropped"
    assert row.reason.endswith("; 3 keys of perfops' own state (perfops:*) left alone")
    forced = invalidate_pattern.fn(cache_target, "*", OPTIONS, apply=True, max_keys=100, force=True)
    assert forced.protected == 3 and existing(cache_target, state) == set(state)
    client_for(cache_target).sadd("tag:user_id:9", "user:9:profile:a", *state)
    seed(cache_target, ["user:9:profile:a"])
    tagged, _ = drop_tagged.fn(
        cache_target, "tag:user_id:9", 100, apply=True, max_keys=100, force=False
    )
    assert (tagged.dropped, tagged.protected) == (1, 3)
    assert existing(cache_target, state) == set(state)
