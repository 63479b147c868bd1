"""The weekly report's Caches section from the week's perfops.cache.* events."""

from __future__ import annotations

from datetime import UTC, datetime

from decisions.reporting import RecordedEvent, summarize_records, things_to_look_at


def event(name: str, day: int, **payload: object) -> RecordedEvent:
    return RecordedEvent(
        event=name, occurred=datetime(2026, 11, day, 12, tzinfo=UTC), resource="r", payload=payload
    )


def test_the_caches_section_sums_the_week_and_flags_a_low_hit_ratio() -> None:
    events = [
        event("perfops.cache.stats_collected", 16, hit_ratio=0.9, evicted=10),
        event("perfops.cache.stats_collected", 17, hit_ratio=0.5, evicted=5000),
        event("perfops.cache.hit_ratio_low", 17, reason="low"),
        event("perfops.cache.invalidated", 17, dropped=120, refused=["x"], failed=[]),
        event("perfops.cache.warmed", 18, warmed=40, failed=2, dry_run=False),
    ]
    [caches] = [s for s in summarize_records(events) if s.key == "caches"]
    assert caches.title == "Caches" and caches.events == 5
    assert caches.lines == [
        "hit ratio over 2 samples: median 70.0%, lowest 50.0%, last 50.0%; 5,010 keys evicted",
        "problem: hit ratio under target 1 time, evictions climbing 0 times",
        "1 invalidations dropped 120 keys (1 steps refused, 0 failed)",
        "1 warm-ups wrote 40 keys (2 failed)",
    ]
    assert [r["day"] for r in caches.rows] == ["Mon 16 Nov", "Tue 17 Nov", "Wed 18 Nov"]
    assert caches.rows[1]["problems"] == 1 and caches.rows[2]["warmed keys"] == 40
    found = things_to_look_at([], _no_numbers(), [caches])
    assert "caches: hit ratio under target 1 time, evictions climbing 0 times" in found


def test_a_quiet_week_says_nothing_was_recorded() -> None:
    [caches] = [s for s in summarize_records([]) if s.key == "caches"]
    assert caches.empty and "collect_cache_stats" in caches.lines[0]


def _no_numbers():  # type: ignore[no-untyped-def]
    from decisions.reporting import WeekNumbers

    return WeekNumbers.model_construct(week="2026-W47", slis={}, missing={}, endpoints=[])
