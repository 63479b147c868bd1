"""warm_cache: fill a cache ahead of traffic (on a schedule, and after an invalidation): keys from
a list, a SQL query or a key -> URL map; values fetched from the application over HTTP (bounded
concurrency, 429-aware) or computed by the query in PostgreSQL; written with the cache's TTL
plus jitter, pipelined. CLI `perfops cache warm`.

After an invalidation: the deployment's trigger on `perfops.cache.invalidated` (events labelled
`perfops.cache.warm`, emitted only for a cache whose policy says `warm_after_invalidation`,
which needs `refresh: proactive`) runs it with the event's cache, the keys it dropped and its
Redis block; values come from the cache's `warm_url`.

Warming only writes fresh values, so it acts by default; `dry_run` lists what it would fetch.
The run ends Failed when a key could not be warmed (artifact `perfops-cache-warmup` lists
which and why), unless `allow_partial`. Over a fleet (`targets`, the targets with a `redis`
block): one child run per Redis, artifact `perfops-cache-warmup-<target>`, summary
`perfops-cache-warmup-fleet`.
"""

from __future__ import annotations

import random
import time
from urllib.parse import quote

from prefect import flow, get_run_logger

from blocks.resolve import resolve_postgres, resolve_redis
from decisions.cache_policy import load_policy
from decisions.cache_warmup import (
    WarmFailure,
    WarmReport,
    artifact_rows,
    not_of_cache,
    ttl_with_jitter,
)
from decisions.fleet import FleetReport, keyed, target_labels
from perfops.errors import ConfigurationError
from perfops.redaction import install_log_redaction
from tasks.cache_keys import resource_id
from tasks.cache_warmup import fetch_values, query_entries, write_values
from tasks.fleet_runs import fan_out, verified_fleet_target
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-cache-warmup"
FLEET_ARTIFACT_KEY = "perfops-cache-warmup-fleet"
EVENT_FLEET = "perfops.cache.fleet_warmed"
EVENT_WARMED = "perfops.cache.warmed"


