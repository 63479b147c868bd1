"""What a load test measured, and what it means: the result of one share (HDR histograms,
encoded, per step, per endpoint and per second; error counts by cause), shares merged exactly
(HDR histograms add), percentiles and rates per endpoint, and the success criteria judged.

Latencies are microseconds from each request's *intended* start (its place on the arrival
schedule), not from when it was sent: a stalled server shows up in the latency of every request
that should have started meanwhile (no coordinated omission). Pure: `hdrh` is a data structure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from pydantic import BaseModel, Field

from decisions.load_scenarios import Criteria, LoadTest

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: the longest test
DIGITS = 3  # the run's histograms: 0.1% value precision
WINDOW_DIGITS = 2  # the per-second histograms of the chart and the baseline comparison
ALL = "all"
PERCENTILES = (50.0, 90.0, 95.0, 99.0)


def new_histogram(digits: int = DIGITS) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def decode(encoded: str, digits: int = DIGITS) -> HdrHistogram:
    h = new_histogram(digits)
    if encoded:
        h.decode_and_add(encoded)
    return h


def encode(h: HdrHistogram) -> str:
    return h.encode().decode("ascii") if h.get_total_count() else ""


def add_encoded(into: str, other: str, digits: int = DIGITS) -> str:
    """Two encoded histograms added (exactly: counts per bucket add)."""
    if not into:
        return other
    if not other:
        return into
    h = decode(into, digits)
    h.decode_and_add(other)
    return encode(h)


class Counts(BaseModel):
    """One step's or one endpoint's record in one share (or merged)."""

    requests: int = 0  # sent
    responses: int = 0  # answered (any status)
    errors: dict[str, int] = Field(default_factory=dict)  # cause -> count
    histogram: str = ""  # encoded HDR histogram of latencies, microseconds

    def merged(self, other: Counts) -> Counts:
        errors = dict(self.errors)
        for cause, n in other.errors.items():
            errors[cause] = errors.get(cause, 0) + n
        return Counts(
            requests=self.requests + other.requests,
            responses=self.responses + other.responses,
            errors=errors,
            histogram=add_encoded(self.histogram, other.histogram),
        )


class Window(BaseModel):
    """One second of the test (by intended start) for one endpoint."""

    requests: int = 0
    errors: int = 0
    histogram: str = ""  # WINDOW_DIGITS


class ShareResult(BaseModel):
    """What one share of a load test did (one generator process, one flow run)."""

    share: int = 0
    shares: int = 1
    model: Literal["open", "closed"] = "open"
    started_at: datetime
    started_monotonic: float = 0.0  # the generator's clock at the schedule's time 0
    start_late_s: float = 0.0  # began this long after the start shared by the test's shares
    ran_on: str = ""  # host:pid of the flow run that sent the share
    flow_run_id: str | None = None  # the share's own flow run (run_load_share)
    base_url: str = ""  # the target this share sent to
    test_hash: str = ""  # decisions.load_scenarios.definition_hash of the test it ran
    duration_s: float  # the schedule's length
    seconds: float  # wall time, drain included
    asked: int  # arrivals the schedule asked of this share (open model)
    sent: int  # requests sent before the schedule ended
    late_sends: int = 0  # sent more than 10 ms after their intended start
    send_lag_max_ms: float = 0.0
    steps: dict[str, Counts] = Field(default_factory=dict)
    endpoints: dict[str, Counts] = Field(default_factory=dict)
    timeline: dict[str, list[Window]] = Field(default_factory=dict)  # endpoint -> per second
    aborted: str | None = None  # why the test stopped early


def _merge_counts(a: dict[str, Counts], b: dict[str, Counts]) -> dict[str, Counts]:
    out = dict(a)
    for key, counts in b.items():
        out[key] = out[key].merged(counts) if key in out else counts
    return out


def merge_shares(results: list[ShareResult]) -> ShareResult:
    """The shares of one test as one result: counts added, histograms added bucket by bucket
    (exact, as if one generator had recorded every request)."""
    if not results:
        raise ValueError("no share results to merge")
    first = results[0]
    merged = first.model_copy(deep=True)
    for r in results[1:]:
        merged.steps = _merge_counts(merged.steps, r.steps)
        merged.endpoints = _merge_counts(merged.endpoints, r.endpoints)
        for endpoint, windows in r.timeline.items():
            mine = merged.timeline.setdefault(endpoint, [])
            while len(mine) < len(windows):
                mine.append(Window())
            for i, w in enumerate(windows):
                m = mine[i]
                mine[i] = Window(
                    requests=m.requests + w.requests,
                    errors=m.errors + w.errors,
                    histogram=add_encoded(m.histogram, w.histogram, WINDOW_DIGITS),
                )
        merged.asked += r.asked
        merged.sent += r.sent
        merged.late_sends += r.late_sends
        merged.send_lag_max_ms = max(merged.send_lag_max_ms, r.send_lag_max_ms)
        merged.seconds = max(merged.seconds, r.seconds)
        merged.started_at = min(merged.started_at, r.started_at)
        merged.aborted = merged.aborted or r.aborted
        merged.start_late_s = max(merged.start_late_s, r.start_late_s)
    merged.share, merged.shares = 0, max(r.shares for r in results)
    if len(results) > 1:  # per share: decisions.load_shares.share_runs
        merged.ran_on, merged.flow_run_id = "", None
    return merged


class LatencyStats(BaseModel):
    """Percentiles and rates of one endpoint, one step or all requests."""

    name: str
    requests: int
    responses: int
    errors: int
    error_rate: float
    errors_by_cause: dict[str, int]
    rps: float  # requests sent per second of the schedule
    avg_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def _ms(value_us: float) -> float:
    return round(value_us / 1000.0, 3)


def latency_stats(name: str, counts: Counts, duration_s: float) -> LatencyStats:
    h = decode(counts.histogram)
    has = h.get_total_count() > 0
    errors = sum(counts.errors.values())
    return LatencyStats(
        name=name,
        requests=counts.requests,
        responses=counts.responses,
        errors=errors,
        error_rate=round(errors / counts.requests, 6) if counts.requests else 0.0,
        errors_by_cause=dict(sorted(counts.errors.items(), key=lambda kv: -kv[1])),
        rps=round(counts.requests / duration_s, 2) if duration_s > 0 else 0.0,
        avg_ms=_ms(h.get_mean_value()) if has else None,
        p50_ms=_ms(h.get_value_at_percentile(50.0)) if has else None,
        p90_ms=_ms(h.get_value_at_percentile(90.0)) if has else None,
        p95_ms=_ms(h.get_value_at_percentile(95.0)) if has else None,
        p99_ms=_ms(h.get_value_at_percentile(99.0)) if has else None,
        max_ms=_ms(h.get_max_value()) if has else None,
    )


def total_counts(result: ShareResult) -> Counts:
    total = Counts()
    for c in result.endpoints.values():
        total = total.merged(c)
    return total


def endpoint_stats(result: ShareResult) -> list[LatencyStats]:
    """All requests first, then each endpoint."""
    d = result.duration_s
    return [latency_stats(ALL, total_counts(result), d)] + [
        latency_stats(name, c, d) for name, c in result.endpoints.items()
    ]


def step_stats(result: ShareResult) -> list[LatencyStats]:
    return [latency_stats(name, c, result.duration_s) for name, c in result.steps.items()]


class TimelinePoint(BaseModel):
    second: int
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def timeline(result: ShareResult, endpoint: str | None = None) -> list[TimelinePoint]:
    """Per second (by intended start): requests, errors and percentiles, for one endpoint or
    all of them (their per-second histograms added)."""
    names = [endpoint] if endpoint else list(result.timeline)
    length = max((len(result.timeline.get(n, [])) for n in names), default=0)
    points = []
    for i in range(length):
        h = new_histogram(WINDOW_DIGITS)
        requests = errors = 0
        for n in names:
            windows = result.timeline.get(n, [])
            if i < len(windows):
                w = windows[i]
                requests += w.requests
                errors += w.errors
                if w.histogram:
                    h.decode_and_add(w.histogram)
        has = h.get_total_count() > 0
        points.append(
            TimelinePoint(
                second=i,
                requests=requests,
                errors=errors,
                p50_ms=_ms(h.get_value_at_percentile(50.0)) if has else None,
                p95_ms=_ms(h.get_value_at_percentile(95.0)) if has else None,
                p99_ms=_ms(h.get_value_at_percentile(99.0)) if has else None,
                max_ms=_ms(h.get_max_value()) if has else None,
            )
        )
    return points


def window_p95s(result: ShareResult, endpoint: str, min_requests: int = 20) -> list[float]:
    """The p95 (ms) of each second of one endpoint (or `all`) with at least `min_requests`
    requests: the samples the baseline comparison tests."""
    return [
        p.p95_ms
        for p in timeline(result, None if endpoint == ALL else endpoint)
        if p.p95_ms is not None and p.requests >= min_requests
    ]


class CriterionResult(BaseModel):
    endpoint: str
    measure: str  # avg_ms, p95_ms, p99_ms, error_rate, rps
    limit: float
    value: float | None
    passed: bool
    reason: str


_BOUNDS = {
    "avg_ms": ("avg_ms", "at most", "ms"),
    "p95_ms": ("p95_ms", "at most", "ms"),
    "p99_ms": ("p99_ms", "at most", "ms"),
    "max_error_rate": ("error_rate", "at most", ""),
    "min_rps": ("rps", "at least", " rps"),
}


# A test whose criteria bound no error rate is still judged on its errors (as Locust fails a
# run with any failure by default): errors of all requests at most this.
DEFAULT_MAX_ERROR_RATE = 0.01
DEFAULT_NOTE = "; the default: the test sets no max_error_rate criterion"


def judged_criteria(criteria: list[Criteria]) -> list[Criteria]:
    """The test's criteria, plus `{endpoint: all, max_error_rate: 0.01}` when none of them
    bounds an error rate: a run answering 30 % errors does not pass on its latency alone."""
    if any(c.max_error_rate is not None for c in criteria):
        return list(criteria)
    return [*criteria, Criteria(endpoint="all", max_error_rate=DEFAULT_MAX_ERROR_RATE)]


def judge(criteria: list[Criteria], stats: list[LatencyStats]) -> list[CriterionResult]:
    """Each criterion against the measured figures (with the default error-rate bound when
    the criteria set none: `judged_criteria`); a figure that could not be measured (no
    responses) fails its criterion."""
    by_name = {s.name: s for s in stats}
    results = []
    judged = judged_criteria(criteria)
    for i, c in enumerate(judged):
        s = by_name.get(c.endpoint)
        for field, (measure, how, unit) in _BOUNDS.items():
            limit = getattr(c, field)
            if limit is None:
                continue
            value = getattr(s, measure) if s is not None else None
            if value is None:
                passed, reason = False, f"{measure} not measured: no responses"
            else:
                passed = value <= limit if how == "at most" else value >= limit
                shown = f"{value:.2%}" if measure == "error_rate" else f"{value:,.1f}{unit}"
                want = f"{limit:.2%}" if measure == "error_rate" else f"{limit:,g}{unit}"
                reason = f"{measure} {shown}, {how} {want}: {'met' if passed else 'missed'}"
            if i >= len(criteria):  # not the test's own
                reason += DEFAULT_NOTE
            results.append(
                CriterionResult(
                    endpoint=c.endpoint,
                    measure=measure,
                    limit=float(limit),
                    value=value,
                    passed=passed,
                    reason=reason,
                )
            )
    return results


def asked_rps(test: LoadTest, asked: int) -> float:
    return round(asked / test.seconds, 2) if test.seconds else 0.0
