"""Baselines of a load test and the comparison that tells noise from a regression.

A run's record (`LoadRunRecord`) keeps, per endpoint, its p95 over the whole run and the p95 of
each second of it (the "window p95s"). A baseline is established from the last N *good* runs
(criteria met, not aborted, not themselves a regression): per endpoint, the median of their
p95s and their window p95s pooled.

A run is a regression on an endpoint when both hold:
1. **significant**: its window p95s are higher than the baseline's by a one-sided Mann-Whitney
   U test at `alpha` (rank based: no assumption of normal latencies; the windows make
   independent-enough samples of "the p95 right now");
2. **large enough**: the median of its window p95s is at least `min_effect` (default 10%)
   above the baseline's (the typical second, which one bad second does not move; the overall
   p95 when there are too few seconds).
The first alone flags tiny shifts a long run makes significant; the second alone flags noise on
a short run. Pure: scipy for the test.
"""

from __future__ import annotations

import statistics
from datetime import datetime

from pydantic import BaseModel, Field
from scipy.stats import mannwhitneyu  # type: ignore[import-untyped]

from perfops.wording import counted

MAX_BASELINE_WINDOWS = 2_000  # pooled window samples kept per endpoint


class ComparePolicy(BaseModel):
    """How sure, and how big, before a run counts as a regression."""

    runs: int = Field(default=5, ge=1, le=50, description="Good runs a baseline is made from.")
    alpha: float = Field(default=0.01, gt=0, lt=0.5, description="Significance of the U test.")
    min_effect: float = Field(
        default=0.10, ge=0, le=10, description="p95 at least this much above the baseline's."
    )
    min_windows: int = Field(
        default=5, ge=3, le=1_000, description="Seconds with enough requests to test at all."
    )


class EndpointRecord(BaseModel):
    """One endpoint of one run, as history keeps it."""

    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    error_rate: float = 0.0
    rps: float = 0.0
    window_p95s: list[float] = Field(default_factory=list)


class LoadRunRecord(BaseModel):
    """A load test run in history (`perfops.load_test_runs`)."""

    run_id: str
    test: str
    started_at: datetime
    target: str
    asked_rps: float
    achieved_rps: float
    passed: bool
    aborted: bool
    regressed: bool
    endpoints: dict[str, EndpointRecord]
    # decisions.load_scenarios.load_fingerprint of what the run sent ("": kept before it was)
    definition: str = ""


class BaselineEndpoint(BaseModel):
    p95_ms: float
    window_p95s: list[float]
    runs: int


class Baseline(BaseModel):
    test: str
    target: str = ""  # the base URL its runs sent to ("": established before targets were kept)
    established_at: datetime
    run_ids: list[str]
    endpoints: dict[str, BaselineEndpoint]
    # the load its runs sent (load_fingerprint; "": established before it was kept)
    definition: str = ""


class NoBaseline(ValueError):
    """No good runs to make a baseline from; the message says why."""


def establish_baseline(
    test: str,
    runs: list[LoadRunRecord],
    now: datetime,
    policy: ComparePolicy | None = None,
    *,
    target: str,
    definition: str = "",
) -> Baseline:
    """The baseline of `test` against `target` (a base URL) from the last `policy.runs` good
    runs of that test against that target (newest first in `runs`): a run against another
    system never enters it. With `definition` (the load the test sends now,
    `load_fingerprint`), only runs that sent that load: a run of the test's earlier
    definition (another rate, other paths) never enters it either."""
    policy = policy or ComparePolicy()
    mine = sorted(
        (
            r
            for r in runs
            if r.test == test
            and r.target == target
            and (not definition or r.definition == definition)
        ),
        key=lambda r: r.started_at,
        reverse=True,
    )
    good = [r for r in mine if r.passed and not r.aborted and not r.regressed][: policy.runs]
    if not good:
        raise NoBaseline(
            f"no good run of {test} against {target}"
            + (" of its current definition" if definition else "")
            + " to make a baseline from "
            f"({counted(len(mine), 'run')} in history, none met its criteria without an abort "
            "or a regression)"
        )
    endpoints: dict[str, BaselineEndpoint] = {}
    names = {name for r in good for name in r.endpoints}
    for name in sorted(names):
        p95s = [r.endpoints[name].p95_ms for r in good if name in r.endpoints]
        values = [p for p in p95s if p is not None]
        if not values:
            continue
        pooled = [w for r in good if name in r.endpoints for w in r.endpoints[name].window_p95s]
        endpoints[name] = BaselineEndpoint(
            p95_ms=round(statistics.median(values), 3),
            window_p95s=pooled[:MAX_BASELINE_WINDOWS],
            runs=len(values),
        )
    return Baseline(
        test=test,
        target=target,
        established_at=now,
        run_ids=[r.run_id for r in good],
        endpoints=endpoints,
        definition=definition,
    )


