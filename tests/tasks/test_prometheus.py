"""PromQL against a real Prometheus loaded with 14 days of back-filled history."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from blocks import PrometheusSource
from decisions.scaling_report import LoadQuery
from demo.local_server import ThreadedHttpServer
from perfops.errors import ConfigurationError, ConnectionFailed
from tasks.load_history import read_load_history
from tasks.prometheus.client import fetch_build_info, query_instant, query_range
from tasks.prometheus.report import query_week
from tests.conftest import HISTORY_END, HISTORY_START, load_value
from tests.servers import PrometheusServer, UnhealthyProxy

pytestmark = pytest.mark.usefixtures("prefect_harness")
MINUTE = timedelta(minutes=1)


def test_range_over_the_whole_history_is_chunked_and_exact(prometheus: PrometheusServer) -> None:
    source = PrometheusSource(url=prometheus.url, max_points_per_query=2_000)
    step = timedelta(minutes=5)
    frame = query_range(
        source, 'perfops_test_load{service="api"}', HISTORY_START, HISTORY_END, step
    )
    expected_points = int((HISTORY_END - HISTORY_START) / step) + 1
    assert len(frame) == expected_points  # 4,033 points from 3 chunks, none lost or doubled
    [column] = frame.columns
    assert column == 'perfops_test_load{service="api"}'
    for ts, value in zip(frame.index, frame[column], strict=True):
        assert value == load_value(ts.timestamp())


def test_rate_over_the_counter(prometheus: PrometheusServer) -> None:
    source = PrometheusSource(url=prometheus.url)
    end = HISTORY_END - timedelta(hours=1)
    frame = query_range(
        source,
        'rate(perfops_test_requests_total{service="api"}[5m])',
        end - timedelta(hours=2),
        end,
        timedelta(minutes=10),
    )
    assert frame.iloc[:, 0].round(6).eq(1.0).all()  # +60 per minute = 1 per second


def test_instant_query(prometheus: PrometheusServer) -> None:
    source = PrometheusSource(url=prometheus.url)
    at = HISTORY_END - timedelta(minutes=30)
    frame = query_instant(source, "sum(perfops_test_load)", at=at)
    assert frame.iloc[0, 0] == load_value(at.timestamp())


def test_bad_promql_fails_fast_with_the_servers_reason(prometheus: PrometheusServer) -> None:
    with pytest.raises(ConfigurationError, match="rejected"):
        query_instant.fn(PrometheusSource(url=prometheus.url), "sum(")


def test_build_info(prometheus: PrometheusServer) -> None:
    assert fetch_build_info(PrometheusSource(url=prometheus.url))["version"].startswith("2.")


def test_unreachable_prometheus() -> None:
    source = PrometheusSource(url="http://127.0.0.1:1", retries=0, timeout_s=2)
    with pytest.raises(ConnectionFailed, match="cannot reach Prometheus"):
        query_instant.fn(source, "up")


@pytest.fixture()
def unhealthy() -> Iterator[UnhealthyProxy]:
    """A proxy in front of a Prometheus that is down: 503 for every request."""
    with UnhealthyProxy(503) as proxy:
        yield proxy


def test_prometheus_unavailable_behind_a_proxy_is_unreachable_not_a_rejected_query(
    unhealthy: UnhealthyProxy,
) -> None:
    source = PrometheusSource(url=unhealthy.url, retries=1)
    with pytest.raises(ConnectionFailed) as caught:
        query_instant.fn(source, "up")
    message = str(caught.value)
    assert message.startswith(f"cannot reach Prometheus at {unhealthy.url}: query 'up' answered")
    assert "HTTP Status Code 503" in message and "no healthy upstream" in message
    assert "(retried 1x)" in message and "rejected" not in message
    assert len(unhealthy.requests) == 2  # the client's retry first
    unhealthy.status = 429
    with pytest.raises(ConnectionFailed, match="HTTP Status Code 429"):
        query_range.fn(source, "up", HISTORY_END - timedelta(hours=1), HISTORY_END, MINUTE)


def test_scaling_history_from_an_unavailable_prometheus_is_a_connection_failure(
    unhealthy: UnhealthyProxy,
) -> None:
    source = PrometheusSource(url=unhealthy.url, retries=0)
    with pytest.raises(ConnectionFailed, match="cannot reach Prometheus"):
        read_load_history(source, LoadQuery(lookback=timedelta(hours=2)), datetime.now(UTC))


@pytest.mark.parametrize("status", [None, 503])  # no answer at all, or a 503 after retries
def test_a_password_in_the_prometheus_url_stays_out_of_the_report_sections(
    unhealthy: UnhealthyProxy, status: int | None
) -> None:
    """A section's reason is on the report's page and in its email."""
    url = "http://127.0.0.1:9" if status is None else unhealthy.url
    source = PrometheusSource(url=url.replace("http://", "http://alice:s3cret-pw@"), retries=0)
    [result] = query_week.fn(source, {"up": "up"}, datetime.now(UTC)).values()
    assert result.error is not None and result.error.startswith("cannot reach Prometheus at")
    assert "http://127.0.0.1:" in result.error and "s3cret-pw" not in result.error


def test_a_query_prometheus_refuses_is_still_rejected_not_unreachable(
    prometheus: PrometheusServer,
) -> None:
    source = PrometheusSource(url=prometheus.url)
    with pytest.raises(ConfigurationError, match=r"rejected query 'sum\(': HTTP Status Code 400"):
        query_instant.fn(source, "sum(")


class _BasicAuthPrometheus(ThreadedHttpServer):
    """A Prometheus behind a proxy that asks for basic auth: 401 without alice's password."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []

    def start(self) -> _BasicAuthPrometheus:
        server = self
        expected = "Basic " + base64.b64encode(b"alice:p@ss w").decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                given = self.headers.get("Authorization")
                server.authorizations.append(given)
                if given != expected:
                    status, body = 401, b"unauthorized"
                elif self.path.startswith("/api/v1/status/buildinfo"):
                    status, body = 200, b'{"status":"success","data":{"version":"2.53.0"}}'
                else:
                    status, body = (
                        200,
                        (
                            b'{"status":"success","data":{"resultType":"vector","result":'
                            b'[{"metric":{},"value":[1,"7"]}]}}'
                        ),
                    )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler)
        return self


