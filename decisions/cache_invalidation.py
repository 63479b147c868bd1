"""An invalidation run's report: per thing dropped (a pattern, a tag's keys, a cache's old
versions, the CDN purge, the L1 notice) what was found, what was done and why; the summary a
person reads; and the one line that says what failed (the run's state message). Pure:
`flows/invalidate_cache.py` fills it in; `decisions.cache_policy` decides what to drop.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from decisions.cache_policy import CachePolicy, Target
from perfops.wording import counted

# A pattern step with these results still means the CDN items of its cache go too (the keys
# are gone, or would go, or were gone already).
PURGE_AFTER = ("dropped", "would drop", "nothing to drop")

Result = Literal[
    "dropped",
    "would drop",
    "nothing to drop",
    "refused",
    "failed",
    "purged",
    "would purge",
    "notified",
    "skipped",
]


class Outcome(BaseModel):
    """One step of an invalidation."""

    target: str  # what it is about: `user_profiles: user:42:profile:*`, `cdn: 3 prefixes`
    result: Result
    reason: str
    kind: str  # pattern, tag, versions, cdn, l1
    cache: str = ""
    matched: int = 0
    dropped: int = 0
    left: int = 0  # sampled keys still there after the drop
    samples: list[str] = Field(default_factory=list)
    passes: int = 0
    seconds: float = 0.0


class WarmAfter(BaseModel):
    """The warm-up an invalidation asks for, in its `perfops.cache.invalidated` event (payload
    `warm`, label `perfops.cache.warm`): the keys it dropped from a cache whose policy says
    `warm_after_invalidation` (refresh: proactive), for the warm_cache deployment's trigger."""

    cache: str
    # the first `warm_max_keys` dropped keys; the rest refill lazily (not named `keys`: Prefect
    # takes a model with a `keys` attribute for a mapping when it resolves a run's result)
    dropped_keys: list[str]
    pattern: str  # what was dropped: the glob, or the tag index set
    dropped: int
    redis_block: str | None = None  # where they were dropped (and are warmed again)


class InvalidationReport(BaseModel):
    """What an invalidation found and did."""

    request: str  # `event user_updated {"user_id": "42"}`, `pattern x:*`, `tag user_id=42`
    redis: str
    cluster: bool
    dry_run: bool
    max_keys: int
    outcomes: list[Outcome]
    seconds: float = 0.0
    warm: WarmAfter | None = None

    @property
    def matched(self) -> int:
        return sum(o.matched for o in self.outcomes if o.kind in ("pattern", "tag", "versions"))

    @property
    def dropped(self) -> int:
        return sum(o.dropped for o in self.outcomes if o.kind in ("pattern", "tag", "versions"))

    @property
    def summary(self) -> str:
        where = "Redis Cluster" if self.cluster else "Redis"
        if self.dry_run:
            return (
                f"would drop {self.matched:,} keys for {self.request} on {where} "
                "(dry run: nothing changed)"
            )
        refused = sum(o.result == "refused" for o in self.outcomes)
        text = f"dropped {self.dropped:,} of {self.matched:,} keys for {self.request} on {where}"
        if refused:
            text += f", {refused} refused"
        return text

    @property
    def failure(self) -> str | None:
        """What failed, for the run's state message; None when nothing did."""
        bad = [o for o in self.outcomes if o.result in ("refused", "failed") or o.left]
        if not bad:
            return None
        parts = []
        for o in bad[:3]:
            why = o.reason if o.result in ("refused", "failed") else f"{o.left} keys still there"
            parts.append(f"{o.target}: {why}")
        return f"{len(bad)} of {len(self.outcomes)} steps failed: " + "; ".join(parts)


def artifact_rows(report: InvalidationReport) -> list[dict[str, object]]:
    """The artifact table: one row per step, leading with what it is about."""
    return [
        {
            "target": o.target,
            "result": o.result,
            "reason": o.reason,
            "matched": o.matched,
            "dropped": o.dropped,
            "left": o.left,
            "samples": ", ".join(o.samples[:5]),
            "kind": o.kind,
            "seconds": o.seconds,
        }
        for o in report.outcomes
    ]


def l1_message(
    *, run: str, cache: str | None, pattern: str | None, regex: str | None, keys: list[str]
) -> dict[str, object]:
    """The L1 notice (JSON on the policy's `l1_channel`, docs/caches.md): drop the keys that
    fully match `regex` (the Redis glob `pattern` as a Python regex) and the keys listed."""
    return {
        "source": "perfops",
        "run": run,
        "cache": cache,
        "pattern": pattern,
        "regex": regex,
        "keys": keys,
    }


