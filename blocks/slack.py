"""The Slack escalation target block."""

from __future__ import annotations

from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from perfops.redaction import register_secret

SLACK_API_BASE_URL = "https://slack.com/api/"
# A 5xx or a dropped connection may come after Slack stored the message: re-sending these
# blindly posts it twice. Their callers read the channel back first (tasks.slack.threads).
NOT_RETRIED_BY_CLIENT = frozenset({"chat.postMessage"})


def _retried(request: HttpRequest) -> bool:
    return urlsplit(request.url).path.rsplit("/", 1)[-1] not in NOT_RETRIED_BY_CLIENT


class _NotForPosts(RetryHandler):
    """Mixin: no retry for a method whose retry could repeat a side effect."""

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return _retried(request) and super()._can_retry(
            state=state, request=request, response=response, error=error
        )


class IdempotentServerErrorRetryHandler(_NotForPosts, ServerErrorRetryHandler):
    """Retries a 500/503, except for `NOT_RETRIED_BY_CLIENT`."""


class IdempotentConnectionErrorRetryHandler(_NotForPosts, ConnectionErrorRetryHandler):
    """Retries a connection error, except for `NOT_RETRIED_BY_CLIENT`."""


class SlackEscalationTarget(Block):
    """Where perfops posts notices: a Slack workspace, with one channel per escalation level.

    Level 1 is the first responder (e.g. the team lead's channel), level 2 the engineering
    manager, level 3 the CTO, as in the seed's escalation chain. The client honours `Retry-After`
    on 429, retries 5xx and connection errors with backoff (except `chat.postMessage`, which
    perfops retries itself once it has checked the message is not there), and fails fast on
    anything else.
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
    channel_cache_ttl_s: int = Field(
        default=3600,
        ge=60,
        le=7 * 86400,
        description="How long channel ids resolved from names are kept in Redis (seconds).",
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
        """A slack-sdk `WebClient` with rate-limit, server-error and connection retries; 5xx
        and connection errors of `chat.postMessage` are not retried (see
        `NOT_RETRIED_BY_CLIENT`)."""
        token = self.bot_token.get_secret_value()
        register_secret(token)
        # Replaces WebClient's default ConnectionErrorRetryHandler(max_retry_count=1).
        return WebClient(
            token=token,
            base_url=self.api_base_url,
            timeout=self.timeout_s,
            retry_handlers=[
                IdempotentConnectionErrorRetryHandler(max_retry_count=self.max_retries),
                RateLimitErrorRetryHandler(max_retry_count=self.max_retries),
                IdempotentServerErrorRetryHandler(max_retry_count=self.max_retries),
            ],
        )
