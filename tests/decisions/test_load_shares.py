"""The shares of a load test: each share's row, and a test whose shares began too far apart
to run together fails saying which share was late."""

from __future__ import annotations

from datetime import UTC, datetime

from decisions.load_report import artifact_rows, assemble_report
from decisions.load_results import ShareResult, merge_shares
from decisions.load_scenarios import parse_tests
from decisions.load_shares import max_start_gap_s, overlap_problem, share_runs

START = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
TEST = parse_tests(
    """
tests:
  - name: t
    duration: 60s
    pattern: {rps: 100}
    scenarios: [{name: s, steps: [{url: /a}]}]
"""
).tests[0]


def result(share: int, late: float, ran_on: str) -> ShareResult:
    return ShareResult(
        share=share,
        shares=2,
        started_at=START,
        duration_s=60.0,
        seconds=60.0,
        asked=3000,
        sent=3000,
        start_late_s=late,
        ran_on=ran_on,
        flow_run_id=f"run-{share}",
    )


def test_shares_that_began_together_pass_with_a_row_each() -> None:
    results = [result(0, 0.0, "a:1"), result(1, 0.7, "b:2")]
    runs = share_runs(results, {1: "worker"})
    assert [(r.share, r.where, r.ran_on, r.late) for r in runs] == [
        (1, "here", "a:1", False),
        (2, "worker", "b:2", True),
    ]
    assert overlap_problem(runs, 60.0) is None
    report = assemble_report(TEST, merge_shares(results), run_id="r", target="x", shares=runs)
    assert report.apart is None and report.passed
    rows = artifact_rows(report)
    assert [r["what"] for r in rows[-2:]] == ["share 1 of 2", "share 2 of 2"]
    assert rows[-1]["result"] == "late"
    assert "on a worker of the pool on b:2 (flow run run-1); began 0.7 s late" in str(
        rows[-1]["reason"]
    )
    assert set(rows[-1]) == set(rows[0])  # the same columns as the endpoints' rows


def test_shares_that_did_not_run_together_fail_the_run_naming_the_late_one() -> None:
    assert max_start_gap_s(60.0) == 6.0 and max_start_gap_s(3.0) == 1.0
    results = [result(0, 0.0, "a:1"), result(1, 9.5, "b:2")]
    runs = share_runs(results, {1: "worker"})
    report = assemble_report(TEST, merge_shares(results), run_id="r", target="x", shares=runs)
    assert report.apart is not None and not report.passed
    assert "share 2 began 9.5 s after the shared start" in report.apart
    assert "together for 50.5 of 60 s" in report.apart
    assert report.failure is not None and "did not run together" in report.failure
    assert report.outcome == "failed"


def test_one_share_has_no_rows_and_nothing_to_overlap() -> None:
    runs = share_runs([result(0, 30.0, "a:1")], {})
    assert overlap_problem(runs, 60.0) is None
    report = assemble_report(TEST, result(0, 30.0, "a:1"), run_id="r", target="x")
    assert report.share_runs == []
    assert all(not str(r["what"]).startswith("share") for r in artifact_rows(report))