def pattern_outcome(target: Target, pattern: str, result: Any, apply: bool) -> Outcome:
    """The row of one pattern or tag: `result` is what the drop returned (matched, dropped,
    refused, left, samples, passes, seconds)."""
    if result.refused:
        verdict, reason = "refused", result.refused
    elif apply and getattr(result, "restarted", None):
        verdict = "failed"
        reason = (
            f"UNLINKed {result.dropped:,} keys, but Redis {', '.join(result.restarted)} "
            f"restarted during each of {result.passes} SCAN passes (its run_id changed): a "
            "pass across a restart misses keys, so some may be left; run again once it is up"
        )
    elif not result.matched and not result.dropped:
        verdict, reason = "nothing to drop", "no key matches"
    elif not apply:
        verdict, reason = "would drop", f"{result.matched:,} keys match (dry run)"
        if getattr(result, "restarted", None):
            reason += (
                f"; Redis {', '.join(result.restarted)} restarted during the count: an estimate"
            )
    else:
        verdict = "dropped"
        reason = f"UNLINKed {result.dropped:,} keys in {result.passes} SCAN pass(es)"
        rewritten = getattr(result, "rewritten", 0)
        if rewritten:
            reason += f"; {counted(rewritten, 'sampled key')} written again since (refilled)"
        if result.left:
            verdict, reason = "failed", f"sampled keys still there: {', '.join(result.left)}"
    protected = getattr(result, "protected", 0)
    if protected:
        reason += (
            f"; {counted(protected, 'key')} of perfops' own state "
            f"({getattr(result, 'protected_prefix', '')}*) left alone"
        )
    return Outcome(
        target=f"{target.cache or 'pattern'}: {pattern}",
        result=verdict,
        reason=reason,
        kind=target.kind,
        cache=target.cache or "",
        matched=result.matched,
        dropped=result.dropped,
        left=len(result.left),
        samples=result.samples,
        passes=result.passes,
        seconds=result.seconds,
    )


def refused_outcome(target: Target, pattern: str, reason: str) -> Outcome:
    """A pattern refused before any SCAN (a bare pattern without `force`)."""
    return Outcome(
        target=f"{target.cache or 'pattern'}: {pattern}",
        result="refused",
        reason=reason,
        kind=target.kind,
        cache=target.cache or "",
    )


def failed_outcome(target: Target, reason: str) -> Outcome:
    """A step that failed (Redis down, a command refused): `reason` is the error's one line."""
    return Outcome(
        target=target.label, result="failed", reason=reason, kind=target.kind,
        cache=target.cache or "",
    )  # fmt: skip


def with_apply_refusal(outcome: Outcome, refusal: str | None) -> Outcome:
    """A dry run's row, saying what `--apply` would refuse (when it would)."""
    if not refusal:
        return outcome
    return outcome.model_copy(update={"reason": f"{outcome.reason}; --apply: {refusal}"})


def versions_outcome(
    target: Target, known: list[tuple[str, float]], old: list[str], apply: bool
) -> Outcome:
    """The row of a versioned cache: how many versions, which are older than it keeps."""
    return Outcome(
        target=f"{target.cache}: {target.versions_key}",
        result="skipped" if not old else ("dropped" if apply else "would drop"),
        reason=f"{len(known)} versions, keep the newest {target.keep}; "
        + (f"older: {', '.join(old)}" if old else "nothing older"),
        kind="versions",
        cache=target.cache or "",
    )


def l1_outcome(
    channel: str, notices: int, heard: int | None = None, error: str | None = None
) -> Outcome:
    """The row of the L1 notices: sent (and how many subscribers heard the last), or failed."""
    if error is not None:
        return Outcome(target=f"l1: {channel}", result="failed", reason=error, kind="l1")
    return Outcome(
        target=f"l1: {channel}",
        result="notified",
        kind="l1",
        reason=f"{notices} notices, {heard} subscribers heard the last",
    )


class PurgeItems(BaseModel):
    """The CDN items a run purges, gathered from every cache it dropped (each once)."""

    files: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    prefixes: list[str] = Field(default_factory=list)

    def add(self, items: dict[str, list[str]]) -> None:
        """Add a cache's items (`cdn_urls`, `cdn_tags`, `cdn_prefixes`, as a Target has them)."""
        self.files += items.get("cdn_urls", [])
        self.tags += items.get("cdn_tags", [])
        self.prefixes += items.get("cdn_prefixes", [])

    def items(self) -> dict[str, list[str]]:
        """What the purge API is sent: each non-empty list, sorted, without repeats."""
        found = {"files": self.files, "tags": self.tags, "prefixes": self.prefixes}
        return {k: sorted(set(v)) for k, v in found.items() if v}


