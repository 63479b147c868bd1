"""SLA test fixtures: the Redis store, a Slack target on the stand-in, the definitions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from blocks import RedisTarget, SlackEscalationTarget
from demo.sla_series import Incident, api_series
from tasks.sla_delivery import SlaStore
from tests.servers import PrometheusServer, SlackStandIn
from tests.servers.slack import DEFAULT_TOKEN


@pytest.fixture()
def store(redis_target: RedisTarget) -> SlaStore:
    return SlaStore(redis_target)


@pytest.fixture()
def slack_target(slack: SlackStandIn) -> SlackEscalationTarget:
    return SlackEscalationTarget(
        bot_token=SecretStr(DEFAULT_TOKEN),
        channels=["#oncall"],
        api_base_url=slack.base_url,
        timeout_s=1,
        max_retries=3,
    )


# A week and a day of API metrics (the degradation rule compares with a week earlier) with a
# fast burn (50% errors for 20 minutes) ending 40 minutes before the data ends, and a latency
# regression (x1.5) three hours before the end.
SLA_END = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
OUTAGE = Incident(
    "outage", SLA_END - timedelta(minutes=60), SLA_END - timedelta(minutes=40), error_ratio=0.5
)
REGRESSION = Incident(
    "latency", SLA_END - timedelta(hours=3), SLA_END - timedelta(hours=2), latency_factor=1.5
)


@pytest.fixture(scope="session")
def sla_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    series = api_series(
        SLA_END - timedelta(days=8), SLA_END, [OUTAGE, REGRESSION], buckets=[0.1, 0.2, 0.3, 0.5, 1]
    )
    with PrometheusServer(tmp_path_factory.mktemp("sla-prometheus"), series) as server:
        yield server
