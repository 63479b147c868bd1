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
finished by running it again. An applied run that drops keys of a cache whose policy says
`warm_after_invalidation` names them in its event (payload `warm`, label `perfops.cache.warm`),
for the warm_cache deployment's trigger. The run ends Failed when a step was refused or failed, the
artifact `perfops-cache-invalidation` and the event still written. Over a fleet (`targets`, the
targets with a `redis` block): one child run per Redis, artifact
`perfops-cache-invalidation-<target>`, summary `perfops-cache-invalidation-fleet`.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from blocks.cdn import CdnTarget
from blocks.resolve import check_block_names, load_block, resolve_redis
from decisions.cache_invalidation import (
    PURGE_AFTER,
    InvalidationReport,
    Outcome,
    PurgeItems,
    WarmAfter,
    artifact_description,
    artifact_rows,
    cdn_done,
    cdn_failed,
    cdn_outcome,
    event_labels,
    event_payload,
    failed_outcome,
    l1_message,
    l1_outcome,
    pattern_outcome,
    refused_outcome,
    versions_kept,
    versions_outcome,
    warm_after,
    warm_keys_wanted,
    with_apply_refusal,
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
from decisions.fleet import FleetReport, keyed, target_labels
from perfops.errors import PerfopsError
from perfops.redaction import install_log_redaction, redact
from perfops.settings import get_settings
from tasks.cache_keys import (
    ScanOptions,
    drop_tagged,
    forget_version,
    invalidate_pattern,
    is_cluster,
    notify_l1,
    read_versions,
    resource_id,
)
from tasks.cdn import purge_cdn
from tasks.fleet_runs import fan_out, verified_fleet_target
from tasks.records import emit, end_run, publish_table

ARTIFACT_KEY = "perfops-cache-invalidation"
FLEET_ARTIFACT_KEY = "perfops-cache-invalidation-fleet"
EVENT_FLEET = "perfops.cache.fleet_invalidated"
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
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> InvalidationReport | FleetReport:
    """Invalidate cache entries, on one Redis or on every Redis of a fleet.

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
        cdn_block: a `perfops-cdn-target` block (default `PERFOPS_CDN_BLOCK`); without one
            CDN purges are skipped (reported); a name with no saved block fails the run before
            any key goes. Over a fleet every target's run purges it.
        targets: run over a fleet instead (`deployments/fleet.yaml`, docs/fleet.md): a named
            fleet, `all`, a label `key=value`, or target names; the targets with a `redis`
            block, one child run each, a summary artifact `perfops-cache-invalidation-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child: keys its artifact
            (`perfops-cache-invalidation-<target>`) and labels its events.
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    policy = load_policy(policy_path)
    request, steps = resolve_request(policy, event, parse_payload(payload), pattern, tag, versions)
    check_block_names(cdn_block=cdn_block)  # a mistyped CDN block fails before any key goes
    if targets is not None:  # the parent of a fleet run: one child run per Redis
        asked = {"event": event, "payload": payload, "pattern": pattern, "tag": tag,
                 "versions": versions, "apply": apply, "force": force, "max_keys": max_keys,
                 "pause_ms": pause_ms, "policy_path": policy_path,
                 "cdn_block": cdn_block}  # fmt: skip
        return fan_out(
            invalidate_cache, targets, fleet_file, asked, artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET, dry_run=not apply, changes=apply, system="redis",
            block_parameter="redis_block", block_given=redis_block,
        )  # fmt: skip
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    logger = get_run_logger()
    started = time.monotonic()
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
    purge = PurgeItems()
    warm: list[WarmAfter] = []  # the cache to warm again, if any (one per run: the policy)
    # old versions whose keys are gone: forgotten (ZREM) only once the CDN step is done, so a
    # rerun after a failed purge still sees them and purges again
    gone: list[tuple[Target, str]] = []
    logger.info("%s on %s%s", request, redis.description, "" if apply else " (dry run)")

    def one_pattern(t: Target, glob: str) -> Outcome:
        early = refusal(t.label, glob, None, limit, force) if apply else None
        if early:
            return refused_outcome(t, glob, early)
        result = invalidate_pattern(
            target, glob, options, apply=apply, max_keys=limit, force=force, label=t.label,
            keep_keys=warm_keys_wanted(policy, t, apply),
        )  # fmt: skip
        outcome = pattern_outcome(t, glob, result, apply)
        wanted = warm_after(policy, t, glob, outcome, result.kept, redis_block)
        warm.extend([wanted] if wanted and not warm else [])
        if not apply:  # a dry run says what --apply would refuse
            outcome = with_apply_refusal(
                outcome, refusal(t.label, glob, result.matched, limit, force)
            )
        if apply and outcome.result in PURGE_AFTER:  # "nothing to drop" too: an L1 holder
            messages.append(  # may hold a value Redis has let expire or evicted
                l1_message(run=run, cache=t.cache, pattern=glob, regex=glob_regex(glob), keys=[])
            )
        return outcome

    for t in steps:
        try:
            if t.kind == "pattern":
                outcomes.append(one_pattern(t, t.pattern))
                if outcomes[-1].result in PURGE_AFTER:
                    purge.add(t.model_dump(include={"cdn_urls", "cdn_tags", "cdn_prefixes"}))
            elif t.kind == "tag":
                found, batches = drop_tagged(
                    target, t.tag_key, options.batch_size, apply=apply, max_keys=limit, force=force
                )
                outcomes.append(pattern_outcome(t, t.tag_key, found, apply))
                if not apply:  # a dry run says what --apply would refuse, as for a pattern
                    outcomes[-1] = with_apply_refusal(
                        outcomes[-1], refusal(t.tag_key, None, found.matched, limit, force)
                    )
                kept = [k for b in batches for k in b]
                wanted = warm_after(policy, t, t.tag_key, outcomes[-1], kept, redis_block)
                warm.extend([wanted] if wanted and not warm else [])
                messages += [
                    l1_message(run=run, cache=t.cache, pattern=None, regex=None, keys=b)
                    for b in batches
                ]
            else:
                known = read_versions(target, t.versions_key)
                old = versions_to_drop(known, t.keep)
                outcomes.append(versions_outcome(t, known, old, apply))
                cache = policy.cache(str(t.cache))
                for version in old:
                    outcome = one_pattern(t, fill(t.pattern, {"version": version}))
                    outcomes.append(outcome)
                    if outcome.result in PURGE_AFTER:
                        purge.add(cdn_items(cache, {"version": version}))
                    if apply and outcome.result in ("dropped", "nothing to drop"):
                        gone.append((t, version))
        except PerfopsError as exc:
            outcomes.append(failed_outcome(t, str(exc)))
    cluster = is_cluster(target)

    if apply and messages:
        channel = policy.settings.l1_channel
        try:
            heard = notify_l1(target, channel, messages)
            outcomes.append(l1_outcome(channel, len(messages), heard))
        except PerfopsError as exc:
            outcomes.append(l1_outcome(channel, len(messages), error=str(exc)))
    try:
        cdn = _purge_cdn(purge.items(), apply, cdn_block or get_settings().cdn_block)
    except Exception as exc:  # noqa: BLE001 - its row, the event and a Failed run say it
        cdn = cdn_failed(purge.items(), redact(f"{type(exc).__name__}: {exc}"))
    if gone and cdn is not None and not cdn_done(cdn):
        cdn = versions_kept(cdn, [version for _, version in gone])
    outcomes += [cdn] if cdn else []
    for t, version in gone if cdn_done(cdn) else []:
        try:
            forget_version(target, t.versions_key, version)
        except PerfopsError as exc:
            outcomes.append(failed_outcome(t, str(exc)))

    report = InvalidationReport(
        request=request,
        redis=redis.description,
        cluster=cluster,
        dry_run=not apply,
        max_keys=limit,
        outcomes=outcomes,
        seconds=round(time.monotonic() - started, 3),
        warm=warm[0] if warm else None,
    )
    logger.info("%s in %.1f s", report.summary, report.seconds)
    publish_table(
        keyed(ARTIFACT_KEY, fleet_target), artifact_rows(report), artifact_description(report)
    )
    resource = resource_id(target)
    emit(
        EVENT_INVALIDATED if apply else EVENT_PREVIEWED,
        resource,
        event_payload(report),
        **event_labels(report),
        **target_labels(fleet_target),
    )
    if cdn and cdn.result == "purged":
        emit(
            EVENT_CDN,
            resource,
            {"request": request, "items": cdn.dropped},
            **target_labels(fleet_target),
        )
    return end_run(report, report.failure)


def _purge_cdn(items: dict[str, list[str]], apply: bool, cdn_block: str | None) -> Outcome | None:
    """The CDN step: decided without the CDN when it can be (nothing, a dry run, no block),
    else the purge through the `cdn_block` block."""
    decided = cdn_outcome(items, apply=apply, cdn_block=cdn_block)
    if decided is not None or not items:
        return decided
    result = purge_cdn(load_block(CdnTarget, str(cdn_block)), items)
    return cdn_outcome(items, apply=apply, cdn_block=cdn_block, result=result)
