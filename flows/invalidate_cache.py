"""invalidate_cache: drop the cache entries an application event, a key pattern, a tag or a
version bump makes stale, on Redis or a Redis Cluster, tell the L1 holders, purge the CDN.
CLI `perfops cache invalidate`; deployment triggered by `platform.*` events (prefect.yaml).

What goes comes from `deployments/caches.yaml` (decisions.cache_policy): an event's caches (a
group expanded) with the payload's values escaped as literal glob text; a `--pattern`; the keys
in a tag index set; a versioned cache's versions older than its newest `keep_versions`.
Dry run by default (`apply=False`): counts and samples what would go. With `apply`, a pattern
that has no literal prefix or matches more than `max_keys` (100,000) is refused unless `force`.
Keys go by SCAN MATCH COUNT + pipelined UNLINK batches on every master (never KEYS or FLUSH*);
sampled keys are checked gone afterwards. Every step is idempotent: a run that died half way is
finished by running it again. The run ends Failed when a step was refused or failed, the
artifact `perfops-cache-invalidation` and the event still written.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from blocks.cdn import CdnTarget
from blocks.resolve import load_block, resolve_redis
from decisions.cache_invalidation import (
    InvalidationReport,
    Outcome,
    artifact_rows,
    l1_message,
    pattern_outcome,
)
from decisions.cache_policy import (
    Target,
    cdn_items,
    fill,
    glob_regex,
    load_policy,
    parse_payload,
    refusal,
    resolve_request,
    versions_to_drop,
)
from perfops.errors import PerfopsError
from perfops.redaction import install_log_redaction
from tasks.cache_keys import (
    ScanOptions,
    drop_tagged,
    forget_version,
    invalidate_pattern,
    notify_l1,
    read_versions,
    resource_id,
)
from tasks.cdn import purge_cdn
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-cache-invalidation"
EVENT_INVALIDATED = "perfops.cache.invalidated"
EVENT_PREVIEWED = "perfops.cache.previewed"
EVENT_CDN = "perfops.cache.cdn_purged"
DEFAULT_POLICY = "deployments/caches.yaml"


@flow(
    name="invalidate_cache",
    description="Drop the cache keys an event, a pattern, a tag or a version bump makes stale "
    "(SCAN + pipelined UNLINK per master, never KEYS/FLUSH), tell L1 holders over pub/sub, "
    "purge the CDN. Dry run unless apply; past max_keys or a bare pattern needs force.",
    log_prints=False,
)
def invalidate_cache(
    event: str | None = None,
    payload: dict[str, Any] | str | None = None,
    pattern: str | None = None,
    tag: str | None = None,
    versions: str | None = None,
    apply: bool = False,
    force: bool = False,
    max_keys: int | None = None,
    pause_ms: float = 0.0,
    policy_path: str = DEFAULT_POLICY,
    redis_block: str | None = None,
    cdn_block: str | None = None,
) -> InvalidationReport:
    """Invalidate cache entries.

    Args:
        event: an application event of the policy (`user_updated`) or the Prefect event that
            carries it (`platform.user.updated`); its caches' keys are filled from `payload`.
        payload: the event's payload (a JSON object or its text), e.g. {"user_id": "42"}.
        pattern: a Redis glob instead (`user:42:*`).
        tag: `NAME=VALUE` instead: the keys in the tag index set `tag:NAME:VALUE`.
        versions: a versioned cache instead: drop its versions older than its newest
            `keep_versions`.
        apply: drop; default False counts and samples only.
        force: drop even a pattern with no literal prefix or past `max_keys`.
        max_keys: refuse past this many keys (default: the policy's, 100,000).
        pause_ms: pause after each SCAN call (pacing for a busy server; default none).
        policy_path: the cache policy file.
        redis_block: a `perfops-redis-target` block (default `PERFOPS_REDIS_URL`, else local).
        cdn_block: a `perfops-cdn-target` block; without it CDN purges are skipped (reported).
    """
    install_log_redaction()
    logger = get_run_logger()
    started = time.monotonic()
    policy = load_policy(policy_path)
    request, targets = resolve_request(
        policy, event, parse_payload(payload), pattern, tag, versions
    )
    redis = resolve_redis(redis_block)
    target = redis.value
    limit = max_keys or policy.settings.max_keys
    options = ScanOptions(
        scan_count=policy.settings.scan_count,
        batch_size=policy.settings.batch_size,
        pause_s=pause_ms / 1000,
    )
    run = str(flow_run.get_id() or "")
    outcomes: list[Outcome] = []
    messages: list[dict[str, Any]] = []
    purge: dict[str, list[str]] = {"files": [], "tags": [], "prefixes": []}
    logger.info("%s on %s%s", request, redis.description, "" if apply else " (dry run)")

    def add_cdn(items: dict[str, list[str]]) -> None:
        purge["files"] += items.get("cdn_urls", [])
        purge["tags"] += items.get("cdn_tags", [])
        purge["prefixes"] += items.get("cdn_prefixes", [])

    def one_pattern(t: Target, glob: str) -> Outcome:
        early = refusal(t.label, glob, None, limit, force) if apply else None
        if early:
            return Outcome(
                target=f"{t.cache or 'pattern'}: {glob}",
                result="refused",
                reason=early,
                kind=t.kind,
                cache=t.cache or "",
            )
        result = invalidate_pattern(
            target, glob, options, apply=apply, max_keys=limit, force=force, label=t.label
        )
        outcome = pattern_outcome(t, glob, result, apply)
        later = None if apply else refusal(t.label, glob, result.matched, limit, force)
        if later:  # a dry run says what --apply would refuse
            outcome = outcome.model_copy(update={"reason": f"{outcome.reason}; --apply: {later}"})
        if outcome.result == "dropped" and outcome.dropped:
            messages.append(
                l1_message(run=run, cache=t.cache, pattern=glob, regex=glob_regex(glob), keys=[])
            )
        return outcome

    for t in targets:
        try:
            if t.kind == "pattern":
                outcome = one_pattern(t, t.pattern)
                outcomes.append(outcome)
                if outcome.result in ("dropped", "would drop", "nothing to drop"):
                    add_cdn(t.model_dump(include={"cdn_urls", "cdn_tags", "cdn_prefixes"}))
            elif t.kind == "tag":
                found, batches = drop_tagged(
                    target, t.tag_key, options.batch_size, apply=apply, max_keys=limit, force=force
                )
                outcomes.append(pattern_outcome(t, t.tag_key, found, apply))
                messages += [
                    l1_message(run=run, cache=t.cache, pattern=None, regex=None, keys=b)
                    for b in batches
                ]
            else:
                known = read_versions(target, t.versions_key)
                old = versions_to_drop(known, t.keep)
                outcomes.append(
                    Outcome(
                        target=f"{t.cache}: {t.versions_key}",
                        result="skipped" if not old else ("dropped" if apply else "would drop"),
                        reason=f"{len(known)} versions, keep the newest {t.keep}; "
                        + (f"older: {', '.join(old)}" if old else "nothing older"),
                        kind="versions",
                        cache=t.cache or "",
                    )
                )
                cache = policy.cache(str(t.cache))
                for version in old:
                    outcome = one_pattern(t, fill(t.pattern, {"version": version}))
                    outcomes.append(outcome)
                    if outcome.result in ("dropped", "would drop", "nothing to drop"):
                        add_cdn(cdn_items(cache, {"version": version}))
                    if apply and outcome.result in ("dropped", "nothing to drop"):
                        forget_version(target, t.versions_key, version)
        except PerfopsError as exc:
            outcomes.append(
                Outcome(
                    target=t.label,
                    result="failed",
                    reason=str(exc),
                    kind=t.kind,
                    cache=t.cache or "",
                )
            )
    cluster = _is_cluster(target)

    if apply and messages:
        try:
            heard = notify_l1(target, policy.settings.l1_channel, messages)
            outcomes.append(
                Outcome(
                    target=f"l1: {policy.settings.l1_channel}",
                    result="notified",
                    kind="l1",
                    reason=f"{len(messages)} notices, {heard} subscribers heard the last",
                )
            )
        except PerfopsError as exc:
            outcomes.append(
                Outcome(
                    target=f"l1: {policy.settings.l1_channel}",
                    result="failed",
                    reason=str(exc),
                    kind="l1",
                )
            )
    outcomes += _purge_cdn(purge, apply, cdn_block)

    report = InvalidationReport(
        request=request,
        redis=redis.description,
        cluster=cluster,
        dry_run=not apply,
        max_keys=limit,
        outcomes=outcomes,
        seconds=round(time.monotonic() - started, 3),
    )
    logger.info("%s in %.1f s", report.summary, report.seconds)
    publish_table(
        ARTIFACT_KEY,
        artifact_rows(report),
        f"Cache invalidation: {report.summary}. max_keys {limit:,}; "
        "keys dropped by SCAN + UNLINK (never KEYS/FLUSH); see docs/caches.md.",
    )
    resource = resource_id(target)
    emit(
        EVENT_INVALIDATED if apply else EVENT_PREVIEWED,
        resource,
        {
            "request": request,
            "dry_run": not apply,
            "matched": report.matched,
            "dropped": report.dropped,
            "refused": [o.target for o in outcomes if o.result == "refused"],
            "failed": [o.target for o in outcomes if o.result == "failed"],
            "caches": sorted({o.cache for o in outcomes if o.cache}),
            "seconds": report.seconds,
        },
        **{"perfops.outcome": "dry-run" if not apply else ("failed" if report.failure else "ok")},
    )
    cdn = [o for o in outcomes if o.kind == "cdn" and o.result == "purged"]
    if cdn:
        emit(EVENT_CDN, resource, {"request": request, "items": cdn[0].dropped})
    return end_run(report, report.failure)


def _is_cluster(target: Any) -> bool:
    from tasks.cache_keys import connected

    try:
        with connected(target) as conn:
            return conn.cluster
    except PerfopsError:
        return False


def _purge_cdn(purge: dict[str, list[str]], apply: bool, cdn_block: str | None) -> list[Outcome]:
    items = {k: sorted(set(v)) for k, v in purge.items() if v}
    count = sum(len(v) for v in items.values())
    if not count:
        return []
    what = ", ".join(f"{len(v)} {k}" for k, v in items.items())
    if not apply:
        return [
            Outcome(
                target=f"cdn: {what}",
                result="would purge",
                kind="cdn",
                reason="dry run",
                matched=count,
            )
        ]
    if not cdn_block:
        return [
            Outcome(
                target=f"cdn: {what}",
                result="skipped",
                kind="cdn",
                matched=count,
                reason="no perfops-cdn-target block given (cdn_block)",
            )
        ]
    cdn = load_block(CdnTarget, cdn_block)
    result = purge_cdn(cdn, items)
    return [
        Outcome(
            target=f"cdn: {what}",
            result="failed" if result.error else "purged",
            reason=result.error
            or f"{result.requests} requests, {result.rate_limited} rate-limited (429) and "
            f"{result.server_errors} 5xx retried, {result.waited_s:.1f} s paced",
            kind="cdn",
            matched=count,
            dropped=result.items,
        )
    ]
