"""Slack for SLA notices: post (threads, broadcast, message metadata), update, and read back a
channel's notices (history and thread replies) to rebuild the notification log. The same
operations on the file outbox when no Slack is configured.

Channels are ids everywhere but in the policy file: a run first resolves the names it needs
(`resolve`, see `tasks.slack.channels`), and every read, update and thread key uses the id.

Every notice carries Slack message metadata (`event_type` `perfops_sla_notice`, payload with
its idempotency key): that is what lets perfops find a notice it sent but could not record.
The metadata must fit the shape Slack documents (`decisions.slack_metadata`); `post` checks it
before anything is sent.
Posting is safe to retry: slack-sdk retries 429 (honouring Retry-After, Slack did not take the
message) but never re-posts `chat.postMessage` after a 5xx or a connection error
(`SlackEscalationTarget.get_client`), since Slack may have stored it. Here, after a 5xx or a
timeout, the channel (or the thread) is read back for the notice's key; only when it is not
there is the notice posted again, with backoff. What is left raises `NoticeFailed`,
`permanent` when retrying cannot help (bad token, no channel, bot not in it).
"""

from __future__ import annotations

import hashlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from slack_sdk import WebClient

from blocks import SlackEscalationTarget
from blocks.resolve import FileOutbox
from decisions.slack_metadata import slack_metadata_problems
from tasks.outbox import read_slack_notices, write_slack_notice
from tasks.slack.channels import (
    CHANNEL_ID,
    ChannelCache,
    ChannelDirectory,
    resolve_channels,
)
from tasks.slack.failures import CHANNEL_ERRORS, NoticeFailed, slack_call

__all__ = [
    "METADATA_EVENT",
    "FileMessenger",
    "Messenger",
    "NoticeFailed",
    "SlackMessenger",
    "messenger_for",
]

METADATA_EVENT = "perfops_sla_notice"
FIND_MARGIN_S = 300  # read back from this long before the first attempt (clock skew)
PAGE = 200
MAX_PAGES = 50  # 10,000 messages of one channel's lookback
BACKOFF_S = 0.5
BACKOFF_MAX_S = 8.0


