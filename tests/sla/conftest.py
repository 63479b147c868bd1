"""SLA test fixtures: the Redis store, a Slack target on the stand-in, the definitions."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from blocks import RedisTarget, SlackEscalationTarget
from tasks.sla_delivery import SlaStore
from tests.servers import SlackStandIn
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
