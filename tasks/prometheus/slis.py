"""Prometheus reads for SLA evaluation at an explicit time `at` (the `time` parameter of the
HTTP API), so a replay reads any minute of history exactly as the schedule would have.

One instant query per SLO fetches every window it needs at once (each window's part tagged with
`label_replace`); one range query per alert rule (its evaluation periods); two per degradation
rule (now, and the baseline `baseline_offset` earlier). Queries run on a few threads. A query
Prometheus rejects (4xx), or one that fails after the client's retries (no connection, a
timeout, 429 or 5xx: Prometheus unreachable), becomes a measurement with an `error` (the item
is "no data", never "ok"); the run goes on.

Several series: a ratio SLI's `good` and `total` are rates, summed over their series. A rule's
metric, a degradation's query and a quantile SLI compare one value with a threshold: summing
several series' ratios or quantiles means nothing (two healthy routes' p95 add up to a breach;
one idle route's NaN hides another's outage), so such a query is the item's error, naming the
series and how to aggregate them (`SeveralSeries`).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from prefect import task
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from pydantic import BaseModel

from blocks import PrometheusSource
from decisions.burn_rate import UNREACHABLE, SeriesMeasurement, SloMeasurement, slo_windows
from decisions.slo_definitions import (
    WINDOW_PLACEHOLDER,
    AlertRule,
    DegradationRule,
    SlaDefinitions,
    Slo,
    promql_duration,
)
from perfops.redaction import redact
from tasks.prometheus.client import series_name, unavailable

PARALLEL_QUERIES = 8
PART, WINDOW = "perfops_part", "perfops_window"


class Measurements(BaseModel):
    at: datetime
    slos: dict[str, SloMeasurement]
    rules: dict[str, SeriesMeasurement]
    degradations: dict[str, SeriesMeasurement]
    queries: int


def slo_query(slo: Slo) -> str:
    """One PromQL expression returning every window's parts, tagged with labels."""
    parts = []
    for window in slo_windows(slo):
        if slo.sli.kind == "ratio":
            pairs = [("total", slo.sli.total), ("good", slo.sli.good)]
        else:
            pairs = [("quantile", slo.sli.query)]
        for part, expr in pairs:
            e = expr.replace(WINDOW_PLACEHOLDER, window)
            parts.append(
                f'label_replace(label_replace(({e}), "{PART}", "{part}", "", ""), '
                f'"{WINDOW}", "{window}", "", "")'
            )
    return " or ".join(parts)


class _Clients(threading.local):
    client: PrometheusConnect | None = None


class SeveralSeries(ValueError):
    """A query that must answer one series answered several."""

    def __init__(self, what: str, metrics: list[dict[str, str]]):
        names = sorted(series_name(m) for m in metrics)  # Prometheus' order is not stable
        shown = ", ".join(names[:3])
        more = f" and {len(metrics) - 3} more" if len(metrics) > 3 else ""
        super().__init__(
            f"the {what} answered {len(metrics)} series ({shown}{more}), it must answer one: "
            "aggregate it, e.g. max(...) for the worst series (max skips a series without "
            "traffic) or sum(...) for a total"
        )


def _one_series(results: list[dict[str, Any]], what: str) -> None:
    """Raise `SeveralSeries` when `results` hold more than one series."""
    if len(results) > 1:
        raise SeveralSeries(what, [dict(r.get("metric", {})) for r in results])


def _error(source: PrometheusSource, exc: Exception) -> str:
    """The item's "no data" reason: a query Prometheus refused (4xx) is the query's fault;
    429/5xx after the retries, like a refused connection, is Prometheus unreachable (all items
    so: a blind run)."""
    url = redact(source.url)  # the reason reaches Slack, email and events: no password
    if isinstance(exc, PrometheusApiClientException) and unavailable(exc):
        return (
            f"{UNREACHABLE} at {url}: answered {redact(str(exc))[:200]} (retried {source.retries}x)"
        )
    if isinstance(exc, PrometheusApiClientException):
        return f"Prometheus rejected the query: {redact(str(exc))[:300]}"
    return f"{UNREACHABLE} at {url}: {type(exc).__name__}: {redact(str(exc))[:200]}"


def _times(end: datetime, step: timedelta, count: int) -> list[float]:
    return [(end - step * (count - 1 - i)).timestamp() for i in range(count)]


