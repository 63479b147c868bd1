"""The Slack escalation target block."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from perfops.redaction import register_secret

SLACK_API_BASE_URL = "https://slack.com/api/"


class SlackEscalationTarget(Block):
    """Where perfops posts notices: a Slack workspace, with one channel per escalation level.

    Level 1 is the first responder (e.g. the team lead's channel), level 2 the engineering
    manager, level 3 the CTO, as in the seed's escalation chain. The client honours `Retry-After`
    on 429, retries 5xx and connection errors with backoff, and fails fast on anything else.
    prefect-slack's credentials always talk to slack.com; this block lets the API base URL change
    (a proxy, an enterprise gateway, or a local stand-in in tests).

    Example:
        Load a saved target and post to the first level:
        ```python
        from blocks import SlackEscalationTarget

        slack = SlackEscalationTarget.load("BLOCK_NAME")
        slack.get_client().chat_postMessage(channel=slack.channel_for(1), text="hello")
        ```
    """

    _block_type_name = "perfops Slack Escalation Target"
    _block_type_slug = "perfops-slack-escalation-target"
    _description = "A Slack bot token and the channel for each escalation level."

    bot_token: SecretStr = Field(
        default=..., description="Bot token (xoxb-...) with chat:write in every channel below."
    )
    channels: list[str] = Field(
        default_factory=lambda: ["#perfops"],
        min_length=1,
        description="Channel per escalation level: first entry is level 1, second level 2, ...",
    )
    api_base_url: str = Field(
        default=SLACK_API_BASE_URL, description="Slack Web API base URL, ending in /api/."
    )
    timeout_s: int = Field(default=30, ge=1, le=300, description="Seconds for one API call.")
    max_retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a 429, 5xx or connection error."
    )

    @field_validator("api_base_url")
    @classmethod
    def _ends_with_slash(cls, value: str) -> str:
        return value if value.endswith("/") else value + "/"

    def channel_for(self, level: int) -> str:
        """The channel of escalation `level` (1-based); the last channel serves higher levels."""
        if level < 1:
            raise ValueError(f"escalation level must be >= 1, got {level}")
        return self.channels[min(level, len(self.channels)) - 1]

    def get_client(self) -> WebClient:
        """A slack-sdk `WebClient` with rate-limit, server-error and connection retries."""
        token = self.bot_token.get_secret_value()
        register_secret(token)
        client = WebClient(token=token, base_url=self.api_base_url, timeout=self.timeout_s)
        client.retry_handlers.extend(
            [
                RateLimitErrorRetryHandler(max_retry_count=self.max_retries),
                ServerErrorRetryHandler(max_retry_count=self.max_retries),
            ]
        )
        # WebClient installs a ConnectionErrorRetryHandler(max_retry_count=1) by default.
        for handler in client.retry_handlers:
            if isinstance(handler, ConnectionErrorRetryHandler):
                handler.max_retry_count = self.max_retries
        return client
