"""Share results merged exactly, percentiles, and criteria judged with their reasons."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from decisions.load_results import (
    Counts,
    ShareResult,
    Window,
    decode,
    encode,
    endpoint_stats,
    judge,
    merge_shares,
    new_histogram,
    timeline,
)
from decisions.load_scenarios import Criteria

START = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)


def share(latencies_us: list[int], errors: dict[str, int] | None = None) -> ShareResult:
    h = new_histogram()
    w = new_histogram(2)
    for v in latencies_us:
        h.record_value(v)
        w.record_value(v)
    counts = Counts(
        requests=len(latencies_us),
        responses=len(latencies_us),
        errors=errors or {},
        histogram=encode(h),
    )
    return ShareResult(
        started_at=START,
        duration_s=1.0,
        seconds=1.0,
        asked=len(latencies_us),
        sent=len(latencies_us),
        endpoints={"GET /a": counts},
        steps={"s/GET /a": counts},
        timeline={"GET /a": [Window(requests=len(latencies_us), histogram=encode(w))]},
    )


def test_merged_shares_give_the_percentiles_one_generator_would_have_recorded() -> None:
    rng = random.Random(7)
    a = [rng.randint(1_000, 200_000) for _ in range(5_000)]
    b = [rng.randint(50_000, 900_000) for _ in range(3_000)]
    merged = merge_shares([share(a), share(b, {"status 500": 4})])
    whole = new_histogram()
    for v in a + b:
        whole.record_value(v)
    h = decode(merged.endpoints["GET /a"].histogram)
    for q in (50, 90, 95, 99, 100):
        assert h.get_value_at_percentile(q) == whole.get_value_at_percentile(q)
    stats = endpoint_stats(merged)
    assert [s.name for s in stats] == ["all", "GET /a"]
    assert stats[1].requests == 8_000 and stats[1].errors_by_cause == {"status 500": 4}
    assert stats[1].rps == 8_000
    assert timeline(merged)[0].requests == 8_000


def test_criteria_say_what_was_measured_against_what() -> None:
    stats = endpoint_stats(share([10_000] * 95 + [300_000] * 5, {"timeout": 2}))
    results = judge(
        [
            Criteria(endpoint="GET /a", p95_ms=100, min_rps=50),
            Criteria(endpoint="all", max_error_rate=0.01),
        ],
        stats,
    )
    assert [(r.measure, r.passed) for r in results] == [
        ("p95_ms", True),
        ("rps", True),
        ("error_rate", False),
    ]
    assert results[0].reason == "p95_ms 10.0ms, at most 100ms: met"
    assert results[2].reason == "error_rate 2.00%, at most 1.00%: missed"


def test_a_criterion_on_an_endpoint_without_responses_fails() -> None:
    stats = endpoint_stats(share([]))
    [result, _default_errors] = judge([Criteria(endpoint="GET /a", p95_ms=100)], stats)
    assert not result.passed
    assert result.reason == "p95_ms not measured: no responses"
    assert result.value is None
    assert stats[0].p95_ms is None


def test_a_test_without_an_error_rate_criterion_is_judged_on_its_errors_by_default() -> None:
    """30 % of the requests failing used to pass a test whose criteria bound latency only (up
    to the abort limit, 50 %): the default bound, 1 % of all requests, says it missed."""
    stats = endpoint_stats(share([10_000] * 100, {"status 503": 30}))
    results = judge([Criteria(endpoint="GET /a", p95_ms=100)], stats)
    assert [(r.endpoint, r.measure, r.passed) for r in results] == [
        ("GET /a", "p95_ms", True),
        ("all", "error_rate", False),
    ]
    assert results[1].reason.endswith(
        "at most 1.00%: missed; the default: the test sets no max_error_rate criterion"
    )
    # a test that bounds errors anywhere keeps its own bound, and only its own
    own = judge([Criteria(endpoint="GET /a", max_error_rate=0.5)], stats)
    assert [(r.measure, r.passed) for r in own] == [("error_rate", True)]


@pytest.mark.parametrize("n", [1, 3])
def test_merging_one_or_several_keeps_counts(n: int) -> None:
    merged = merge_shares([share([1_000, 2_000]) for _ in range(n)])
    assert merged.endpoints["GET /a"].requests == 2 * n
    assert merged.asked == 2 * n
