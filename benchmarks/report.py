"""Benchmark: the weekly report for a week of 1-minute data for 20 endpoints renders and sends in
under 30 s.

Set-up (not timed against the goal): a real Prometheus back-filled with promtool with one ISO
week of 1-minute samples for 20 endpoints (latency histograms with 10 buckets, requests by
status code), node CPU and memory, and two duration histograms; an aiosmtpd server; a real
Prefect server. Measured, side by side in one run:

- anchor: the report's PromQL alone (every instant and range query, straight over HTTP);
- the flow `generate_weekly_report` end to end (queries, events, 20+ charts, HTML, CSV and
  Parquet, archive to a folder, email to aiosmtpd), as its flow run, `RUNS` times.

Prints a table and, last, a one-line summary; exits 1 when a run misses the goal.
    python -m benchmarks.report
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from benchmarks._support import prefect_server, print_table

if TYPE_CHECKING:
    from demo.embedded_prometheus import MetricSeries

GOAL_S = 30.0
RUNS = 2
ENDPOINTS = 20
BUCKETS = (0.005, 0.025, 0.1, 0.25, 1.0, 2.5)


def _series(week_start: float, week_end: float) -> list[MetricSeries]:
    from demo.sample_metrics import (
        SyntheticEndpoint,
        duration_series,
        endpoint_series,
        node_series,
    )

    seed = [
        ("GET", "/api/v1/agents", 0.087, 800.0),
        ("POST", "/api/v1/agents/execute", 0.180, 300.0),
        ("POST", "/api/v1/workflows/run", 0.450, 60.0),
    ]
    endpoints = [
        SyntheticEndpoint(m, r, p95 * 0.45, p95, p95 * 1.8, rps, 0.002, 0.3)
        for m, r, p95, rps in seed
    ]
    for n in range(ENDPOINTS - len(seed)):
        p95 = 0.02 + 0.01 * n
        endpoints.append(
            SyntheticEndpoint(
                "GET", f"/api/v1/resource{n:02d}", p95 * 0.5, p95, p95 * 2, 20.0 + n, 0.001, 0.3
            )
        )
    start, end, step = week_start + 60, week_end - 60, 60.0
    series: list[MetricSeries] = []
    for e in endpoints:
        series += endpoint_series(e, start, end, step, BUCKETS)
    series += node_series(start, end, step, 50, 20, 60, 10)
    series += duration_series(
        "agent_execution_duration_seconds", (1.5, 4.0, 7.0), 5, start, end, step, BUCKETS
    )
    series += duration_series(
        "workflow_completion_duration_seconds", (12.0, 30.0, 55.0), 1, start, end, step, BUCKETS
    )
    return series


def main() -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for name in [n for n in os.environ if n.startswith("PERFOPS_")]:
        del os.environ[name]
    from decisions.reporting import chart_queries, last_complete_week, load_config, week_queries
    from demo.embedded_prometheus import PrometheusServer
    from tests.servers import SmtpServer

    week = last_complete_week(datetime.now(UTC))
    work = Path(tempfile.mkdtemp(prefix="perfops-bench-report-"))
    started = time.perf_counter()
    series = _series(week.start.timestamp(), week.end.timestamp())
    samples = sum(len(s.samples) for s in series)
    print(f"back-filling {len(series)} series, {samples:,} samples ...", file=sys.stderr)
    with (
        PrometheusServer(work / "prometheus", series) as prom,
        SmtpServer() as smtp,
        prefect_server() as api,
    ):
        setup_s = time.perf_counter() - started
        os.environ.update(
            {
                "PREFECT_API_URL": api,
                "PERFOPS_PROMETHEUS_URL": prom.url,
                "PERFOPS_SMTP_HOST": smtp.host,
                "PERFOPS_SMTP_PORT": str(smtp.port),
                "PERFOPS_OUT_DIR": str(work / "out"),
                "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
            }
        )
        config = load_config(Path(__file__).resolve().parent.parent / "deployments/report.yaml")
        # Anchor: the same PromQL, straight over HTTP.
        t0 = time.perf_counter()
        with httpx.Client(base_url=prom.url, timeout=60) as http:
            for at, window in ((week.end, week.seconds), (week.start, week.seconds)):
                for expr in week_queries(config, window).values():
                    http.get("/api/v1/query", params={"query": expr, "time": at.timestamp()})
            step = config.chart_step_s
            for expr in chart_queries(config).values():
                http.get(
                    "/api/v1/query_range",
                    params={
                        "query": expr,
                        "start": (week.start + timedelta(seconds=step)).timestamp(),
                        "end": week.end.timestamp(),
                        "step": step,
                    },
                )
        anchor_s = time.perf_counter() - t0

        from flows.generate_weekly_report import generate_weekly_report

        rows = []
        runs: list[float] = []
        result = None
        for n in range(RUNS):
            smtp.reset()
            t0 = time.perf_counter()
            result = generate_weekly_report(
                week=week.label, recipients=["sre@example.test"], out_dir=str(work / "report")
            )
            [(_, _, message)] = smtp.wait_for(1, timeout=60)
            elapsed = time.perf_counter() - t0
            runs.append(elapsed)
            size = len(message.as_bytes())
            images = sum(1 for p in message.walk() if p.get_content_type() == "image/png")
            rows.append(
                [
                    f"flow run {n + 1}",
                    f"{elapsed:.2f}",
                    f"{result.seconds:.2f}",
                    images,
                    f"{size / 1e6:.2f} MB",
                    "yes" if elapsed < GOAL_S else "NO",
                ]
            )
    assert result is not None
    print(
        f"week {week.label}: {ENDPOINTS} endpoints, {len(series)} series, {samples:,} samples "
        f"(1-minute), set-up {setup_s:.1f} s (back-fill, Prometheus, aiosmtpd, Prefect server)"
    )
    print_table(
        ["what", "wall s", "in flow s", "charts", "email", f"< {GOAL_S:.0f} s"],
        [["anchor: the report's PromQL over HTTP", f"{anchor_s:.2f}", "-", "-", "-", "-"], *rows],
    )
    worst = max(runs)
    ok = worst < GOAL_S
    print(
        f"{'PASS' if ok else 'FAIL'}: weekly report for {ENDPOINTS} endpoints x 1 week of 1-minute "
        f"data rendered and sent in {worst:.1f} s worst of {RUNS} (goal < {GOAL_S:.0f} s; PromQL "
        f"alone {anchor_s:.1f} s); {result.headline}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