def cdn_outcome(
    items: dict[str, list[str]], *, apply: bool, cdn_block: str | None, result: Any = None
) -> Outcome | None:
    """The CDN row: None when there is nothing to purge; `would purge` for a dry run; `skipped`
    without a block; else from the purge's `result` (requests, items, rate_limited,
    server_errors, waited_s, error), which the caller gets only when this is not decided yet."""
    count = sum(len(v) for v in items.values())
    if not count:
        return None
    what = _cdn_what(items)
    if not apply:
        return Outcome(target=what, result="would purge", kind="cdn", reason="dry run",
                       matched=count)  # fmt: skip
    if not cdn_block:
        return Outcome(
            target=what, result="skipped", kind="cdn", matched=count,
            reason="no perfops-cdn-target block given (cdn_block)",
        )  # fmt: skip
    if result is None:
        return None
    return Outcome(
        target=what,
        result="failed" if result.error else "purged",
        reason=result.error
        or f"{result.requests} requests, {result.rate_limited} rate-limited (429) and "
        f"{result.server_errors} 5xx retried, {result.waited_s:.1f} s paced",
        kind="cdn",
        matched=count,
        dropped=result.items,
    )


def cdn_failed(items: dict[str, list[str]], error: str) -> Outcome:
    """The CDN row of a purge that raised instead of returning (an unexpected answer)."""
    count = sum(len(v) for v in items.values())
    return Outcome(target=_cdn_what(items), result="failed", kind="cdn", reason=error,
                   matched=count)  # fmt: skip


def _cdn_what(items: dict[str, list[str]]) -> str:
    return f"cdn: {', '.join(f'{len(v)} {k}' for k, v in items.items())}"


def cdn_done(cdn: Outcome | None) -> bool:
    """Whether the CDN step is done with the items of the versions dropped: nothing to purge,
    purged, or skipped for want of a CDN block. Only then are those versions forgotten: a run
    whose purge failed keeps them listed, so the next run purges them again."""
    return cdn is None or cdn.result in ("purged", "skipped")


def versions_kept(cdn: Outcome, versions: list[str]) -> Outcome:
    """A CDN row that is not done, saying the dropped versions stay listed for the rerun."""
    kept = f"versions {', '.join(versions)} stay listed: run again to purge them"
    return cdn.model_copy(update={"reason": f"{cdn.reason}; {kept}"})


def event_payload(report: InvalidationReport) -> dict[str, Any]:
    """The payload of `perfops.cache.invalidated` (`.previewed` for a dry run)."""
    outcomes = report.outcomes
    return {
        "request": report.request,
        "dry_run": report.dry_run,
        "matched": report.matched,
        "dropped": report.dropped,
        "refused": [o.target for o in outcomes if o.result == "refused"],
        "failed": [o.target for o in outcomes if o.result == "failed"],
        "caches": sorted({o.cache for o in outcomes if o.cache}),
        "seconds": report.seconds,
        "warm": report.warm.model_dump() if report.warm else None,
    }


def event_labels(report: InvalidationReport) -> dict[str, str]:
    """The event's labels: `perfops.outcome` (dry-run, failed, ok) and, when the run asks for
    a warm-up, `perfops.cache.warm` naming the cache (what the warm_cache trigger matches)."""
    labels = {"perfops.outcome": outcome_label(report)}
    if report.warm is not None and not report.dry_run:
        labels["perfops.cache.warm"] = report.warm.cache
    return labels


def warm_keys_wanted(policy: CachePolicy, target: Target, apply: bool) -> int:
    """How many dropped keys of `target` to keep for a warm-up: the policy's `warm_max_keys`
    when its cache says `warm_after_invalidation` and the run drops, else none."""
    if not apply or target.kind == "versions" or target.cache is None:
        return 0
    cache = policy.cache(target.cache)
    return policy.settings.warm_max_keys if cache.warm_after_invalidation else 0


def warm_after(
    policy: CachePolicy,
    target: Target,
    pattern: str,
    outcome: Outcome,
    kept: list[str],
    redis_block: str | None,
) -> WarmAfter | None:
    """The warm-up of what `target` dropped by `pattern` (a glob, or the tag index set; `kept`:
    the dropped keys kept for it), or None:
    nothing dropped, or its cache refreshes lazily (user_sessions) or is versioned. A tag's
    keys are kept only where they belong to the cache (its key pattern)."""
    if outcome.result != "dropped" or not outcome.dropped or not kept:
        return None
    if not warm_keys_wanted(policy, target, apply=True):
        return None
    name = str(target.cache)
    keys = [k for k in kept if policy.cache_of_key(k) == name][: policy.settings.warm_max_keys]
    if not keys:
        return None
    return WarmAfter(
        cache=name,
        dropped_keys=keys,
        pattern=pattern,
        dropped=outcome.dropped,
        redis_block=redis_block,
    )


def outcome_label(report: InvalidationReport) -> str:
    """The event's `perfops.outcome` label: dry-run, failed or ok."""
    if report.dry_run:
        return "dry-run"
    return "failed" if report.failure else "ok"


def artifact_description(report: InvalidationReport) -> str:
    return (
        f"Cache invalidation: {report.summary}. max_keys {report.max_keys:,}; "
        "keys dropped by SCAN + UNLINK (never KEYS/FLUSH); see docs/caches.md."
    )