class Messenger(ABC):
    """Where notices go and are read back from: Slack (`SlackMessenger`) or the file outbox
    (`FileMessenger`)."""

    sink: str

    def resolve(self, channels: Iterable[str], cache: ChannelCache | None = None) -> dict[str, str]:
        """`configured channel -> the id to use` for those that resolve (all of them, as they
        are, for the outbox); a failure is raised by the first call to that channel."""
        return {c: c for c in channels}

    def channel_id(self, channel: str) -> str:
        """The id to use for `channel` (the outbox keeps names)."""
        return channel

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
        too); its (channel id, ts). Metadata outside the shape Slack documents is refused here,
        as Slack would refuse it (`invalid_metadata_format`), and never sent."""
        meta = {"event_type": METADATA_EVENT, "event_payload": metadata}
        problems = slack_metadata_problems(meta)
        if problems:
            raise NoticeFailed(
                f"not posted to {channel}: its metadata is outside Slack's documented shape "
                f"({'; '.join(problems[:3])})",
                permanent=True,
                reason="invalid_metadata_format",
            )
        message = {
            "channel": channel,
            "text": text,
            "blocks": blocks,
            "thread_ts": thread_ts,
            "metadata": meta,
        }
        return self._post(message, broadcast)

    @abstractmethod
    def _post(self, message: dict[str, Any], broadcast: bool) -> tuple[str, str]:
        """Post `message` (channel, text, blocks, thread_ts and metadata, as `post` built it)."""

    @abstractmethod
    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None: ...

    @abstractmethod
    def notices(
        self, channel: str, oldest: float, tick: Callable[[], object] | None = None
    ) -> list[dict[str, Any]]:
        """perfops notice payloads in `channel` since `oldest` (unix s), threads included, each
        with `_channel` (the id), `_ts` and `_top` (not a reply); `tick` is called as the read
        goes on (between requests: the caller renews its lock)."""

    @abstractmethod
    def find(self, channel: str, key: str, thread_ts: str | None, oldest: float) -> str | None:
        """The ts of the notice with idempotency `key` in `channel` (in thread `thread_ts`, or
        top level since `oldest`), if it is there; raises NoticeFailed when unreadable."""


def _payload(message: dict[str, Any]) -> dict[str, Any] | None:
    meta = message.get("metadata") or {}
    if meta.get("event_type") != METADATA_EVENT:
        return None
    payload = meta.get("event_payload")
    return payload if isinstance(payload, dict) else None


def _backoff(attempt: int) -> float:
    return min(BACKOFF_S * 2**attempt, BACKOFF_MAX_S) * (0.5 + random.random() / 2)


class SlackMessenger(Messenger):
    sink = "slack"

    def __init__(self, target: SlackEscalationTarget, cache: ChannelCache | None = None) -> None:
        self.target = target
        self.cache = cache
        self.directory = ChannelDirectory()
        self._client: WebClient | None = None

    @property
    def client(self) -> WebClient:
        if self._client is None:
            self._client = self.target.get_client()
        return self._client

    @property
    def scope(self) -> str:
        """The channel cache's scope: one workspace and token (a digest, never the token)."""
        token = self.target.bot_token.get_secret_value()
        return hashlib.sha256(f"{self.target.api_base_url}|{token}".encode()).hexdigest()[:16]

    # -- channels ------------------------------------------------------------------------------

    def resolve(self, channels: Iterable[str], cache: ChannelCache | None = None) -> dict[str, str]:
        if cache is not None:
            self.cache = cache
        wanted = list(dict.fromkeys(channels))
        known = self.directory.ids.keys() | self.directory.problems.keys()
        todo = [c for c in wanted if c not in known]
        if todo:
            found = resolve_channels(
                slack_call,
                self.client,
                todo,
                self.cache,
                self.scope,
                self.target.channel_cache_ttl_s,
            )
            self.directory.ids.update(found.ids)
            self.directory.problems.update(found.problems)
        return {c: self.directory.ids[c] for c in wanted if c in self.directory.ids}

    def channel_id(self, channel: str) -> str:
        """The id of `channel` (a configured name is resolved once; an id is itself)."""
        known = channel in self.directory.ids or channel in self.directory.problems
        if not known and not CHANNEL_ID.match(channel):
            self.resolve([channel])
        return self.directory.id_of(channel)

    def _forget(self, channel_id: str, exc: NoticeFailed) -> None:
        """Slack says the channel is gone or the bot left: the next run resolves it again."""
        if exc.reason not in CHANNEL_ERRORS or self.cache is None:
            return
        for name, cid in list(self.directory.ids.items()):
            if cid == channel_id:
                self.cache.forget_channel(self.scope, name)

    # -- reads ---------------------------------------------------------------------------------

    def _pages(self, what: str, fn: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        cursor = ""
        for _ in range(MAX_PAGES):
            page = slack_call(what, fn, **kwargs, limit=PAGE, cursor=cursor or None)
            yield from page.get("messages", [])
            cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                return

    def _history(self, channel_id: str, oldest: float) -> Iterator[dict[str, Any]]:
        """The top-level messages (and thread broadcasts) of a channel since `oldest`, newest
        first, with their metadata."""
        return self._pages(
            f"reading {channel_id}",
            self.client.conversations_history,
            channel=channel_id,
            oldest=f"{oldest:.6f}",
            include_all_metadata=True,
        )

    def _replies(self, channel_id: str, ts: str) -> Iterator[dict[str, Any]]:
        """The thread of `ts` (the parent first), with their metadata."""
        return self._pages(
            f"reading a thread in {channel_id}",
            self.client.conversations_replies,
            channel=channel_id,
            ts=ts,
            include_all_metadata=True,
        )

    def find(self, channel: str, key: str, thread_ts: str | None, oldest: float) -> str | None:
        if not key:
            return None
        channel_id = self.channel_id(channel)
        messages = (
            self._replies(channel_id, thread_ts) if thread_ts else self._history(channel_id, oldest)
        )
        for message in messages:
            payload = _payload(message)
            if payload is not None and payload.get("key") == key:
                return str(message["ts"])
        return None

    def notices(
        self, channel: str, oldest: float, tick: Callable[[], object] | None = None
    ) -> list[dict[str, Any]]:
        channel_id = self.channel_id(channel)
        found: list[dict[str, Any]] = []

        def add(message: dict[str, Any], payload: dict[str, Any]) -> None:
            top = message.get("thread_ts") in (None, message["ts"])
            found.append({**payload, "_channel": channel_id, "_ts": message["ts"], "_top": top})

        for i, message in enumerate(self._history(channel_id, oldest)):
            if tick is not None and i % PAGE == 0:  # once per page of history
                tick()
            payload = _payload(message)
            if payload is None or message.get("thread_ts") not in (None, message["ts"]):
                continue  # not perfops', or a broadcast reply (read with its thread)
            if not message.get("reply_count"):
                add(message, payload)
                continue
            for item in self._replies(channel_id, message["ts"]):
                reply = _payload(item)
                if reply is not None:
                    add(item, reply)
            if tick is not None:
                tick()
        return found

    # -- writes --------------------------------------------------------------------------------

    def _post(self, message: dict[str, Any], broadcast: bool) -> tuple[str, str]:
        name, thread_ts = message["channel"], message["thread_ts"]
        channel_id = self.channel_id(name)
        key = str(message["metadata"]["event_payload"].get("key", ""))
        oldest = time.time() - FIND_MARGIN_S
        last: NoticeFailed | None = None
        for attempt in range(self.target.max_retries + 1):
            if attempt:
                time.sleep(_backoff(attempt - 1))
            if last is not None:
                # A 5xx or a timeout may hide a message Slack stored: look before posting again.
                try:
                    ts = self.find(channel_id, key, thread_ts, oldest)
                except NoticeFailed as exc:
                    last = NoticeFailed(
                        f"{last}; reading it back failed too ({exc}): not posted again",
                        permanent=False,
                        reason=last.reason,
                    )
                    continue
                if ts is not None:
                    return channel_id, ts
            try:
                response = slack_call(
                    f"a notice to {name}",
                    self.client.chat_postMessage,
                    **{**message, "channel": channel_id},
                    reply_broadcast=broadcast if thread_ts else None,
                    unfurl_links=False,
                )
            except NoticeFailed as exc:
                if exc.permanent:
                    self._forget(channel_id, exc)
                    raise
                last = exc
                continue
            return str(response["channel"]), str(response["ts"])
        assert last is not None
        try:  # the last attempt may have been stored too
            ts = self.find(channel_id, key, thread_ts, oldest)
        except NoticeFailed:
            ts = None
        if ts is not None:
            return channel_id, ts
        raise last

    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None:
        channel_id = self.channel_id(channel)
        try:
            slack_call(
                f"an update of {channel}/{ts}",
                self.client.chat_update,
                channel=channel_id,
                ts=ts,
                text=text,
                blocks=blocks,
            )
        except NoticeFailed as exc:
            self._forget(channel_id, exc)
            raise


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

    def notices(
        self, channel: str, oldest: float, tick: Callable[[], object] | None = None
    ) -> list[dict[str, Any]]:
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

    def find(self, channel: str, key: str, thread_ts: str | None, oldest: float) -> str | None:
        return next((n["_ts"] for n in self.notices(channel, 0) if n.get("key") == key), None)


def messenger_for(sink: SlackEscalationTarget | FileOutbox) -> Messenger:
    if isinstance(sink, FileOutbox):
        return FileMessenger(sink)
    return SlackMessenger(sink)
