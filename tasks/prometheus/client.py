"""Prometheus tasks: instant and range PromQL queries into pandas, and the server's build info.

Range queries longer than the server accepts (11,000 points per series) are split into
consecutive chunks whose results are joined; transient HTTP failures are retried inside the
client (see `PrometheusSource.get_client`). What is left is classified by status: 429 and 5xx
(Prometheus, or the proxy in front of it, unavailable) are `ConnectionFailed`; a 4xx (bad
PromQL, a limit) is the query's fault, a `ConfigurationError` with the server's own message.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from prefect import task
from prometheus_api_client import PrometheusApiClientException

from blocks import PrometheusSource
from perfops.errors import ConfigurationError, ConnectionFailed
from perfops.redaction import redact


def plan_range_chunks(
    start: datetime, end: datetime, step: timedelta, max_points: int
) -> list[tuple[datetime, datetime]]:
    """Split [start, end] into consecutive inclusive chunks of at most `max_points` steps.

    Chunks do not overlap: each starts one step after the previous one ends, so a sample
    appears in exactly one chunk. Pure.
    """
    if end < start:
        raise ValueError(f"range end {end.isoformat()} is before its start {start.isoformat()}")
    if step <= timedelta(0):
        raise ValueError(f"step must be positive, got {step}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    chunks: list[tuple[datetime, datetime]] = []
    span = step * (max_points - 1)
    chunk_start = start
    while chunk_start <= end:
        chunk_end = min(chunk_start + span, end)
        chunks.append((chunk_start, chunk_end))
        chunk_start = chunk_end + step
    return chunks


def series_name(metric: dict[str, str]) -> str:
    """A readable column name for a series: `name{label="v",...}`, labels sorted."""
    name = metric.get("__name__", "")
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{labels}}}" if labels else (name or "{}")


def _frame_from_matrix(results: list[dict[str, Any]]) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {}
    for item in results:
        points = item.get("values") or ([item["value"]] if "value" in item else [])
        index = pd.DatetimeIndex(
            pd.to_datetime([float(t) for t, _ in points], unit="s", utc=True), name="time"
        )
        values = pd.Series([float(v) for _, v in points], index=index, dtype="float64")
        name = series_name(item.get("metric", {}))
        columns[name] = values if name not in columns else pd.concat([columns[name], values])
    if not columns:
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="time"), dtype="float64")
    frame = pd.DataFrame(columns)
    frame = frame[~frame.index.duplicated(keep="last")].sort_index()
    frame.index.name = "time"
    return frame


_STATUS = re.compile(r"HTTP Status Code (\d{3})")


def answered_status(exc: PrometheusApiClientException) -> int | None:
    """The HTTP status of the answer `exc` reports (prometheus-api-client keeps it only in its
    message, `HTTP Status Code 503 (b'...')`), when it names one."""
    match = _STATUS.search(str(exc))
    return int(match.group(1)) if match else None


def unavailable(exc: PrometheusApiClientException) -> bool:
    """Whether `exc` is Prometheus (or the proxy in front of it) being unavailable, 429 or 5xx
    after the client's retries, rather than a refusal of the query itself (a 4xx: bad PromQL,
    too many points, a query its limits reject): the query is not at fault."""
    status = answered_status(exc)
    return status is not None and (status == 429 or status >= 500)


def answered(exc: BaseException) -> bool:
    """Whether a `ConnectionFailed` of `_call` came with an HTTP answer (429/5xx: Prometheus or
    its proxy answered, e.g. a query that timed out there) rather than none at all (refused
    connection, timeout): after an answer the next query may well succeed."""
    return isinstance(exc.__cause__, PrometheusApiClientException)


def _call(source: PrometheusSource, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    # The messages become report sections and SLA reasons (pages, emails, Slack): a URL's
    # `user:password@` never goes with them.
    url = redact(source.url)
    try:
        return fn(*args, **kwargs)
    except PrometheusApiClientException as exc:
        if unavailable(exc):
            raise ConnectionFailed(
                f"cannot reach Prometheus at {url}: {what} answered "
                f"{redact(str(exc))[:300]} (retried {source.retries}x); try again later"
            ) from exc
        raise ConfigurationError(
            f"Prometheus at {url} rejected {what}: {redact(str(exc))}"
        ) from exc
    except OSError as exc:  # requests' ConnectionError and timeouts derive from OSError
        raise ConnectionFailed(f"cannot reach Prometheus at {url}: {redact(str(exc))}") from exc


@task(name="query_prometheus_instant")
def query_instant(
    source: PrometheusSource, promql: str, at: datetime | None = None
) -> pd.DataFrame:
    """Evaluate `promql` at one instant; one row, one column per returned series."""
    client = source.get_client()
    params = {"time": (at or datetime.now(UTC)).timestamp()}
    results = _call(source, f"query {promql!r}", client.custom_query, promql, params=params)
    return _frame_from_matrix(results)


@task(name="query_prometheus_range")
def query_range(
    source: PrometheusSource,
    promql: str,
    start: datetime,
    end: datetime,
    step: timedelta,
) -> pd.DataFrame:
    """Evaluate `promql` over [start, end] every `step`; rows are times, columns are series.

    Long ranges are fetched in chunks of at most `source.max_points_per_query` steps.
    """
    client = source.get_client()
    frames = []
    for chunk_start, chunk_end in plan_range_chunks(start, end, step, source.max_points_per_query):
        results = _call(
            source,
            f"range query {promql!r}",
            client.custom_query_range,
            promql,
            start_time=chunk_start,
            end_time=chunk_end,
            step=f"{int(step.total_seconds())}s",
        )
        frames.append(_frame_from_matrix(results))
    if not frames:
        return _frame_from_matrix([])
    frame = pd.concat(frames).sort_index()
    return frame[~frame.index.duplicated(keep="last")]


@task(name="fetch_prometheus_build_info")
def fetch_build_info(source: PrometheusSource) -> dict[str, str]:
    """Prometheus' build information (version, revision) from `/api/v1/status/buildinfo`."""
    client = source.get_client()
    response = _call(
        source,
        "the build info request",
        client._session.get,
        f"{client.url}/api/v1/status/buildinfo",
        headers=client.headers,
        auth=client.auth,
        verify=client._session.verify,
        timeout=source.timeout_s,
    )
    if response.status_code != 200:
        raise ConnectionFailed(
            f"Prometheus at {redact(source.url)} answered HTTP {response.status_code} to buildinfo"
        )
    data: dict[str, str] = response.json()["data"]
    return data
