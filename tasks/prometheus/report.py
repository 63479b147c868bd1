"""Prometheus tasks of the weekly report: the week's figures (instant queries at the week's end)
and the chart series (range queries over the week), one task per batch of queries.

A query that fails is recorded with its error instead of failing the report: the section it
feeds is then marked missing. Once Prometheus does not answer at all (refused connection, timeout),
the remaining queries are not attempted (each would wait through its own retries); a 429/5xx
answer to one query (a query Prometheus timed out, a proxy's hiccup) fails that query only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks import PrometheusSource
from blocks.resolve import MetricsSource
from decisions.reporting import (
    QueryResult,
    ReportConfig,
    ReportWeek,
    SeriesResult,
    chart_queries,
    week_queries,
)
from perfops.errors import ConfigurationError, ConnectionFailed
from tasks.prometheus.client import _call, answered, query_range


@task(name="query_prometheus_week", cache_policy=NO_CACHE)
def query_week(
    source: PrometheusSource, queries: dict[str, str], at: datetime
) -> dict[str, QueryResult]:
    """Evaluate every named instant query at `at`; failures are kept per query."""
    client = source.get_client()
    results: dict[str, QueryResult] = {}
    unreachable: str | None = None
    for name, expr in queries.items():
        if unreachable:
            results[name] = QueryResult(error=f"not attempted: {unreachable}")
            continue
        try:
            raw = _call(
                source,
                f"query {name}",
                client.custom_query,
                expr,
                params={"time": at.timestamp()},
            )
        except ConnectionFailed as exc:
            results[name] = QueryResult(error=str(exc))
            unreachable = None if answered(exc) else str(exc)
            continue
        except ConfigurationError as exc:
            results[name] = QueryResult(error=str(exc))
            continue
        results[name] = QueryResult(
            samples=[(dict(item.get("metric", {})), float(item["value"][1])) for item in raw]
        )
    return results


@task(name="query_prometheus_chart_series", cache_policy=NO_CACHE)
def query_chart_series(
    source: PrometheusSource,
    queries: dict[str, str],
    start: datetime,
    end: datetime,
    step: timedelta,
) -> dict[str, SeriesResult]:
    """Evaluate every named range query over [start, end] every `step`."""
    results: dict[str, SeriesResult] = {}
    unreachable: str | None = None
    for name, expr in queries.items():
        if unreachable:
            results[name] = SeriesResult(error=f"not attempted: {unreachable}")
            continue
        try:
            frame = query_range.fn(source, expr, start, end, step)
        except ConnectionFailed as exc:
            results[name] = SeriesResult(error=str(exc))
            unreachable = None if answered(exc) else str(exc)
            continue
        except ConfigurationError as exc:
            results[name] = SeriesResult(error=str(exc))
            continue
        results[name] = SeriesResult(frame=frame)
    return results


WeekResults = tuple[dict[str, QueryResult], dict[str, QueryResult], dict[str, SeriesResult]]


def query_report_figures(
    source: MetricsSource,
    described: str,
    config: ReportConfig,
    this: ReportWeek,
    *,
    charts: bool = True,
) -> WeekResults:
    """The report's instant queries for `this` week and the one before, and (with `charts`) its
    range queries over `this` week. Without a Prometheus (`source` is the CSV trace), every
    query is marked missing saying so (`described` names what is configured)."""
    before = this.previous()
    current_q = week_queries(config, this.seconds)
    previous_q = week_queries(config, before.seconds)
    series_q = chart_queries(config) if charts else {}
    if not isinstance(source, PrometheusSource):
        why = (
            f"no Prometheus configured ({described}); set PERFOPS_PROMETHEUS_URL "
            "or a perfops-prometheus-source block"
        )
        return (
            {name: QueryResult(error=why) for name in current_q},
            {name: QueryResult(error=why) for name in previous_q},
            {name: SeriesResult(error=why) for name in series_q},
        )
    current = query_week(source, current_q, this.end)
    previous = query_week(source, previous_q, before.end)
    step = timedelta(seconds=config.chart_step_s)
    series = (
        query_chart_series(source, series_q, this.start + step, this.end, step) if charts else {}
    )
    return current, previous, series
