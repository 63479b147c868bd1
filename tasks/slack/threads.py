"""Slack for SLA notices: post (threads, broadcast, message metadata), update, and read back a
channel's notices (history and thread replies) to rebuild the notification log. The same
operations on the file outbox when no Slack is configured.

Every notice carries Slack message metadata (`event_type` `perfops_sla_notice`, payload with
its idempotency key): that is what lets perfops find a notice it sent but could not record
(a crash between send and record, or a Redis that lost its data). slack-sdk retries 429
(honouring Retry-After), 5xx and connection errors (`SlackEscalationTarget.get_client`); what
is left raises `NoticeFailed`, `permanent` when retrying cannot help (bad token, no channel).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from blocks import SlackEscalationTarget
from blocks.resolve import FileOutbox
from perfops.errors import ConnectionFailed
from perfops.redaction import redact
from tasks.outbox import read_slack_notices, write_slack_notice

METADATA_EVENT = "perfops_sla_notice"
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
    "msg_too_long",
}


class NoticeFailed(ConnectionFailed):
    """Slack did not take a notice; `permanent` when a retry cannot help."""

    def __init__(self, message: str, *, permanent: bool, reason: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.reason = reason


class Messenger(ABC):
    """Where notices go and are read back from: Slack (`SlackMessenger`) or the file outbox
    (`FileMessenger`)."""

    sink: str

    def post(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]],
        metadata: dict[str, Any],
        thread_ts: str | None = None,
        broadcast: bool = False,
    ) -> tuple[str, str]:
        """Post a notice carrying `metadata` (a reply in `thread_ts`, `broadcast` to the channel
        too); its (channel, ts)."""
        message = {
            "channel": channel,
            "text": text,
            "blocks": blocks,
            "thread_ts": thread_ts,
            "metadata": {"event_type": METADATA_EVENT, "event_payload": metadata},
        }
        return self._post(message, broadcast)

    @abstractmethod
    def _post(self, message: dict[str, Any], broadcast: bool) -> tuple[str, str]:
        """Post `message` (channel, text, blocks, thread_ts and metadata, as `post` built it)."""

    @abstractmethod
    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None: ...

    @abstractmethod
    def notices(self, channel: str, oldest: float) -> list[dict[str, Any]]: ...


def _failed(what: str, exc: SlackClientError) -> NoticeFailed:
    if isinstance(exc, SlackApiError):
        reason = str(exc.response.get("error", "unknown_error"))
        status = exc.response.status_code
        permanent = reason in PERMANENT_ERRORS or (status < 500 and status != 429)
        hint = " (check the bot token in the Slack block)" if "auth" in reason else ""
        return NoticeFailed(
            f"Slack refused {what}: {reason} (HTTP {status}){hint}",
            permanent=permanent,
            reason=reason,
        )
    return NoticeFailed(
        f"Slack {what} failed: {redact(str(exc))}", permanent=False, reason=type(exc).__name__
    )


class SlackMessenger(Messenger):
    sink = "slack"

    def __init__(self, target: SlackEscalationTarget) -> None:
        self.target = target
        self._client: WebClient | None = None

    @property
    def client(self) -> WebClient:
        if self._client is None:
            self._client = self.target.get_client()
        return self._client

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except SlackClientError as exc:
            raise _failed(what, exc) from None
        except OSError as exc:  # timeouts, refused connections after slack-sdk's retries
            raise NoticeFailed(
                f"Slack {what} failed: {redact(str(exc)) or type(exc).__name__}",
                permanent=False,
                reason=type(exc).__name__,
            ) from None

    def _post(self, message: dict[str, Any], broadcast: bool) -> tuple[str, str]:
        channel, thread_ts = message["channel"], message["thread_ts"]
        try:
            response = self._call(
                f"a notice to {channel}",
                self.client.chat_postMessage,
                **message,
                reply_broadcast=broadcast if thread_ts else None,
                unfurl_links=False,
            )
        except NoticeFailed as exc:
            # A timeout may hide a message Slack did post: look for it before giving up, so a
            # retry (ours or the next run's) never posts it twice.
            if exc.permanent:
                raise
            key = message["metadata"]["event_payload"].get("key", "")
            found = self.find(channel, str(key), thread_ts)
            if found is None:
                raise
            return channel, found
        return str(response["channel"]), str(response["ts"])

    def _history(self, channel: str, oldest: float) -> list[dict[str, Any]]:
        """The messages of `channel` since `oldest` (unix s, at most 200), with their metadata."""
        history = self._call(
            f"reading {channel}",
            self.client.conversations_history,
            channel=channel,
            oldest=str(oldest),
            limit=200,
            include_all_metadata=True,
        )
        messages: list[dict[str, Any]] = history.get("messages", [])
        return messages

    def _replies(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """The thread of `ts` in `channel` (the parent first), with their metadata."""
        replies = self._call(
            f"reading a thread in {channel}",
            self.client.conversations_replies,
            channel=channel,
            ts=ts,
            include_all_metadata=True,
        )
        messages: list[dict[str, Any]] = replies.get("messages", [])
        return messages

    def find(self, channel: str, key: str, thread_ts: str | None) -> str | None:
        """The ts of the notice with idempotency `key` in `channel` (last hour), if any."""
        if not key:
            return None
        try:
            if thread_ts:
                messages = self._replies(channel, thread_ts)
            else:
                messages = self._history(channel, time.time() - 3600)
        except NoticeFailed:
            return None
        for message in messages:
            payload = _payload(message)
            if payload is not None and payload.get("key") == key:
                return str(message["ts"])
        return None

    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None:
        self._call(
            f"an update of {channel}/{ts}",
            self.client.chat_update,
            channel=channel,
            ts=ts,
            text=text,
            blocks=blocks,
        )

    def notices(self, channel: str, oldest: float) -> list[dict[str, Any]]:
        """perfops notice payloads in `channel` since `oldest` (unix s), threads included."""
        found: list[dict[str, Any]] = []
        for message in self._history(channel, oldest):
            if _payload(message) is None:
                continue
            for item in self._replies(channel, message["ts"]):
                payload = _payload(item)
                if payload is not None:
                    top = item.get("thread_ts") in (None, item["ts"])
                    found.append({**payload, "_channel": channel, "_ts": item["ts"], "_top": top})
        return found


def _payload(message: dict[str, Any]) -> dict[str, Any] | None:
    meta = message.get("metadata") or {}
    if meta.get("event_type") != METADATA_EVENT:
        return None
    payload = meta.get("event_payload")
    return payload if isinstance(payload, dict) else None


class FileMessenger(Messenger):
    """The file outbox (`out/slack/messages.jsonl`) with the same operations."""

    sink = "file"

    def __init__(self, outbox: FileOutbox) -> None:
        self.outbox = outbox

    def _post(self, message: dict[str, Any], broadcast: bool) -> tuple[str, str]:
        """Append the post to the outbox (`broadcast` means nothing there)."""
        record = {"action": "post", "ts": f"{time.time():.6f}", **message}
        return message["channel"], write_slack_notice(self.outbox, record)

    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None:
        write_slack_notice(
            self.outbox,
            {"action": "update", "channel": channel, "ts": ts, "text": text, "blocks": blocks},
        )

    def notices(self, channel: str, oldest: float) -> list[dict[str, Any]]:
        found = []
        for line in read_slack_notices(self.outbox):
            payload = _payload(line)
            if (
                line.get("action") == "post"
                and line.get("channel") == channel
                and payload is not None
                and float(line["ts"]) >= oldest
            ):
                top = line.get("thread_ts") is None
                found.append({**payload, "_channel": channel, "_ts": str(line["ts"]), "_top": top})
        return found


def messenger_for(sink: SlackEscalationTarget | FileOutbox) -> Messenger:
    if isinstance(sink, FileOutbox):
        return FileMessenger(sink)
    return SlackMessenger(sink)


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)