def _aligned(results: list[dict[str, Any]], times: list[float]) -> list[float]:
    """The one series' values at `times`, NaN where nothing was returned."""
    by_time: dict[int, float] = {}
    for item in results:
        for t, v in item.get("values", []):
            by_time[round(float(t))] = float(v)
    return [by_time.get(round(t), math.nan) for t in times]


def fetch_measurements(
    source: PrometheusSource, definitions: SlaDefinitions, at: datetime
) -> Measurements:
    """Everything the definitions need at `at` (plain function; the task wraps it)."""
    local = _Clients()

    def client() -> PrometheusConnect:
        if local.client is None:
            local.client = source.get_client()
        return local.client

    def slo_job(slo: Slo) -> SloMeasurement:
        m = SloMeasurement(slo=slo.name)
        try:
            results = client().custom_query(slo_query(slo), params={"time": at.timestamp()})
        except (PrometheusApiClientException, OSError) as exc:
            m.error = _error(source, exc)
            return m
        quantiles: dict[str, list[dict[str, str]]] = {}
        for item in results:
            labels = item.get("metric", {})
            part, window = labels.get(PART), labels.get(WINDOW)
            value = float(item["value"][1])
            target = {"total": m.total, "good": m.good, "quantile": m.quantile}.get(part or "")
            if target is not None and window:
                target[window] = target.get(window, 0.0) + value  # rates add up
            if part == "quantile" and window:
                own = {k: v for k, v in labels.items() if k not in (PART, WINDOW)}
                quantiles.setdefault(window, []).append(own)
        several = next((s for s in quantiles.values() if len(s) > 1), None)
        if several is not None:  # quantiles do not add up
            m.quantile.clear()
            m.error = str(SeveralSeries("quantile SLI's query", several))
        return m

    def range_values(
        query: str, end: datetime, step: timedelta, count: int, what: str
    ) -> list[float]:
        times = _times(end, step, count)
        results = client().custom_query_range(
            query,
            start_time=datetime.fromtimestamp(times[0], tz=at.tzinfo),
            end_time=end,
            step=f"{int(step.total_seconds())}s",
        )
        _one_series(results, what)
        return _aligned(results, times)

    def rule_job(rule: AlertRule) -> SeriesMeasurement:
        m = SeriesMeasurement(name=rule.name)
        try:
            m.values = range_values(
                rule.metric, at, rule.period, rule.evaluation_periods, "rule's metric"
            )
        except SeveralSeries as exc:
            m.error = str(exc)
        except (PrometheusApiClientException, OSError) as exc:
            m.error = _error(source, exc)
        return m

    def degradation_job(rule: DegradationRule) -> SeriesMeasurement:
        m = SeriesMeasurement(name=rule.name)
        query = rule.query.replace(WINDOW_PLACEHOLDER, promql_duration(rule.window))
        step = timedelta(minutes=1)
        try:
            what = "degradation rule's query"
            m.values = range_values(query, at, step, rule.data_points, what)
            m.baseline = range_values(
                query, at - rule.baseline_offset, step, rule.data_points, what
            )
        except SeveralSeries as exc:
            m.values, m.baseline, m.error = [], [], str(exc)
        except (PrometheusApiClientException, OSError) as exc:
            m.error = _error(source, exc)
        return m

    jobs: list[Callable[[], Any]] = []
    jobs += [functools.partial(slo_job, s) for s in definitions.slos]
    jobs += [functools.partial(rule_job, r) for r in definitions.alert_rules]
    jobs += [functools.partial(degradation_job, d) for d in definitions.degradation]
    with ThreadPoolExecutor(max_workers=PARALLEL_QUERIES) as pool:
        results = list(pool.map(lambda job: job(), jobs))
    n_slo, n_rule = len(definitions.slos), len(definitions.alert_rules)
    return Measurements(
        at=at,
        slos={m.slo: m for m in results[:n_slo]},
        rules={m.name: m for m in results[n_slo : n_slo + n_rule]},
        degradations={m.name: m for m in results[n_slo + n_rule :]},
        queries=n_slo + n_rule + 2 * len(definitions.degradation),
    )


@task(name="fetch_sli_measurements")
def fetch_sli_measurements(
    source: PrometheusSource, definitions: SlaDefinitions, at: datetime
) -> Measurements:
    """Read every SLI, rule and degradation value the definitions need at `at`."""
    return fetch_measurements(source, definitions, at)
