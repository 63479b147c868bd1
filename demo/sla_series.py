"""Synthetic API metrics for the SLA demo, tests and benchmark: request counters by status
code and a latency histogram, one sample a minute, with known incidents in them, ready to
back-fill a demo.embedded_prometheus.PrometheusServer.

The traffic has a daily cycle (peak ~1.5x the trough); errors are 0.01% and the latency is
log-normal (median 80 ms, p95 ~180 ms) outside incidents. An `Incident` multiplies the latency
or sets the error ratio between two times. Everything is deterministic, so the benchmark knows
the exact minute each burn rate crosses its threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from demo.embedded_prometheus import MetricSeries

BUCKETS = [round(0.02 * i, 2) for i in range(1, 26)] + [0.75, 1.0, 2.5]  # seconds, + +Inf
BASE_RPS = 2000.0
BASE_ERROR_RATIO = 0.0001
MEDIAN_S, SIGMA = 0.08, 0.5


@dataclass(frozen=True)
class Incident:
    name: str
    start: datetime
    end: datetime
    error_ratio: float | None = None  # share of requests answered 5xx
    latency_factor: float = 1.0  # latency multiplied by this


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def rps_at(ts: float) -> float:
    day = (ts % 86400) / 86400
    return BASE_RPS * (1.0 + 0.25 * math.sin(2 * math.pi * (day - 0.25)))


def error_ratio_at(ts: float, incidents: list[Incident]) -> float:
    for inc in incidents:
        if inc.error_ratio is not None and inc.start.timestamp() <= ts < inc.end.timestamp():
            return inc.error_ratio
    return BASE_ERROR_RATIO


def latency_factor_at(ts: float, incidents: list[Incident]) -> float:
    factor = 1.0
    for inc in incidents:
        if inc.start.timestamp() <= ts < inc.end.timestamp():
            factor *= inc.latency_factor
    return factor


def api_series(
    start: datetime,
    end: datetime,
    incidents: list[Incident],
    service: str = "api",
    buckets: list[float] | None = None,
) -> list[MetricSeries]:
    """Counters `http_requests_total{service,code}`, `http_request_duration_seconds_bucket{le}`
    and `_count`, one sample a minute in [start, end]; the minute's events land at its end.
    Fewer `buckets` (seconds) back-fill faster; the default resolves p95 to about 10 ms. The
    counters are declared gauges (as counters the buckets would be named `..._bucket_total`;
    rate() ignores the type)."""

    def series(name: str, **labels: str) -> MetricSeries:
        return MetricSeries(name, "gauge", {"service": service, **labels}, [])

    ok = series("http_requests_total", code="200")
    bad = series("http_requests_total", code="500")
    count = series("http_request_duration_seconds_count")
    bounds = buckets or BUCKETS
    histogram = [series("http_request_duration_seconds_bucket", le=f"{le:g}") for le in bounds]
    histogram.append(series("http_request_duration_seconds_bucket", le="+Inf"))
    totals = [0.0] * (3 + len(histogram))
    t = int(start.timestamp()) // 60 * 60
    stop = end.timestamp()
    while t <= stop:
        minute = t - 60
        n = rps_at(minute) * 60
        errors = n * error_ratio_at(minute, incidents)
        median = MEDIAN_S * latency_factor_at(minute, incidents)
        totals[0] += n - errors
        totals[1] += errors
        totals[2] += n
        for i, le in enumerate(bounds):
            totals[3 + i] += n * _phi(math.log(le / median) / SIGMA)
        totals[-1] += n
        for s, v in zip([ok, bad, count, *histogram], totals, strict=True):
            s.samples.append((float(t), round(v, 3)))
        t += 60
    return [ok, bad, count, *histogram]


def minutes(start: datetime, end: datetime) -> list[datetime]:
    """Every whole minute in [start, end]."""
    first = start.replace(second=0, microsecond=0)
    count = int((end - first).total_seconds() // 60) + 1
    return [first + timedelta(minutes=i) for i in range(count)]
