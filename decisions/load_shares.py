"""The shares of one load test: where each ran, how late it began, and whether they ran together.

Every share of a test is asked to begin at one wall-clock time (the start the parent passes
in); a share that begins later reports by how much (`ShareResult.start_late_s`). Shares whose
starts lie further apart than `max_start_gap_s` did not send the asked rate together: the
merged figures describe a load the target never got, so the run fails saying which share was
late. Pure: no Prefect, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from decisions.load_results import ShareResult

MAX_GAP = 0.1  # the shares' starts may lie this share of the test's duration apart
MIN_GAP_S = 1.0  # ... and at least this much for a short test
LATE_S = 0.5  # a share beginning this long after the shared start is reported late

Where = Literal["here", "worker", "taken back"]


class ShareRun(BaseModel):
    """One share as the report shows it."""

    share: int  # 1-based
    shares: int
    where: Where  # in the parent's run, a worker's run, or taken back from the pool
    ran_on: str  # host:pid of the flow run that sent it
    flow_run_id: str | None
    start_late_s: float
    asked: int
    sent: int
    aborted: str | None = None

    @property
    def late(self) -> bool:
        return self.start_late_s >= LATE_S


def share_runs(results: list[ShareResult], where: dict[int, Where]) -> list[ShareRun]:
    """One row per share (`where` by 0-based share number; missing: here)."""
    return [
        ShareRun(
            share=r.share + 1,
            shares=r.shares,
            where=where.get(r.share, "here"),
            ran_on=r.ran_on,
            flow_run_id=r.flow_run_id,
            start_late_s=r.start_late_s,
            asked=r.asked,
            sent=r.sent,
            aborted=r.aborted,
        )
        for r in sorted(results, key=lambda r: r.share)
    ]


def identity_problems(results: list[ShareResult], base_url: str, test_hash: str) -> list[str]:
    """Why the shares' figures may not be merged (empty: they may): a share that sent to another
    target than the parent checked (its run resolved its own block or URL), or that ran another
    definition of the test (its tests file differs). Merged, they would mix two systems or two
    loads into one set of percentiles."""
    problems = []
    for r in sorted(results, key=lambda r: r.share):
        which = f"share {r.share + 1} of {r.shares}"
        if r.base_url != base_url:
            problems.append(
                f"{which} sent to {r.base_url or 'an unnamed target'}, not to {base_url} that "
                "the test was checked against"
            )
        if r.test_hash != test_hash:
            problems.append(
                f"{which} ran another definition of the test (hash {r.test_hash or 'none'}, "
                f"checked {test_hash}): the tests file differs where it ran"
            )
    return problems


def max_start_gap_s(duration_s: float) -> float:
    """How far apart the shares' starts may lie: 10% of the test, at least 1 s."""
    return max(MIN_GAP_S, MAX_GAP * duration_s)


def overlap_problem(runs: list[ShareRun], duration_s: float) -> str | None:
    """Why the shares did not run together (None when they did): their starts lie further
    apart than `max_start_gap_s`, so for part of the test only some of them were sending."""
    if len(runs) < 2:
        return None
    first = min(runs, key=lambda r: r.start_late_s)
    last = max(runs, key=lambda r: r.start_late_s)
    gap = last.start_late_s - first.start_late_s
    if gap <= max_start_gap_s(duration_s):
        return None
    together = max(0.0, duration_s - gap)
    return (
        f"the shares did not run together: share {last.share} began {last.start_late_s:.1f} s "
        f"after the shared start, share {first.share} {first.start_late_s:.1f} s, so all "
        f"{len(runs)} sent together for {together:.1f} of {duration_s:g} s (less than "
        f"{1 - MAX_GAP:.0%}) and the target never got the asked rate from all of them; give the "
        "workers more time (a worker that starts runs slowly) or run fewer shares"
    )


def share_rows(runs: list[ShareRun]) -> list[dict[str, object]]:
    """The artifact rows of the shares, after the endpoints and steps (a test in one share
    has none)."""
    if len(runs) < 2:
        return []
    rows: list[dict[str, object]] = []
    for r in runs:
        place = {
            "here": "in the parent's run",
            "worker": "in its own run on a worker of the pool",
            "taken back": "taken back from the pool (no worker took it in time), in the parent's "
            "run",
        }[r.where]
        started = f"began {r.start_late_s:.1f} s late" if r.late else "began at the shared start"
        rows.append(
            {
                "what": f"share {r.share} of {r.shares}",
                "result": "aborted" if r.aborted else ("late" if r.late else "on time"),
                "reason": f"{place} on {r.ran_on or 'unknown'}"
                + (f" (flow run {r.flow_run_id})" if r.flow_run_id else "")
                + f"; {started}; sent {r.sent:,} of {r.asked:,} asked"
                + (f"; {r.aborted}" if r.aborted else ""),
                "requests": r.sent,
            }
        )
    return rows
