"""Synthetic Prometheus series with known answers, for the report's tests, benchmark and demo.

Each endpoint gets the metrics deployments/report.yaml queries: a latency histogram
`http_request_duration_seconds_bucket{method,route,le}` whose p50/p95/p99 are exactly the values
given (the buckets include them and the cumulative shares at them are exactly 0.5/0.95/0.99, so
`histogram_quantile` lands on them), and `http_requests_total{method,route,code}` growing by
`rps` per second, `error_share` of it with code 500. Plus node CPU and memory, and the agent and
workflow duration histograms. Counters are floats, so the shares stay exact.

Traffic may follow a daily curve (`daily_swing`): every minute has the same latency
distribution, so the week's quantiles stay the ones given, while the throughput varies.
"""

from __future__ import annotations

import itertools
import math
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from decisions.reporting import ReportWeek
from demo.embedded_prometheus import MetricSeries, PrometheusServer, Sample, merge_series
from perfops.errors import MissingPrerequisite

BASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class SyntheticEndpoint:
    method: str
    route: str
    p50_s: float
    p95_s: float
    p99_s: float
    rps: float  # mean requests per second (0 = no traffic)
    error_share: float = 0.0
    daily_swing: float = 0.0  # 0.3 = traffic between 70% and 130% of rps over a day
    gaps: list[tuple[float, float]] = field(default_factory=list)  # [start, end) unix s


def _in_gap(ts: float, gaps: list[tuple[float, float]]) -> bool:
    return any(start <= ts < end for start, end in gaps)


def quantile_shares(
    p50: float, p95: float, p99: float, base: tuple[float, ...] = BASE_BUCKETS
) -> list[tuple[float, float]]:
    """(upper bound, cumulative share) per bucket, the last +Inf; exact at p50/p95/p99."""
    if not 0 < p50 < p95 < p99:
        raise ValueError(f"need 0 < p50 < p95 < p99, got {p50}, {p95}, {p99}")
    anchors = [(0.0, 0.0), (p50, 0.5), (p95, 0.95), (p99, 0.99)]
    bounds = sorted({*base, p50, p95, p99})
    shares: list[tuple[float, float]] = []
    for le in bounds:
        if le >= p99:
            # beyond p99: the last 1% spread evenly up to 2 x p99
            share = 0.99 + 0.01 * min(1.0, (le - p99) / p99) if le > p99 else 0.99
        else:
            (x0, y0), (x1, y1) = next(
                (a, b) for a, b in itertools.pairwise(anchors) if a[0] <= le <= b[0]
            )
            share = y0 + (y1 - y0) * (le - x0) / (x1 - x0)
        shares.append((le, share))
    shares.append((math.inf, 1.0))
    return shares


