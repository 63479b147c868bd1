"""Slack tasks: post a message and update it (threads included), or write it to the file outbox
when no Slack is configured.

slack-sdk retries 429 (honouring Retry-After), 5xx and connection errors (see
`SlackEscalationTarget.get_client`), except a 5xx or a lost connection of `chat.postMessage`:
Slack may have stored that message, and a blind retry posts it twice (the SLA notices, which
carry an idempotency key, are read back and retried in `tasks.slack.threads`). Any other Slack
error fails at once with Slack's reason.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from pydantic import BaseModel
from slack_sdk.errors import SlackApiError, SlackClientError

from blocks import SlackEscalationTarget
from blocks.resolve import FileOutbox, SlackSink
from perfops.errors import ConnectionFailed
from perfops.redaction import redact
from tasks.outbox import write_slack_notice


class PostedMessage(BaseModel):
    """A message as Slack (or the outbox) recorded it: keep `channel` and `ts` to update it."""

    channel: str
    ts: str
    thread_ts: str | None = None
    sink: str


def _slack_error(what: str, exc: SlackClientError) -> ConnectionFailed:
    if isinstance(exc, SlackApiError):
        reason = exc.response.get("error", "unknown error")
        return ConnectionFailed(f"Slack refused {what}: {reason} (HTTP {exc.response.status_code})")
    return ConnectionFailed(f"Slack {what} failed: {redact(str(exc))}")


@task(name="post_slack_message")
def post_message(
    sink: SlackSink,
    channel: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
    thread_ts: str | None = None,
) -> PostedMessage:
    """Post `text` (the notification fallback) with optional Block Kit `blocks` to `channel`."""
    if isinstance(sink, FileOutbox):
        ts = write_slack_notice(
            sink,
            {
                "action": "post",
                "channel": channel,
                "text": text,
                "blocks": blocks,
                "thread_ts": thread_ts,
            },
        )
        return PostedMessage(channel=channel, ts=ts, thread_ts=thread_ts, sink="file")
    assert isinstance(sink, SlackEscalationTarget)
    try:
        response = sink.get_client().chat_postMessage(
            channel=channel, text=text, blocks=blocks, thread_ts=thread_ts
        )
    except SlackClientError as exc:
        error = _slack_error(f"a message to {channel}", exc)
        if isinstance(exc, SlackApiError) and exc.response.status_code >= 500:
            error = ConnectionFailed(f"{error}; Slack may have stored it: not posted again")
        raise error from exc
    return PostedMessage(
        channel=str(response["channel"]), ts=str(response["ts"]), thread_ts=thread_ts, sink="slack"
    )


@task(name="update_slack_message")
def update_message(
    sink: SlackSink,
    message: PostedMessage,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
) -> PostedMessage:
    """Replace the text and blocks of a message posted earlier."""
    if isinstance(sink, FileOutbox):
        write_slack_notice(
            sink,
            {
                "action": "update",
                "channel": message.channel,
                "ts": message.ts,
                "text": text,
                "blocks": blocks,
            },
        )
        return message
    assert isinstance(sink, SlackEscalationTarget)
    try:
        sink.get_client().chat_update(
            channel=message.channel, ts=message.ts, text=text, blocks=blocks
        )
    except SlackClientError as exc:
        raise _slack_error(f"an update of {message.channel}/{message.ts}", exc) from exc
    return message


@task(name="fetch_slack_identity")
def fetch_identity(target: SlackEscalationTarget) -> dict[str, str]:
    """`auth.test`: which team and bot the token belongs to."""
    try:
        response = target.get_client().auth_test()
    except SlackClientError as exc:
        raise _slack_error("auth.test", exc) from exc
    return {k: str(response.get(k, "")) for k in ("team", "user", "url")}
