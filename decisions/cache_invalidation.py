"""An invalidation run's report: per thing dropped (a pattern, a tag's keys, a cache's old
versions, the CDN purge, the L1 notice) what was found, what was done and why; the summary a
person reads; and the one line that says what failed (the run's state message). Pure:
`flows/invalidate_cache.py` fills it in; `decisions.cache_policy` decides what to drop.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from decisions.cache_policy import Target

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


class InvalidationReport(BaseModel):
    """What an invalidation found and did."""

    request: str  # `event user_updated {"user_id": "42"}`, `pattern x:*`, `tag user_id=42`
    redis: str
    cluster: bool
    dry_run: bool
    max_keys: int
    outcomes: list[Outcome]
    seconds: float = 0.0

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
    elif not result.matched and not result.dropped:
        verdict, reason = "nothing to drop", "no key matches"
    elif not apply:
        verdict, reason = "would drop", f"{result.matched:,} keys match (dry run)"
    else:
        verdict = "dropped"
        reason = f"UNLINKed {result.dropped:,} keys in {result.passes} SCAN pass(es)"
        if result.left:
            verdict, reason = "failed", f"sampled keys still there: {', '.join(result.left)}"
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
