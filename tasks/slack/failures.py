"""What a failed Slack call means for a notice: `NoticeFailed`, `permanent` when retrying cannot
help (bad token, no channel, bot not in it), with Slack's reason; and `slack_call`, which turns
every slack-sdk and socket error into one (the bot token never reaches the message)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError

from perfops.errors import ConnectionFailed
from perfops.redaction import redact

PERMANENT_ERRORS = {
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "missing_scope",
    "no_permission",
    "restricted_action",
    "invalid_blocks",
    "invalid_metadata_format",
    "msg_too_long",
}
CHANNEL_ERRORS = {"channel_not_found", "not_in_channel", "is_archived"}
HINTS = {
    "invalid_auth": "check the bot token in the Slack block",
    "not_authed": "check the bot token in the Slack block",
    "token_revoked": "check the bot token in the Slack block",
    "missing_scope": "the bot needs chat:write, channels:read, channels:history (and "
    "groups:read, groups:history for private channels)",
}


class NoticeFailed(ConnectionFailed):
    """Slack did not take a notice; `permanent` when a retry cannot help."""

    def __init__(self, message: str, *, permanent: bool, reason: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.reason = reason


def failure(what: str, exc: SlackClientError | OSError) -> NoticeFailed:
    """`exc` (raised by slack-sdk for `what`, e.g. "a notice to #oncall") as a NoticeFailed."""
    if isinstance(exc, SlackApiError):
        reason = str(exc.response.get("error", "unknown_error"))
        status = exc.response.status_code
        permanent = reason in PERMANENT_ERRORS or (status < 500 and status != 429)
        hint = f" ({HINTS[reason]})" if reason in HINTS else ""
        return NoticeFailed(
            f"Slack refused {what}: {reason} (HTTP {status}){hint}",
            permanent=permanent,
            reason=reason,
        )
    detail = redact(str(exc)) or type(exc).__name__
    return NoticeFailed(
        f"Slack {what} failed: {detail}", permanent=False, reason=type(exc).__name__
    )


def slack_call(what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """`fn(**kwargs)` (a WebClient method); any Slack or socket error as a NoticeFailed."""
    try:
        return fn(**kwargs)
    except (SlackClientError, OSError) as exc:  # OSError: timeouts, refused connections
        raise failure(what, exc) from None