def _le(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


def histogram(
    name: str,
    labels: dict[str, str],
    shares: list[tuple[float, float]],
    counts: list[tuple[float, float]],
) -> list[MetricSeries]:
    """Cumulative `name_bucket` series from per-sample request counts (time, cumulative)."""
    return [
        MetricSeries(
            name=f"{name}_bucket",
            # OpenMetrics would name a counter family's samples *_total; Prometheus' rate()
            # does not care about the declared type, so the buckets are declared gauges.
            type="gauge",
            labels={**labels, "le": _le(le)},
            samples=[(t, total * share) for t, total in counts],
        )
        for le, share in shares
    ]


def request_counts(
    rps: float,
    start: float,
    end: float,
    step_s: float,
    swing: float,
    gaps: list[tuple[float, float]],
) -> list[tuple[float, float]]:
    """Cumulative request count at each sample time (skipping gaps; the count still grows)."""
    out: list[tuple[float, float]] = []
    total = 0.0
    t = start
    while t <= end:
        phase = 2 * math.pi * ((t % 86400) / 86400)
        total += rps * step_s * (1 + swing * math.sin(phase - math.pi / 2))
        if not _in_gap(t, gaps):
            out.append((t, total))
        t += step_s
    return out


def endpoint_series(
    e: SyntheticEndpoint,
    start: float,
    end: float,
    step_s: float,
    buckets: tuple[float, ...] = BASE_BUCKETS,
) -> list[MetricSeries]:
    labels = {"method": e.method, "route": e.route}
    counts = request_counts(e.rps, start, end, step_s, e.daily_swing, e.gaps)
    out = histogram(
        "http_request_duration_seconds",
        labels,
        quantile_shares(e.p50_s, e.p95_s, e.p99_s, buckets),
        counts,
    )
    out.append(
        MetricSeries(
            "http_requests_total",
            "counter",
            {**labels, "code": "200"},
            [(t, c * (1 - e.error_share)) for t, c in counts],
        )
    )
    out.append(
        MetricSeries(
            "http_requests_total",
            "counter",
            {**labels, "code": "500"},
            [(t, c * e.error_share) for t, c in counts],
        )
    )
    return out


def node_series(
    start: float,
    end: float,
    step_s: float,
    cpu_mean: float,
    cpu_swing: float,
    memory_mean: float,
    memory_swing: float,
    total_bytes: float = 16 * 2**30,
) -> list[MetricSeries]:
    """node_cpu_seconds_total{mode="idle"} (one CPU) and node_memory_* following a daily curve
    (CPU and memory in percent)."""
    idle: list[Sample] = []
    available: list[Sample] = []
    total: list[Sample] = []
    idle_total = 0.0
    t = start
    while t <= end:
        phase = math.sin(2 * math.pi * ((t % 86400) / 86400) - math.pi / 2)
        cpu = cpu_mean + cpu_swing * phase
        idle_total += step_s * (1 - cpu / 100)
        idle.append((t, idle_total))
        used = memory_mean + memory_swing * phase
        available.append((t, total_bytes * (1 - used / 100)))
        total.append((t, total_bytes))
        t += step_s
    return [
        MetricSeries("node_cpu_seconds_total", "counter", {"cpu": "0", "mode": "idle"}, idle),
        MetricSeries("node_memory_MemAvailable_bytes", "gauge", {}, available),
        MetricSeries("node_memory_MemTotal_bytes", "gauge", {}, total),
    ]


def duration_series(
    name: str,
    quantiles_s: tuple[float, float, float],
    per_s: float,
    start: float,
    end: float,
    step_s: float,
    buckets: tuple[float, ...] = BASE_BUCKETS,
) -> list[MetricSeries]:
    """A `name_bucket` histogram of `per_s` events a second with the given p50/p95/p99."""
    counts = request_counts(per_s, start, end, step_s, 0.0, [])
    return histogram(name, {}, quantile_shares(*quantiles_s, buckets), counts)


# -- the demo's weekly report --------------------------------------------------------------------

STEP_S = 300
DEMO_BUCKETS = (0.01, 0.05, 0.25, 1.0)


def demo_series(week: ReportWeek) -> list[MetricSeries]:
    """The report week and the one before: the seed's three endpoints (execute over its target
    this week), a health check that lost a few hours, node CPU and memory, durations."""
    out: list[MetricSeries] = []
    gap = (week.start.timestamp() + 2.5 * 86400, week.start.timestamp() + 2.75 * 86400)
    for w, p95s, cpu in (
        (week.previous(), (0.070, 0.160, 0.380), 45),
        (week, (0.085, 0.240, 0.41), 58),
    ):
        start, end = w.start.timestamp() + STEP_S, w.end.timestamp() - STEP_S
        endpoints = [
            SyntheticEndpoint(
                "GET", "/api/v1/agents", p95s[0] * 0.45, p95s[0], p95s[0] * 1.7, 700, 0.0008, 0.35
            ),
            SyntheticEndpoint(
                "POST",
                "/api/v1/agents/execute",
                p95s[1] * 0.4,
                p95s[1],
                p95s[1] * 1.6,
                260,
                0.004,
                0.35,
            ),
            SyntheticEndpoint(
                "POST",
                "/api/v1/workflows/run",
                p95s[2] * 0.5,
                p95s[2],
                p95s[2] * 1.5,
                45,
                0.001,
                0.35,
            ),
            SyntheticEndpoint(
                "GET", "/healthz", 0.001, 0.003, 0.006, 2, 0.0, 0.0, gaps=[gap] if w is week else []
            ),
        ]
        for e in endpoints:
            out += endpoint_series(e, start, end, STEP_S, DEMO_BUCKETS)
        out += node_series(start, end, STEP_S, cpu, 18, 62, 8)
        out += duration_series(
            "agent_execution_duration_seconds", (1.4, 3.8, 6.5), 4, start, end, STEP_S
        )
        out += duration_series(
            "workflow_completion_duration_seconds", (11.0, 28.0, 50.0), 0.7, start, end, STEP_S
        )
    return out


@contextmanager
def demo_prometheus(workdir: Path, week: ReportWeek) -> Iterator[str]:
    """Back-fill and start a private Prometheus with `demo_series(week)` under `workdir`; yield
    its URL; stop it at the end."""
    server = PrometheusServer(workdir, merge_series(demo_series(week)), scrape_interval="1m")
    try:
        server.start()
    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        raise MissingPrerequisite(
            f"the demo Prometheus did not start; see {server.log_path}"
        ) from exc
    try:
        yield server.url
    finally:
        server.stop()
