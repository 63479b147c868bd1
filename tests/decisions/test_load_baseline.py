"""Baselines from good runs, and the comparison that flags a real slowdown but not noise."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from decisions.load_baseline import (
    ComparePolicy,
    EndpointRecord,
    LoadRunRecord,
    NoBaseline,
    compare_to_baseline,
    establish_baseline,
)

NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
EP = "GET /api/v1/agents"
LOCAL = "http://127.0.0.1"


def endpoint(rng: random.Random, p95: float, seconds: int = 30) -> EndpointRecord:
    windows = [rng.gauss(p95, p95 * 0.04) for _ in range(seconds)]
    return EndpointRecord(p95_ms=p95 * rng.uniform(0.98, 1.02), window_p95s=windows)


def run(
    i: int, rng: random.Random, p95: float = 40.0, target: str = LOCAL, **flags: bool
) -> LoadRunRecord:
    return LoadRunRecord(
        run_id=f"r{i}",
        test="t",
        started_at=NOW - timedelta(days=i),
        target=target,
        asked_rps=100,
        achieved_rps=100,
        passed=flags.get("passed", True),
        aborted=flags.get("aborted", False),
        regressed=flags.get("regressed", False),
        endpoints={EP: endpoint(rng, p95)},
    )


def test_a_baseline_takes_the_last_good_runs_only() -> None:
    rng = random.Random(1)
    runs = [
        run(0, rng, passed=False),
        run(1, rng, aborted=True),
        run(2, rng, regressed=True),
        *[run(i, rng) for i in range(3, 10)],
    ]
    baseline = establish_baseline("t", runs, NOW, ComparePolicy(runs=5), target=LOCAL)
    assert baseline.run_ids == ["r3", "r4", "r5", "r6", "r7"]
    assert baseline.endpoints[EP].runs == 5
    assert len(baseline.endpoints[EP].window_p95s) == 150
    assert baseline.endpoints[EP].p95_ms == pytest.approx(40, rel=0.03)


def test_a_baseline_is_made_from_runs_against_its_own_target_only() -> None:
    rng = random.Random(2)
    staging = "https://staging.example.com"
    runs = [run(0, rng, p95=5.0), run(1, rng, target=staging), run(2, rng, target=staging)]
    baseline = establish_baseline("t", runs, NOW, ComparePolicy(runs=5), target=staging)
    assert baseline.target == staging and baseline.run_ids == ["r1", "r2"]
    with pytest.raises(NoBaseline, match=r"no good run of t against https://other\.example\.com"):
        establish_baseline("t", runs, NOW, target="https://other.example.com")


def test_a_baseline_is_made_from_runs_of_the_tests_current_load_only() -> None:
    rng = random.Random(3)
    runs = [run(i, rng) for i in range(4)]
    runs = [
        r.model_copy(update={"definition": "new" if i < 2 else "old"}) for i, r in enumerate(runs)
    ]
    baseline = establish_baseline(
        "t", runs, NOW, ComparePolicy(runs=5), target=LOCAL, definition="new"
    )
    assert baseline.run_ids == ["r0", "r1"] and baseline.definition == "new"
    with pytest.raises(NoBaseline, match=r"no good run of t against .* of its current definition"):
        establish_baseline("t", runs, NOW, target=LOCAL, definition="another")


def test_no_good_run_means_no_baseline_and_says_why() -> None:
    with pytest.raises(NoBaseline, match="1 run in history, none met its criteria"):
        establish_baseline("t", [run(0, random.Random(1), passed=False)], NOW, target=LOCAL)


def test_noise_is_not_a_regression_and_twenty_percent_slower_is() -> None:
    rng = random.Random(3)
    baseline = establish_baseline("t", [run(i, rng) for i in range(5)], NOW, target=LOCAL)
    same = [compare_to_baseline(baseline, {EP: endpoint(rng, 40.0)})[0] for _ in range(20)]
    slower = [compare_to_baseline(baseline, {EP: endpoint(rng, 48.0)})[0] for _ in range(20)]
    assert sum(c.result == "regressed" for c in same) <= 1
    assert sum(c.result == "regressed" for c in slower) == 20
    assert "slower beyond noise (Mann-Whitney p=" in slower[0].reason
    assert slower[0].change == pytest.approx(0.2, abs=0.05)


def test_a_significant_but_small_slowdown_is_not_flagged() -> None:
    rng = random.Random(5)
    baseline = establish_baseline("t", [run(i, rng) for i in range(5)], NOW, target=LOCAL)
    [c] = compare_to_baseline(baseline, {EP: endpoint(rng, 42.0, seconds=300)})
    assert c.result == "unchanged"
    assert "under the minimum effect 10%" in c.reason


def test_too_few_seconds_are_not_compared() -> None:
    rng = random.Random(9)
    baseline = establish_baseline("t", [run(i, rng) for i in range(5)], NOW, target=LOCAL)
    [c] = compare_to_baseline(baseline, {EP: endpoint(rng, 80.0, seconds=3)})
    assert c.result == "not compared"
    assert c.reason.startswith("fewer than 5 seconds")
