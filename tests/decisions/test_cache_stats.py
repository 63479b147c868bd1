"""Cache statistics decisions: deltas between samples, restarts, per-prefix estimates, alerts."""

from __future__ import annotations

from pathlib import Path

from decisions.cache_policy import load_policy
from decisions.cache_stats import (
    EVENT_EVICTIONS,
    EVENT_HIT_RATIO_LOW,
    KeySample,
    NodeSample,
    artifact_rows,
    between,
    by_prefix,
    report,
)

POLICY = load_policy(Path(__file__).resolve().parents[2] / "deployments" / "caches.yaml")


def sample(**changes: float) -> NodeSample:
    values = {
        "node": "n1", "at": 1000.0, "keyspace_hits": 100, "keyspace_misses": 50,
        "evicted_keys": 0, "expired_keys": 5, "used_memory": 100 * 2**20,
        "maxmemory": 200 * 2**20, "fragmentation": 1.1, "key_count": 1000, "uptime_s": 500,
    }  # fmt: skip
    return NodeSample.model_validate({**values, **changes})


def test_the_hit_ratio_is_measured_between_samples() -> None:
    stats = between(sample(), sample(at=1300, keyspace_hits=1000, keyspace_misses=150,
                                     evicted_keys=7, uptime_s=800))  # fmt: skip
    assert (stats.hits, stats.misses, stats.evicted, stats.seconds) == (900, 100, 7, 300)
    assert stats.hit_ratio == 0.9 and stats.memory_share == 0.5


def test_no_ratio_on_the_first_sample_or_after_a_restart() -> None:
    assert between(None, sample()).hit_ratio is None
    restarted = between(sample(), sample(keyspace_hits=3, uptime_s=10))
    assert restarted.hit_ratio is None and "restarted" in restarted.note


def test_the_summary_says_why_there_is_no_ratio_yet() -> None:
    first = report("local", False, [between(None, sample())], [], POLICY, POLICY.settings)
    assert first.summary.startswith(
        "no hit ratio or evictions yet (first sample: ratio from the next run), 1,000 keys"
    )
    one = between(sample(), sample(keyspace_hits=190, evicted_keys=1, uptime_s=900))
    later = report("local", False, [one], [], POLICY, POLICY.settings)
    assert later.summary.startswith("hit ratio 100.0%, 1 eviction, 1,000 keys")


def test_prefixes_are_the_policys_caches_scaled_to_all_keys() -> None:
    samples = [KeySample(key=f"user:{i}:profile:x", bytes=100, ttl_s=60) for i in range(3)]
    samples.append(KeySample(key="legacy:thing", bytes=1000, ttl_s=-1))
    [legacy, profiles] = by_prefix(samples, total_keys=400, policy=POLICY)
    assert (legacy.prefix, legacy.estimated_keys, legacy.no_ttl) == ("legacy:", 100, 1)
    assert (profiles.prefix, profiles.estimated_keys, profiles.estimated_bytes) == (
        "user_profiles",
        300,
        30_000,
    )


def test_a_low_ratio_and_climbing_evictions_raise_events() -> None:
    nodes = [between(sample(), sample(keyspace_hits=150, keyspace_misses=150, evicted_keys=5000,
                                      uptime_s=900))]  # fmt: skip
    big = KeySample(key="report:huge", bytes=5 * 2**20, ttl_s=-1)
    stats = report("local", False, nodes, [big], POLICY, POLICY.settings)
    assert [e for e, _ in stats.alerts] == [EVENT_HIT_RATIO_LOW, EVENT_EVICTIONS]
    assert "hit ratio 33.3% since the last sample is under the target 80%" in stats.alerts[0][1]
    assert stats.big_keys == [big]
    rows = artifact_rows(stats)
    assert rows[0]["result"] == "hit ratio low" and rows[-1]["what"] == "key report:huge"