@flow(
    name="warm_cache",
    description="Warm a cache: keys from a list, a SQL query or URLs; values over HTTP "
    "(bounded concurrency, 429-aware) or from PostgreSQL; TTL plus jitter; pipelined writes.",
    log_prints=False,
)
def warm_cache(
    cache: str,
    keys: list[str] | None = None,
    url_template: str | None = None,
    urls: dict[str, str] | None = None,
    keys_sql: str | None = None,
    concurrency: int = 8,
    ttl_s: int | None = None,
    dry_run: bool = False,
    allow_partial: bool = False,
    policy_path: str = "deployments/caches.yaml",
    redis_block: str | None = None,
    postgres_block: str | None = None,
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> WarmReport | FleetReport:
    """Warm the policy's cache `cache`, on one Redis or on every Redis of a fleet.

    Args:
        cache: a cache of the policy (its TTL, unless `ttl_s`).
        keys: the keys to warm; with `url_template` (`https://app/api/{key}`, the key URL-quoted)
            their values are fetched. The warm_cache deployment's trigger passes the keys an
            invalidation dropped (its perfops.cache.invalidated event).
        url_template: where a key's value is fetched from (default: the cache's `warm_url`).
        urls: key -> URL instead.
        keys_sql: a read-only query returning (key, value) (values from PostgreSQL) or (key)
            (fetched through `url_template`); a NULL value is fetched too, a NULL key refused.
        concurrency: HTTP requests in flight (1-64).
        ttl_s: TTL in seconds instead of the cache's; jitter from the policy (ttl_jitter).
        dry_run: list what would be fetched; write nothing.
        allow_partial: end Completed when only some keys failed.
        policy_path: the cache policy file.
        redis_block, postgres_block: blocks (default `PERFOPS_REDIS_URL` / `PERFOPS_DSN`).
        targets: run over a fleet instead (`deployments/fleet.yaml`, docs/fleet.md): a named
            fleet, `all`, a label `key=value`, or target names; the targets with a `redis`
            block, one child run each (the same keys and values; `keys_sql` runs once per
            target), a summary artifact `perfops-cache-warmup-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child: keys its artifact
            (`perfops-cache-warmup-<target>`) and labels its events.
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    logger = get_run_logger()
    started = time.monotonic()
    if not 1 <= concurrency <= 64:
        raise ConfigurationError(f"concurrency must be 1-64, got {concurrency}")
    policy = load_policy(policy_path)
    spec = policy.cache(cache)
    sources = [n for n, v in (("keys", keys), ("urls", urls), ("keys_sql", keys_sql)) if v]
    if len(sources) != 1:
        raise ConfigurationError(
            "give exactly one of keys, urls or keys_sql; got " + (", ".join(sources) or "none")
        )
    foreign = not_of_cache(policy, spec, [*(keys or []), *(urls or {})])
    if foreign:  # checked once, before any child or fetch
        raise ConfigurationError(foreign)
    if targets is not None:  # the parent of a fleet run: one child run per Redis
        asked = {"cache": cache, "keys": keys, "url_template": url_template, "urls": urls,
                 "keys_sql": keys_sql, "concurrency": concurrency, "ttl_s": ttl_s,
                 "dry_run": dry_run, "allow_partial": allow_partial, "policy_path": policy_path,
                 "postgres_block": postgres_block}  # fmt: skip
        return fan_out(
            warm_cache, targets, fleet_file, asked, artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET, dry_run=dry_run, changes=not dry_run, system="redis",
            block_parameter="redis_block",
        )  # fmt: skip
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    computed: dict[str, bytes] = {}
    wanted: dict[str, str] = dict(urls or {})
    if keys_sql:
        rows = query_entries(resolve_postgres(postgres_block).value, keys_sql)
        foreign = not_of_cache(policy, spec, (k for k, _ in rows))
        if foreign:
            raise ConfigurationError(f"the warm-up query: {foreign}")
        computed = {k: v.encode() for k, v in rows if v is not None}
        keys = [k for k, v in rows if v is None]
    if keys:
        template = url_template or spec.warm_url
        if not template or "{key}" not in template:
            raise ConfigurationError(
                f"keys without values need url_template (or {cache}'s warm_url in the policy) "
                "with {key} in it"
            )
        wanted = {k: template.replace("{key}", quote(k, safe="")) for k in keys}
    redis = resolve_redis(redis_block)
    ttl = ttl_s or int(spec.ttl.total_seconds())
    source = "sql" if keys_sql and computed else "urls"
    requested = len(computed) + len(wanted)
    logger.info("%s: %d keys from %s%s", cache, requested, source, " (dry run)" if dry_run else "")
    failures: list[WarmFailure] = []
    warmed = rate_limited = 0
    if not dry_run:
        fetched = fetch_values(wanted, concurrency) if wanted else None
        values = computed | (fetched.values if fetched else {})
        if fetched:
            rate_limited = fetched.rate_limited
            failures = [WarmFailure(key=k, reason=r) for k, r in sorted(fetched.failures.items())]
        rng = random.Random()
        ttls = {k: ttl_with_jitter(ttl, policy.settings.ttl_jitter, rng.random) for k in values}
        warmed = write_values(redis.value, values, ttls) if values else 0
    report = WarmReport(
        cache=cache,
        source=source,
        redis=redis.description,
        dry_run=dry_run,
        requested=requested,
        warmed=warmed,
        failed=len(failures),
        ttl_s=ttl,
        jitter=policy.settings.ttl_jitter,
        rate_limited=rate_limited,
        failures=failures,
        seconds=round(time.monotonic() - started, 3),
    )
    logger.info("%s in %.1f s", report.summary, report.seconds)
    publish_table(
        keyed(ARTIFACT_KEY, fleet_target),
        artifact_rows(report),
        f"Cache warm-up: {report.summary}.",
    )
    emit(
        EVENT_WARMED,
        resource_id(redis.value),
        {
            "cache": cache,
            "dry_run": dry_run,
            "requested": requested,
            "warmed": warmed,
            "failed": len(failures),
            "rate_limited": rate_limited,
            "seconds": report.seconds,
        },
        **{"perfops.cache": cache},
        **target_labels(fleet_target),
    )
    return end_run(report, report.failure, partial=report.warmed > 0, allow_partial=allow_partial)
