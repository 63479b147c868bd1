"""The weekly report's Load tests section and its 'thing to look at' for a regression."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from decisions.reporting import RecordedEvent, WeekNumbers, summarize_records, things_to_look_at

MONDAY = datetime(2026, 11, 30, tzinfo=UTC)


def event(name: str, day: int, **payload: object) -> RecordedEvent:
    return RecordedEvent(
        event=name,
        occurred=MONDAY + timedelta(days=day, hours=1, minutes=30),
        resource="perfops.load.staging:443",
        payload=payload,
    )


def test_runs_and_regressions_of_the_week_are_summarised_and_flagged() -> None:
    regression = {
        "endpoint": "POST /api/v1/agents/execute",
        "p95_ms": 260.0,
        "baseline_p95_ms": 200.0,
        "reason": "p95 260.0 ms vs baseline 200.0 ms (typical second +30.0%): slower beyond noise",
    }
    endpoints = {"all": {"p95_ms": 180.5}}
    events = [
        event("perfops.load.tested", 0, test="platform-api", passed=True, endpoints=endpoints,
              achieved_rps=1600, asked_rps=1600),
        event("perfops.load.tested", 1, test="platform-api", passed=False, endpoints=endpoints,
              achieved_rps=1598, asked_rps=1600),
        event("perfops.load.regressed", 1, test="platform-api", regressions=[regression]),
    ]  # fmt: skip
    [load] = [s for s in summarize_records(events) if s.key == "load"]
    assert load.title == "Load tests"
    assert load.lines == [
        "platform-api: 2 runs, 1 passed; latest p95 180.5 ms at 1,598 of 1,600 rps",
        "1 endpoint regression against the baseline",
    ]
    assert load.rows[0]["endpoint"] == "POST /api/v1/agents/execute"
    assert load.rows[0]["time"] == "Tue 01 Dec 01:30"
    things = things_to_look_at([], WeekNumbers(week="2026-W49", endpoints=[], slis={}), [load])
    assert things[0].startswith(
        "load test platform-api: POST /api/v1/agents/execute regressed (p95 260.0 ms"
    )


def test_a_week_without_load_tests_says_so() -> None:
    [load] = [s for s in summarize_records([]) if s.key == "load"]
    assert load.lines == ["nothing recorded this week (no load test ran)"]
    assert load.empty


def test_refused_and_failed_runs_are_counted_and_looked_at() -> None:
    production = "load test platform-api refused: host 'api.prod.example.com' looks like production"
    events = [
        *[event("perfops.load.refused", day, test="platform-api", reason=production)
          for day in range(6)],
        event("perfops.load.tested", 0, test="stress", passed=True,
              endpoints={"all": {"p95_ms": 90.0}}, achieved_rps=3200, asked_rps=3200),
        event("perfops.load.failed", 2, test="stress",
              reason="load test stress: share 2 (run r2) ended Crashed with no result"),
    ]  # fmt: skip
    [load] = [s for s in summarize_records(events) if s.key == "load"]
    assert load.lines == [
        f"platform-api: no run measured; 6 refused before sending (latest: {production})",
        "stress: 1 run, 1 passed; latest p95 90.0 ms at 3,200 of 3,200 rps; 1 failed before "
        "measuring (latest: load test stress: share 2 (run r2) ended Crashed with no result)",
    ]
    assert [(r["test"], r["result"]) for r in load.rows] == [
        *[("platform-api", "refused")] * 3,
        ("stress", "failed"),
        *[("platform-api", "refused")] * 3,
    ]
    assert load.rows[0]["reason"] == production
    things = things_to_look_at([], WeekNumbers(week="2026-W49", endpoints=[], slis={}), [load])
    assert things == [
        f"load test platform-api: 6 runs refused before being measured this week; latest: "
        f"{production}",
        "load test stress: 1 run failed before being measured this week; latest: load test "
        "stress: share 2 (run r2) ended Crashed with no result",
    ]
