"""Warm-up after an invalidation, on the real Redis and an HTTP application stand-in: an
invalidation of a proactively refreshed cache (agent_configs) hands the keys it dropped to
warm_cache through its perfops.cache.invalidated event, which warms them again from the cache's
warm_url; one of a lazily refreshed cache (user_sessions) asks for nothing. (The trigger itself:
tests/caches/test_trigger.py and tests/e2e/test_caches_e2e.py.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blocks import RedisTarget
from flows.invalidate_cache import invalidate_cache
from flows.warm_cache import warm_cache
from tests.caches.conftest import App, client_for
from tests.records import one_target, wait_for_event

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_harness")


def policy_warming_from(app: App, folder: Path) -> Path:
    """deployments/caches.yaml with agent_configs' warm_url on the stand-in."""
    text = (ROOT / "deployments" / "caches.yaml").read_text()
    text = text.replace("https://app.internal/internal/cache/{key}", app.url)
    path = folder / "caches.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_an_agent_update_drops_its_keys_and_its_event_warms_the_configs_again(
    app: App, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    policy = str(policy_warming_from(app, tmp_path))
    client = client_for(redis_target)
    configs = ["agent:7:config:main", "agent:7:config:tools"]
    client.mset({**dict.fromkeys(configs, "old"), "agent:7:state:run": "s",
                 "agent:8:config:main": "other", "session:abc": "x"})  # fmt: skip
    since = datetime.now(UTC)

    report = one_target(
        invalidate_cache,
        event="agent_updated",
        payload={"agent_id": "7"},
        apply=True,
        policy_path=policy,
    )
    assert report.failure is None, report.failure
    assert sorted(k.decode() for k in client.keys("*")) == ["agent:8:config:main", "session:abc"]
    assert report.warm is not None
    assert (report.warm.cache, sorted(report.warm.dropped_keys)) == ("agent_configs", configs)
    assert (report.warm.pattern, report.warm.dropped) == ("agent:7:config:*", 2)
    event = wait_for_event("perfops.cache.invalidated", since=since)
    assert event.resource["perfops.cache.warm"] == "agent_configs"
    warm = event.payload["warm"]

    # what the warm_cache deployment's trigger runs: the event's cache and keys, no URL (the
    # cache's warm_url), the invalidation's Redis block (none here: PERFOPS_REDIS_URL)
    done = one_target(
        warm_cache,
        cache=warm["cache"],
        keys=warm["dropped_keys"],
        redis_block=warm["redis_block"],
        policy_path=policy,
    )
    assert (done.warmed, done.failed) == (2, 0)
    assert sorted(app.seen) == configs
    assert json.loads(client.get("agent:7:config:main")) == {"key": "agent:7:config:main"}
    assert client.get("agent:7:state:run") is None  # agent_state is not warmed
    assert 1620 - 2 <= client.ttl("agent:7:config:tools") <= 1980  # 30 min +-10%


def test_a_session_invalidation_asks_for_no_warm_up(
    redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    client_for(redis_target).mset({"session:abc": "x", "session:def": "y"})
    since = datetime.now(UTC)
    report = one_target(invalidate_cache, pattern="session:*", apply=True)
    assert report.dropped == 2 and report.warm is None
    event = wait_for_event("perfops.cache.invalidated", since=since)
    assert "perfops.cache.warm" not in event.resource
    assert event.payload["warm"] is None
