"""A load test run's report: the figures per endpoint and per step, the criteria judged, the
comparison with the baseline, the summary a person reads, the one line that says why the run
failed (its state message), the artifact rows, the event payload, and the history record.

Pure: `flows/run_load_test.py` fills it in from the merged share results.
"""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import BaseModel, Field

from decisions.load_baseline import (
    Baseline,
    ComparePolicy,
    Comparison,
    EndpointRecord,
    LoadRunRecord,
    compare_to_baseline,
)
from decisions.load_results import (
    CriterionResult,
    LatencyStats,
    ShareResult,
    TimelinePoint,
    endpoint_stats,
    judge,
    step_stats,
    timeline,
    window_p95s,
)
from decisions.load_scenarios import LoadTest, load_fingerprint
from decisions.load_shares import ShareRun, overlap_problem, share_rows
from perfops.wording import counted

ACHIEVED_SHARE = 0.99  # achieved below this share of asked: the generator (or the box) fell short


class LoadTestReport(BaseModel):
    """What one load test run asked, measured and concluded."""

    test: str
    run_id: str
    target: str
    model: str  # open (rps) or closed (vus)
    shares: int
    started_at: datetime
    duration_s: float
    asked: int
    sent: int
    asked_rps: float
    achieved_rps: float
    late_sends: int
    send_lag_max_ms: float
    endpoints: list[LatencyStats]  # `all` first
    steps: list[LatencyStats]
    timeline: list[TimelinePoint]
    criteria: list[CriterionResult]
    comparisons: list[Comparison] = Field(default_factory=list)
    baseline: str | None = None  # what the run was compared with, or why not
    aborted: str | None = None
    established_baseline: bool = False
    share_runs: list[ShareRun] = Field(default_factory=list)  # a test in 2+ shares
    apart: str | None = None  # why the shares did not run together (decisions.load_shares)
    definition: str = ""  # the load it sent (decisions.load_scenarios.load_fingerprint)

    @property
    def passed(self) -> bool:
        return self.aborted is None and self.apart is None and all(c.passed for c in self.criteria)

    @property
    def outcome(self) -> str:
        """The `perfops.outcome` label of the run's event."""
        if self.aborted:
            return "aborted"
        if self.regressed:
            return "regressed"
        return "passed" if self.passed else "failed"

    @property
    def regressed(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.result == "regressed"]

    @property
    def summary(self) -> str:
        overall = self.endpoints[0] if self.endpoints else None
        p95 = f"{overall.p95_ms:,.1f} ms" if overall and overall.p95_ms is not None else "n/a"
        err = f"{overall.error_rate:.2%}" if overall else "n/a"
        met = sum(c.passed for c in self.criteria)
        text = (
            f"{self.sent:,} requests, {self.achieved_rps:,.1f} of {self.asked_rps:,.1f} rps "
            f"asked, p95 {p95}, errors {err}; criteria {met} of {len(self.criteria)} met"
        )
        if self.regressed:
            text += "; regressed: " + ", ".join(c.endpoint for c in self.regressed)
        if self.aborted:
            text += f"; {self.aborted}"
        if self.apart:
            text += "; the shares did not run together"
        return text

    @property
    def failure(self) -> str | None:
        """Why the run failed, for its state message; None when it passed."""
        reasons = []
        if self.aborted:
            reasons.append(self.aborted)
        if self.apart:
            reasons.append(self.apart)
        missed = [c for c in self.criteria if not c.passed]
        if missed:
            reasons.append(
                f"{len(missed)} of {len(self.criteria)} criteria missed: "
                + "; ".join(f"{c.endpoint} {c.reason}" for c in missed[:3])
            )
        if self.regressed:
            reasons.append(
                "regressed against the baseline: "
                + "; ".join(f"{c.endpoint} {c.reason}" for c in self.regressed[:3])
            )
        return f"{self.test}: " + " | ".join(reasons) if reasons else None


