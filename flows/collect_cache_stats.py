"""collect_cache_stats: every 5 minutes, the cache's hit ratio since the previous run, evictions,
expirations, memory against maxmemory, fragmentation, and per key prefix (the policy's caches)
the estimated keys and memory, keys without a TTL and big keys, from a sample of keys. CLI
`perfops cache stats`.

Read-only, except the previous sample perfops keeps in Redis (`perfops:cache:stats:last`, a
hash, 7 days' TTL) so the ratio is measured between runs. Events: `perfops.cache.stats_collected`
every run (the weekly report's Caches section reads it), `perfops.cache.hit_ratio_low` under the
policy's `hit_ratio_target`, `perfops.cache.evictions_climbing` past `evictions_alert`. Failed
only when Redis does not answer. Over a fleet (`targets`, the targets with a `redis` block): one
child run per cache, artifact `perfops-cache-stats-<target>`, summary `perfops-cache-stats-fleet`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.resolve import resolve_redis
from decisions.cache_policy import load_policy
from decisions.cache_stats import EVENT_COLLECTED, StatsReport, artifact_rows, between, report
from decisions.fleet import FleetReport, keyed, target_labels
from perfops.redaction import install_log_redaction
from tasks.cache_keys import resource_id
from tasks.cache_stats import read_previous, sample_keys, sample_nodes, store_sample
from tasks.fleet_runs import fan_out, verified_fleet_target
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-cache-stats"
FLEET_ARTIFACT_KEY = "perfops-cache-stats-fleet"
EVENT_FLEET = "perfops.cache.fleet_stats_collected"


@flow(
    name="collect_cache_stats",
    description="Cache hit ratio between runs, evictions, expirations, memory, fragmentation, "
    "per-prefix keys and memory, keys without TTL, big keys (sampled SCAN + MEMORY USAGE); "
    "events when the hit ratio is under target or evictions climb. Read-only.",
    log_prints=False,
)
def collect_cache_stats(
    policy_path: str = "deployments/caches.yaml",
    sample: int | None = None,
    redis_block: str | None = None,
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> StatsReport | FleetReport:
    """Measure the cache, or every cache of a fleet.

    Args:
        policy_path: the cache policy (prefixes, hit_ratio_target, evictions_alert,
            big_key_bytes, stats_sample_keys).
        sample: keys sampled for the per-prefix figures (default: the policy's, 10,000).
        redis_block: a `perfops-redis-target` block (default `PERFOPS_REDIS_URL`, else local).
        targets: run over a fleet instead (`deployments/fleet.yaml`, docs/fleet.md): a named
            fleet, `all`, a label `key=value`, or target names; the targets with a `redis`
            block, one child run each, a summary artifact `perfops-cache-stats-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child: keys its artifact
            (`perfops-cache-stats-<target>`) and labels its events.
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    if targets is not None:  # the parent of a fleet run: one child run per cache
        return fan_out(
            collect_cache_stats,
            targets,
            fleet_file,
            {"policy_path": policy_path, "sample": sample},
            artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET,
            dry_run=False,
            changes=False,
            system="redis",
            block_parameter="redis_block",
            block_given=redis_block,
        )
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    logger = get_run_logger()
    policy = load_policy(policy_path)
    settings = policy.settings
    redis = resolve_redis(redis_block)
    target = redis.value
    # The counters first; the next run's baseline is taken after this run's own reads (the
    # sample's TTLs count as keyspace hits), so the ratio is the application's alone.
    cluster, current = sample_nodes(target)
    previous = read_previous(target)
    nodes = [between(previous.get(s.node), s) for s in current]
    samples = sample_keys(target, sample or settings.stats_sample_keys, settings.scan_count)
    _, baseline = sample_nodes(target)
    store_sample(target, baseline)
    stats = report(redis.description, cluster, nodes, samples, policy, settings)
    logger.info("%s: %s", redis.description, stats.summary)
    publish_table(
        keyed(ARTIFACT_KEY, fleet_target),
        artifact_rows(stats),
        f"Cache statistics of {redis.description}: {stats.summary}. Per prefix from "
        f"{stats.sampled:,} sampled keys (SCAN + MEMORY USAGE), scaled to all keys.",
    )
    resource = resource_id(target)
    emit(
        EVENT_COLLECTED,
        resource,
        {
            "hit_ratio": stats.hit_ratio,
            "hits": stats.hits,
            "misses": stats.misses,
            "evicted": stats.evicted,
            "expired": stats.expired,
            "used_memory": stats.used_memory,
            "maxmemory": stats.maxmemory,
            "fragmentation": stats.fragmentation,
            "keys": stats.key_count,
            "no_ttl_prefixes": [p.prefix for p in stats.prefixes if p.no_ttl],
            "big_keys": [b.key for b in stats.big_keys],
            "prefixes": [
                {"prefix": p.prefix, "keys": p.estimated_keys, "bytes": p.estimated_bytes}
                for p in stats.prefixes[:5]
            ],
        },
        **target_labels(fleet_target),
    )
    for event, reason in stats.alerts:
        logger.warning("%s", reason)
        emit(
            event,
            resource,
            {"reason": reason, "hit_ratio": stats.hit_ratio, "evicted": stats.evicted},
            **target_labels(fleet_target),
        )
    return end_run(stats, stats.failed)
