"""Cache warm-up: the TTL each warmed key gets (the cache's TTL, spread by jitter so keys warmed
together do not expire together), the run's report and its artifact rows. Pure:
`flows/warm_cache.py` fetches and writes."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import BaseModel, Field

from decisions.cache_policy import Cache, CachePolicy, glob_regex

LISTED_FAILURES = 50
LISTED_FOREIGN = 5


def not_of_cache(policy: CachePolicy, cache: Cache, keys: Iterable[str]) -> str | None:
    """Why keys that `cache`'s key pattern does not match may not be warmed as its keys (they
    would be fetched from its URL and written with its TTL over another cache's value, or over
    perfops' own state), naming the first few and their cache; None when all are its own."""
    keys = list(keys)
    own = re.compile(glob_regex(cache.any_key))
    foreign = [k for k in keys if not own.fullmatch(k)]
    if not foreign:
        return None
    named = []
    for key in foreign[:LISTED_FOREIGN]:
        other = policy.cache_of_key(key)
        named.append(f"{key} (a key of {other})" if other else key)
    more = f" and {len(foreign) - LISTED_FOREIGN} more" if len(foreign) > LISTED_FOREIGN else ""
    return (
        f"{len(foreign)} of {len(keys)} keys are not keys of cache {cache.name} ({cache.key}): "
        f"{', '.join(named)}{more}; nothing warmed: give each cache's keys with its --cache"
    )


def ttl_with_jitter(ttl_s: int, jitter: float, rng: Callable[[], float] = random.random) -> int:
    """`ttl_s` moved by up to +-`jitter` of itself, at least 1 s."""
    return max(1, round(ttl_s * (1 + jitter * (2 * rng() - 1))))


class WarmFailure(BaseModel):
    key: str
    reason: str


class WarmReport(BaseModel):
    """What a warm-up fetched and wrote."""

    cache: str
    source: Literal["urls", "sql"]
    redis: str
    dry_run: bool
    requested: int
    warmed: int
    failed: int
    ttl_s: int
    jitter: float
    rate_limited: int = 0  # 429s waited out
    failures: list[WarmFailure] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def summary(self) -> str:
        if self.dry_run:
            return f"would warm {self.requested:,} keys of {self.cache} from {self.source}"
        return (
            f"warmed {self.warmed:,} of {self.requested:,} keys of {self.cache} from "
            f"{self.source}, {self.failed:,} failed"
        )

    @property
    def failure(self) -> str | None:
        if self.dry_run or not self.failed:
            return None
        first = self.failures[0] if self.failures else None
        detail = f": {first.key}: {first.reason}" if first else ""
        return f"{self.failed} of {self.requested} keys of {self.cache} failed to warm{detail}"


def artifact_rows(report: WarmReport) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {
            "key": f"{report.cache} ({report.source})",
            "result": "would warm" if report.dry_run else "warmed",
            "reason": f"{report.summary}; TTL {report.ttl_s} s +-{report.jitter:.0%}, "
            f"{report.rate_limited} rate-limited requests waited out",
            "count": report.requested if report.dry_run else report.warmed,
        }
    ]
    rows += [
        {"key": f.key, "result": "failed", "reason": f.reason, "count": 1}
        for f in report.failures[:LISTED_FAILURES]
    ]
    if report.failed > LISTED_FAILURES:
        rows.append(
            {
                "key": f"... {report.failed - LISTED_FAILURES} more",
                "result": "failed",
                "reason": "see the flow's logs",
                "count": report.failed - LISTED_FAILURES,
            }
        )
    return rows
