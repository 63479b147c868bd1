"""The weekly report's Caches section, from the week's `perfops.cache.*` events: hit ratio and
evictions from collect_cache_stats, keys dropped by invalidate_cache (and what was refused or
failed), keys warmed by warm_cache; one row per day. Pure."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from perfops.wording import counted


class RecordedEvent(Protocol):
    """What the section reads of `decisions.reporting.RecordedEvent` (which imports this)."""

    event: str
    occurred: datetime
    payload: dict[str, Any]


NOTHING = (
    "nothing recorded this week (collect_cache_stats, invalidate_cache and warm_cache emitted "
    "no events)"
)


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def cache_lines(events: Sequence[RecordedEvent]) -> tuple[list[str], list[dict[str, Any]]]:
    lines: list[str] = []
    days: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"ratios": [], "evicted": 0, "dropped": 0, "warmed": 0, "problems": 0}
    )
    stats = [e for e in events if e.event == "perfops.cache.stats_collected"]
    ratios = [
        float(e.payload["hit_ratio"]) for e in stats if e.payload.get("hit_ratio") is not None
    ]
    evicted = sum(int(e.payload.get("evicted") or 0) for e in stats)
    for e in events:
        day = days[e.occurred.strftime("%a %d %b")]
        p = e.payload
        if e.event == "perfops.cache.stats_collected":
            if p.get("hit_ratio") is not None:
                day["ratios"].append(float(p["hit_ratio"]))
            day["evicted"] += int(p.get("evicted") or 0)
        elif e.event == "perfops.cache.invalidated":
            day["dropped"] += int(p.get("dropped") or 0)
            day["problems"] += len(p.get("refused") or []) + len(p.get("failed") or [])
        elif e.event == "perfops.cache.warmed":
            day["warmed"] += int(p.get("warmed") or 0)
            day["problems"] += int(p.get("failed") or 0)
    if ratios:
        lines.append(
            f"hit ratio over {counted(len(ratios), 'sample')}: "
            f"median {_pct(statistics.median(ratios))}, "
            f"lowest {_pct(min(ratios))}, last {_pct(ratios[-1])}; "
            f"{counted(evicted, 'key')} evicted"
        )
    low = [e for e in events if e.event == "perfops.cache.hit_ratio_low"]
    climbing = [e for e in events if e.event == "perfops.cache.evictions_climbing"]
    if low or climbing:
        lines.append(
            f"problem: hit ratio under target {counted(len(low), 'time')}, evictions climbing "
            f"{counted(len(climbing), 'time')}"
        )
    invalidations = [e for e in events if e.event == "perfops.cache.invalidated"]
    if invalidations:
        refused = sum(len(e.payload.get("refused") or []) for e in invalidations)
        failed = sum(len(e.payload.get("failed") or []) for e in invalidations)
        dropped = sum(int(e.payload.get("dropped") or 0) for e in invalidations)
        lines.append(
            f"{len(invalidations)} invalidations dropped {dropped:,} keys "
            f"({refused} steps refused, {failed} failed)"
        )
    warmups = [
        e for e in events if e.event == "perfops.cache.warmed" and not e.payload.get("dry_run")
    ]
    if warmups:
        warmed = sum(int(e.payload.get("warmed") or 0) for e in warmups)
        missed = sum(int(e.payload.get("failed") or 0) for e in warmups)
        lines.append(f"{len(warmups)} warm-ups wrote {warmed:,} keys ({missed} failed)")
    rows = [
        {
            "day": day,
            "hit ratio": _pct(statistics.median(d["ratios"])) if d["ratios"] else "-",
            "evicted": d["evicted"],
            "invalidated keys": d["dropped"],
            "warmed keys": d["warmed"],
            "problems": d["problems"],
        }
        for day, d in days.items()
    ]
    return lines, rows


def cache_things(lines: list[str]) -> list[tuple[float, str]]:
    """The section's items for "things to look at" (weighted like the others)."""
    return [
        (32, f"caches: {line.removeprefix('problem: ')}")
        for line in lines
        if line.startswith("problem:")
    ]