def build_report(
    test: LoadTest,
    result: ShareResult,
    criteria: list[CriterionResult],
    *,
    run_id: str,
    target: str,
) -> LoadTestReport:
    return LoadTestReport(
        test=test.name,
        run_id=run_id,
        target=target,
        model=result.model,
        shares=result.shares,
        started_at=result.started_at,
        duration_s=result.duration_s,
        asked=result.asked,
        sent=result.sent,
        asked_rps=round(result.asked / result.duration_s, 2) if result.duration_s else 0.0,
        achieved_rps=round(result.sent / result.duration_s, 2) if result.duration_s else 0.0,
        late_sends=result.late_sends,
        send_lag_max_ms=result.send_lag_max_ms,
        endpoints=endpoint_stats(result),
        steps=step_stats(result),
        timeline=timeline(result),
        criteria=criteria,
        aborted=result.aborted,
        definition=load_fingerprint(test),
    )


def assemble_report(
    test: LoadTest,
    result: ShareResult,
    *,
    run_id: str,
    target: str,
    shares: list[ShareRun] | None = None,
) -> LoadTestReport:
    """The run's report from the merged result: the figures, the criteria judged on them, and
    with 2+ shares each share's row and whether they ran together."""
    report = build_report(test, result, [], run_id=run_id, target=target)
    report.criteria = judge(test.criteria, report.endpoints)
    report.share_runs = shares or []
    report.apart = overlap_problem(report.share_runs, result.duration_s)
    return report


def add_comparison(
    report: LoadTestReport,
    result: ShareResult,
    previous: Baseline | None,
    policy: ComparePolicy,
    *,
    kept: bool,
    establishing: bool = False,
) -> None:
    """Compare the run with the newest baseline (`previous`) per endpoint, saying in
    `report.baseline` what it was compared with, or why not (history `kept` or off; a run
    `establishing` the first baseline is told so, not told to establish one). A baseline made
    from another definition of the test (another load under the same name: the tests file
    edited) is not compared with: its figures measured something else."""
    if previous is not None and previous.definition and previous.definition != report.definition:
        report.baseline = (
            f"not compared: the newest baseline of {report.test} against this target was made "
            f"from another definition of the test (load {previous.definition}, now "
            f"{report.definition}: the tests file changed what it sends)"
            + ("" if establishing else "; run with --baseline (baseline=true) to establish one")
        )
    elif previous is not None:
        report.comparisons = compare_to_baseline(
            previous, history_record(report, result).endpoints, policy
        )
        report.baseline = (
            f"baseline of {previous.established_at:%Y-%m-%d %H:%M} UTC from "
            f"{counted(len(previous.run_ids), 'run')}"
        )
    elif kept and establishing:
        report.baseline = "no earlier baseline to compare with"
    elif kept:
        report.baseline = "no baseline yet: run with --baseline (baseline=true) to establish one"


def table_description(report: LoadTestReport, chart: str) -> str:
    """The description of the artifact `perfops-load-<test>`."""
    return (
        f"Load test {report.test} against {report.target}: {report.summary}. Latency is "
        "measured from each request's intended start (open model). "
        + (report.baseline or "history off")
        + f". Chart: {chart}"
    )


def chart_markdown(report: LoadTestReport, png: bytes, chart: str) -> str:
    """The artifact `perfops-load-<test>-chart`: the summary and the PNG inline."""
    return (
        f"# Load test {report.test}\n\n{report.summary}\n\n"
        f"![latency per second](data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
        f"File: `{chart}`\n"
    )


def history_record(report: LoadTestReport, result: ShareResult) -> LoadRunRecord:
    """The run as history keeps it: per endpoint its figures and per-second p95s."""
    endpoints = {}
    for s in report.endpoints:
        endpoints[s.name] = EndpointRecord(
            p50_ms=s.p50_ms,
            p95_ms=s.p95_ms,
            p99_ms=s.p99_ms,
            max_ms=s.max_ms,
            error_rate=s.error_rate,
            rps=s.rps,
            window_p95s=window_p95s(result, s.name),
        )
    return LoadRunRecord(
        run_id=report.run_id,
        test=report.test,
        started_at=report.started_at,
        target=report.target,
        asked_rps=report.asked_rps,
        achieved_rps=report.achieved_rps,
        passed=report.passed,
        aborted=report.aborted is not None,
        regressed=bool(report.regressed),
        endpoints=endpoints,
        definition=report.definition,
    )


