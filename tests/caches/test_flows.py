"""The cache flows end to end through Prefect (few runs: each costs about a second): their
artifacts, events, final states and the `perfops cache` commands."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from blocks import RedisTarget
from blocks.cdn import CdnTarget
from flows.invalidate_cache import invalidate_cache
from perfops.errors import BlockNotFound
from tests.caches.conftest import client_for
from tests.records import artifact_rows, failed_run, one_target, wait_for_event
from tests.servers.cdn import CdnStandIn

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parents[2]


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
    assert [o.result for o in again.outcomes] == [
        "dropped",
        "nothing to drop",
        "notified",
        "purged",
    ]
    assert cdn.purged["prefixes"] == ["cdn.example.com/static/a1/"]
    assert client.zrange("cache:versions:static_assets", 0, -1) == [b"b2", b"c3"]


def test_a_mistyped_cdn_block_fails_the_run_before_any_key_goes(
    redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(redis_target)
    client.zadd("cache:versions:static_assets", {"a1": 1, "b2": 2, "c3": 3})
    client.set("static:a1:app.js", "x")
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    state = invalidate_cache(
        versions="static_assets", apply=True, cdn_block="perfops-cdn-typo", return_state=True
    )
    assert state.is_failed()
    assert client.get("static:a1:app.js") == b"x"
    assert client.zcard("cache:versions:static_assets") == 3
    assert "cdn_block: no perfops-cdn-target block named 'perfops-cdn-typo'" in (
        state.message or ""
    )


class NotJsonPurgeApi:
    """A purge API that answers 200 with an HTML page (a proxy's, a wrong base_url)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                body = b"<html>purged, probably</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/client/v4"


def test_a_cdn_answer_that_is_not_json_fails_the_run_with_its_record(
    redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    since = datetime.now(UTC)
    api = NotJsonPurgeApi()
    client = client_for(redis_target)
    client.zadd("cache:versions:static_assets", {"a1": 1, "b2": 2, "c3": 3})
    client.set("static:a1:app.js", "x")
    CdnTarget(base_url=api.base_url, zone_id="z1", api_token=SecretStr("t"), retries=0).save(
        "perfops-test-cdn-html", overwrite=True
    )
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    try:
        state = invalidate_cache(
            versions="static_assets", apply=True, cdn_block="perfops-test-cdn-html",
            return_state=True,
        )  # fmt: skip
    finally:
        api.server.shutdown()
        api.server.server_close()
    report, message = failed_run(state)
    assert "answered HTTP 200 without a JSON body" in message
    rows = artifact_rows("perfops-cache-invalidation")
    assert rows[-1]["kind"] == "cdn" and rows[-1]["result"] == "failed"
    event = wait_for_event("perfops.cache.invalidated", since=since)
    assert event.payload["failed"] == [report.outcomes[-1].target]
    assert client.zcard("cache:versions:static_assets") == 3  # a1 stays for the rerun


def test_a_cdn_block_gone_between_the_check_and_the_purge_is_a_failed_row(
    redis_target: RedisTarget, cdn_target: CdnTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.invalidate_cache as module

    def deleted(*args: Any) -> None:
        raise BlockNotFound("no perfops-cdn-target block named 'perfops-test-cdn-gone'")

    since = datetime.now(UTC)
    client = client_for(redis_target)
    client.zadd("cache:versions:static_assets", {"a1": 1, "b2": 2, "c3": 3})
    cdn_target.save("perfops-test-cdn-gone", overwrite=True)
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    monkeypatch.setattr(module, "load_block", deleted)
    state = invalidate_cache(
        versions="static_assets", apply=True, cdn_block="perfops-test-cdn-gone", return_state=True
    )
    report, message = failed_run(state)
    assert "BlockNotFound: no perfops-cdn-target block named 'perfops-test-cdn-gone'" in message
    rows = artifact_rows("perfops-cache-invalidation")
    assert [r["result"] for r in rows] == ["dropped", "nothing to drop", "notified", "failed"]
    assert report.outcomes[-1].kind == "cdn"
    event = wait_for_event("perfops.cache.invalidated", since=since)
    assert event.payload["failed"] == [report.outcomes[-1].target]


def test_l1_holders_are_told_even_when_redis_had_nothing_to_drop(
    redis_target: RedisTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An L1 copy can outlive its L2 key (expired, evicted): the notice goes all the same."""
    channel = f"perfops-test-{uuid.uuid4().hex}:l1"  # pub/sub is shared by every Redis db
    policy = tmp_path / "caches.yaml"
    policy.write_text(
        (ROOT / "deployments" / "caches.yaml")
        .read_text()
        .replace('l1_channel: "perfops:cache:invalidate"', f'l1_channel: "{channel}"'),
        encoding="utf-8",
    )
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    subscriber = client_for(redis_target).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(channel)
    try:
        report = one_target(
            invalidate_cache, event="profile_changed", payload={"user_id": "77"}, apply=True,
            policy_path=str(policy),
        )  # fmt: skip
        notices: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while not notices and time.monotonic() < deadline:
            if (message := subscriber.get_message(timeout=0.2)) is not None:
                notices.append(json.loads(message["data"]))
    finally:
        subscriber.close()
    assert [o.result for o in report.outcomes] == ["nothing to drop", "notified"]
    assert [(n["cache"], n["pattern"]) for n in notices] == [("user_profiles", "user:77:profile:*")]


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


def test_a_tags_dry_run_says_what_apply_would_refuse_as_a_patterns_does(
    redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag listing more keys than max_keys: the dry run said 'would drop 5 keys' and no
    more, then --apply refused it."""
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    client = client_for(redis_target)
    keys = [f"user:7:profile:{i}" for i in range(5)]
    client.mset(dict.fromkeys(keys, "x"))
    client.sadd("tag:user_id:7", *keys)
    dry = one_target(invalidate_cache, tag="user_id=7", max_keys=3)
    [row] = dry.outcomes
    assert row.result == "would drop" and row.reason.startswith("5 keys match (dry run); --apply: ")
    assert "tag:user_id:7 matches more than max_keys 3 keys" in row.reason
    report, _ = failed_run(
        invalidate_cache(tag="user_id=7", max_keys=3, apply=True, return_state=True)
    )
    assert report.outcomes[0].result == "refused" and client.exists(*keys) == 5


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
