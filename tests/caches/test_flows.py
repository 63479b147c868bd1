"""The cache flows end to end through Prefect (few runs: each costs about a second): their
artifacts, events, final states and the `perfops cache` commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from blocks import RedisTarget
from blocks.cdn import CdnTarget
from flows.invalidate_cache import invalidate_cache
from tests.caches.conftest import client_for
from tests.records import artifact_rows, failed_run, one_target, wait_for_event
from tests.servers.cdn import CdnStandIn

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_deploy_event_drops_old_versions_and_purges_them_at_the_cdn(
    redis_target: RedisTarget,
    cdn: CdnStandIn,
    cdn_target: CdnTarget,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    since = datetime.now(UTC)
    client = client_for(redis_target)
    client.zadd("cache:versions:static_assets", {"a1": 1, "b2": 2, "c3": 3})
    for version in ("a1", "b2", "c3"):
        client.mset({f"static:{version}:app.js": "x", f"static:{version}:app.css": "y"})
    cdn_target.save("perfops-test-cdn", overwrite=True)
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    report = one_target(
        invalidate_cache,
        event="platform.static.deployed",
        payload="{}",
        apply=True,
        cdn_block="perfops-test-cdn",
    )
    assert report.failure is None, report.failure
    assert sorted(k.decode() for k in client.keys("static:*")) == [
        "static:b2:app.css",
        "static:b2:app.js",
        "static:c3:app.css",
        "static:c3:app.js",
    ]
    assert client.zrange("cache:versions:static_assets", 0, -1) == [b"b2", b"c3"]
    assert cdn.purged["prefixes"] == ["cdn.example.com/static/a1/"]
    rows = artifact_rows("perfops-cache-invalidation")
    assert [r["result"] for r in rows] == ["dropped", "dropped", "notified", "purged"]
    assert rows[1]["target"] == "static_assets: static:a1:*" and rows[1]["dropped"] == 2
    event = wait_for_event("perfops.cache.invalidated", since=since)
    assert event.payload["dropped"] == 2 and event.payload["caches"] == ["static_assets"]
    assert event.resource.id.startswith("perfops.redis.127.0.0.1:6379/")
    wait_for_event("perfops.cache.cdn_purged", since=since)


def test_a_failed_cdn_purge_keeps_the_old_version_listed_and_the_rerun_purges_it(
    redis_target: RedisTarget,
    cdn: CdnStandIn,
    cdn_target: CdnTarget,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = client_for(redis_target)
    client.zadd("cache:versions:static_assets", {"a1": 1, "b2": 2, "c3": 3})
    for version in ("a1", "b2", "c3"):
        client.set(f"static:{version}:app.js", "x")
    cdn_target.retries = 0
    cdn_target.save("perfops-test-cdn-once", overwrite=True)
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    cdn.fail_next(503)
    state = invalidate_cache(
        versions="static_assets", apply=True, cdn_block="perfops-test-cdn-once", return_state=True
    )
    report, message = failed_run(state)
    assert report.outcomes[-1].kind == "cdn"
    assert "HTTP 503" in message and "versions a1 stay listed: run again" in message
    assert client.keys("static:a1:*") == []
    assert client.zrange("cache:versions:static_assets", 0, -1) == [b"a1", b"b2", b"c3"]
    assert cdn.purged["prefixes"] == []

    again = one_target(
        invalidate_cache, versions="static_assets", apply=True, cdn_block="perfops-test-cdn-once"
    )
    assert again.failure is None, again.failure
    assert [o.result for o in again.outcomes] == ["dropped", "nothing to drop", "purged"]
    assert cdn.purged["prefixes"] == ["cdn.example.com/static/a1/"]
    assert client.zrange("cache:versions:static_assets", 0, -1) == [b"b2", b"c3"]


def test_a_bare_pattern_is_refused_the_run_fails_and_nothing_goes(
    redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    client = client_for(redis_target)
    client.mset({"user:1:profile:a": "x", "session:9": "y"})
    state = invalidate_cache(pattern="*", apply=True, return_state=True)
    report, message = failed_run(state)
    assert "has no literal prefix and spans every cache" in message
    assert client.dbsize() == 2
    assert [r["result"] for r in artifact_rows("perfops-cache-invalidation")] == ["refused"]
    assert report.outcomes[0].result == "refused"


def test_cli_dry_run_of_a_hostile_event_counts_the_literal_user_only(
    redis_target: RedisTarget,
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = client_for(redis_target)
    client.mset({"user:*:profile:a": "x", "user:1:profile:a": "x", "user:2:preferences:b": "y"})
    code = perfops(
        ["cache", "invalidate", "--event", "user_updated",
         "--payload", json.dumps({"user_id": "*"}),
         "--redis-url", redis_target.url, "--json"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["dry_run"] is True
    assert [(o["target"], o["matched"]) for o in report["outcomes"]] == [
        ("user_profiles: user:\\*:profile:*", 1),
        ("user_preferences: user:\\*:preferences:*", 0),
    ]
    assert client.dbsize() == 3  # a dry run changes nothing


def test_cli_refuses_bad_usage(
    perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert perfops(["cache", "invalidate", "--pattern", "a:*", "--tag", "user_id=1"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert perfops(["cache", "invalidate", "--event", "user_updated", "--payload", "{"]) == 2
    assert "--payload is not JSON" in capsys.readouterr().err
    assert perfops(["cache", "invalidate", "--pattern", "a:*", "--force"]) == 2
    assert "--force goes with --apply" in capsys.readouterr().err


def test_cli_cache_stats_on_one_redis_and_refused_with_a_fleet(
    redis_target: RedisTarget,
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = client_for(redis_target)
    client.mset({f"user:{i}:profile:a": "x" for i in range(40)})
    assert perfops(["cache", "stats", "--redis-url", redis_target.url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["key_count"] >= 40 and report["failed"] is None
    assert any(p["prefix"].startswith("user") and p["estimated_keys"] for p in report["prefixes"])
    assert perfops(["cache", "stats", "--redis-url", redis_target.url]) == 0
    assert "cache statistics of" in capsys.readouterr().out
    code = perfops(["cache", "stats", "--fleet", "all", "--redis-url", redis_target.url])
    assert code == 2
    assert "--redis-url" in capsys.readouterr().err