class Comparison(BaseModel):
    """One endpoint of a run against the baseline."""

    endpoint: str
    result: str  # regressed, unchanged, improved, not compared
    reason: str
    baseline_p95_ms: float | None
    p95_ms: float | None
    change: float | None  # median window p95 / the baseline's - 1 (or overall p95s' ratio)
    p_value: float | None


def compare_to_baseline(
    baseline: Baseline,
    endpoints: dict[str, EndpointRecord],
    policy: ComparePolicy | None = None,
) -> list[Comparison]:
    """Each endpoint of a run against the baseline: regressed only when significant (one-sided
    Mann-Whitney on window p95s, `alpha`) and at least `min_effect` slower at p95."""
    policy = policy or ComparePolicy()
    out = []
    for name, now in endpoints.items():
        base = baseline.endpoints.get(name)
        if base is None or now.p95_ms is None:
            out.append(
                Comparison(
                    endpoint=name,
                    result="not compared",
                    reason="not in the baseline" if base is None else "no responses",
                    baseline_p95_ms=base.p95_ms if base else None,
                    p95_ms=now.p95_ms,
                    change=None,
                    p_value=None,
                )
            )
            continue
        change = now.p95_ms / base.p95_ms - 1 if base.p95_ms > 0 else None
        if min(len(now.window_p95s), len(base.window_p95s)) >= policy.min_windows:
            # the effect on the typical second: one bad second (a GC pause, a noisy neighbour)
            # moves a run's overall p95 but not the median of its per-second p95s
            typical = statistics.median(base.window_p95s)
            if typical > 0:
                change = statistics.median(now.window_p95s) / typical - 1
        if min(len(now.window_p95s), len(base.window_p95s)) < policy.min_windows:
            out.append(
                Comparison(
                    endpoint=name,
                    result="not compared",
                    reason=f"fewer than {policy.min_windows} seconds with enough requests to "
                    f"test (run {len(now.window_p95s)}, baseline {len(base.window_p95s)})",
                    baseline_p95_ms=base.p95_ms,
                    p95_ms=now.p95_ms,
                    change=change,
                    p_value=None,
                )
            )
            continue
        p_slower = float(
            mannwhitneyu(now.window_p95s, base.window_p95s, alternative="greater").pvalue
        )
        p_faster = float(mannwhitneyu(now.window_p95s, base.window_p95s, alternative="less").pvalue)
        big = change is not None and change >= policy.min_effect
        delta = f" (typical second {change:+.1%})" if change is not None else ""
        shown = f"p95 {now.p95_ms:,.1f} ms vs baseline {base.p95_ms:,.1f} ms{delta}"
        if p_slower < policy.alpha and big:
            result = "regressed"
            reason = (
                f"{shown}: slower beyond noise (Mann-Whitney p={p_slower:.2g} < "
                f"{policy.alpha:g}) and by at least {policy.min_effect:.0%}"
            )
        elif p_slower < policy.alpha:
            result = "unchanged"
            reason = (
                f"{shown}: significantly slower (p={p_slower:.2g}) but under the minimum effect "
                f"{policy.min_effect:.0%}"
            )
        elif p_faster < policy.alpha and change is not None and change <= -policy.min_effect:
            result = "improved"
            reason = f"{shown}: faster beyond noise (p={p_faster:.2g})"
        else:
            result = "unchanged"
            reason = f"{shown}: within noise (p={p_slower:.2g})"
        out.append(
            Comparison(
                endpoint=name,
                result=result,
                reason=reason,
                baseline_p95_ms=base.p95_ms,
                p95_ms=now.p95_ms,
                change=round(change, 4) if change is not None else None,
                p_value=round(p_slower, 6),
            )
        )
    return out
