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


def test_shares_that_sent_elsewhere_or_ran_another_test_are_not_merged() -> None:
    from decisions.load_scenarios import definition_hash
    from decisions.load_shares import identity_problems

    checked = definition_hash(TEST)
    same = result(0, 0.0, "a:1").model_copy(
        update={"base_url": "https://staging.example.com", "test_hash": checked}
    )
    other = result(1, 0.0, "b:2").model_copy(
        update={"base_url": "http://127.0.0.1:8089", "test_hash": "0123456789abcdef"}
    )
    assert identity_problems([same, same], "https://staging.example.com", checked) == []
    assert identity_problems([same, other], "https://staging.example.com", checked) == [
        "share 2 of 2 sent to http://127.0.0.1:8089, not to https://staging.example.com that "
        "the test was checked against",
        f"share 2 of 2 ran another definition of the test (hash 0123456789abcdef, checked "
        f"{checked}): the tests file differs where it ran",
    ]


def test_a_tests_definition_hash_changes_with_what_it_sends_only() -> None:
    from decisions.load_scenarios import definition_hash

    text = (
        "tests:\n  - {name: t, duration: 60s, pattern: {rps: 100}, "
        "scenarios: [{name: s, steps: [{url: /a}]}]}\n"
    )
    assert definition_hash(parse_tests(text).tests[0]) == definition_hash(TEST)
    faster = parse_tests(text.replace("rps: 100", "rps: 200")).tests[0]
    assert definition_hash(faster) != definition_hash(TEST)