def _fmt(value: float | None) -> str | float:
    return "" if value is None else value


def artifact_rows(report: LoadTestReport) -> list[dict[str, object]]:
    """One row per endpoint (all first), then per step; each leads with what it is about, then
    result and reason, then the figures."""
    judged: dict[str, list[CriterionResult]] = {}
    for c in report.criteria:
        judged.setdefault(c.endpoint, []).append(c)
    compared = {c.endpoint: c for c in report.comparisons}
    rows: list[dict[str, object]] = []
    for s in report.endpoints:
        mine = judged.get(s.name, [])
        comparison = compared.get(s.name)
        missed = [c for c in mine if not c.passed]
        if comparison is not None and comparison.result == "regressed":
            result = "regressed"
        elif missed:
            result = "missed"
        elif mine:
            result = "met"
        else:
            result = "measured"
        reasons = [c.reason for c in (missed or mine)]
        if comparison is not None and comparison.result != "not compared":
            reasons.append(comparison.reason)
        rows.append(
            {
                "what": f"endpoint {s.name}",
                "result": result,
                "reason": "; ".join(reasons) or "no criteria for this endpoint",
                **_figures(s),
                "errors": ", ".join(f"{n} {cause}" for cause, n in s.errors_by_cause.items()),
            }
        )
    for s in report.steps:
        rows.append(
            {
                "what": f"step {s.name}",
                "result": "errors" if s.errors else "ok",
                "reason": ", ".join(f"{n} {cause}" for cause, n in s.errors_by_cause.items())
                or "no errors or failed assertions",
                **_figures(s),
                "errors": "",
            }
        )
    columns = list(rows[0]) if rows else []
    return rows + [{k: row.get(k, "") for k in columns} for row in share_rows(report.share_runs)]


def _figures(s: LatencyStats) -> dict[str, object]:
    """The latency and rate columns an endpoint's and a step's rows share."""
    return {
        "requests": s.requests,
        "rps": s.rps,
        "p50_ms": _fmt(s.p50_ms),
        "p90_ms": _fmt(s.p90_ms),
        "p95_ms": _fmt(s.p95_ms),
        "p99_ms": _fmt(s.p99_ms),
        "max_ms": _fmt(s.max_ms),
        "avg_ms": _fmt(s.avg_ms),
        "error_rate": s.error_rate,
    }


def event_payload(report: LoadTestReport) -> dict[str, object]:
    """The `perfops.load.*` events' payload (no secrets: the target is its base URL)."""
    return {
        "test": report.test,
        "run_id": report.run_id,
        "target": report.target,
        "passed": report.passed,
        "aborted": report.aborted,
        "asked_rps": report.asked_rps,
        "achieved_rps": report.achieved_rps,
        "requests": report.sent,
        "shares": report.shares,
        "shares_apart": report.apart,
        "endpoints": {
            s.name: {
                "p50_ms": s.p50_ms,
                "p95_ms": s.p95_ms,
                "p99_ms": s.p99_ms,
                "max_ms": s.max_ms,
                "error_rate": s.error_rate,
                "rps": s.rps,
            }
            for s in report.endpoints
        },
        "criteria_missed": [f"{c.endpoint}: {c.reason}" for c in report.criteria if not c.passed],
        "regressions": [
            {
                "endpoint": c.endpoint,
                "p95_ms": c.p95_ms,
                "baseline_p95_ms": c.baseline_p95_ms,
                "change": c.change,
                "p_value": c.p_value,
                "reason": c.reason,
            }
            for c in report.regressed
        ],
        "baseline": report.baseline,
    }