def test_a_user_and_password_in_the_url_move_to_the_secret_and_are_sent_as_basic_auth() -> None:
    """The URL is a plain field (the UI shows it, the block document keeps it, scaling's history
    source and every reason name it): a password in it (PERFOPS_PROMETHEUS_URL=https://user:pw@
    prom:9090) goes to the secret field and is still sent."""
    source = PrometheusSource(url="https://alice:p%40ss%20w@Prom.internal:9090/prometheus")
    assert source.url == "https://Prom.internal:9090/prometheus"
    assert source.username == "alice"
    assert source.password is not None and source.password.get_secret_value() == "p@ss w"
    dumped = source.model_dump_json()
    assert "p%40ss" not in dumped and "p@ss" not in dumped
    plain = PrometheusSource(url="http://prom:9090", username="bob", password="kept")
    assert plain.url == "http://prom:9090" and plain.auth() == ("bob", "kept")
    assert PrometheusSource(url="http://prom:9090").auth() is None
    with _BasicAuthPrometheus() as server:
        host = server.origin.removeprefix("http://")
        behind = PrometheusSource(url=f"http://alice:p%40ss%20w@{host}", retries=0)
        assert fetch_build_info.fn(behind)["version"] == "2.53.0"
        assert query_instant.fn(behind, "up").iloc[0, 0] == 7.0
        assert server.authorizations and all(a is not None for a in server.authorizations)
        with pytest.raises(ConfigurationError) as caught:  # the 401 names no password
            query_instant.fn(PrometheusSource(url=server.origin, retries=0), "up")
        assert "p@ss" not in str(caught.value)
