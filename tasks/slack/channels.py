"""Slack channel names to channel ids, once per run.

Only `chat.postMessage` accepts a channel name; `conversations.history`, `conversations.replies`
and `chat.update` take ids (a name is `channel_not_found`), and a post answers with the id. So
every read, update and thread key uses the id: the names the escalation policies give are
resolved here, through `conversations.list` (paged by cursor, public and private channels,
archived ones excluded) and, for an id given directly, `conversations.info`. The result is
cached in Redis for `ttl_s` (the block's `channel_cache_ttl_s`), so a run normally makes no
Slack request for it.

A channel that does not exist, or that the bot is not in (perfops reads its channels back to
thread, deduplicate and recover), is a permanent `NoticeFailed` naming the channel and the fix;
notices to it go to the email fallback.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tasks.slack.failures import NoticeFailed

CHANNEL_ID = re.compile(r"^[CG][A-Z0-9]{6,}$")
LIST_TYPES = "public_channel,private_channel"
LIST_PAGE = 200  # Slack recommends at most 200 per conversations.list page
MAX_LIST_PAGES = 100  # 20,000 channels


class ChannelCache(Protocol):
    """Where resolved ids are kept between runs (the SLA store in Redis)."""

    def cached_channels(self, scope: str) -> dict[str, str]:
        """Unexpired `configured name -> id` entries of `scope` (one workspace and token)."""
        ...

    def cache_channels(self, scope: str, ids: dict[str, str], ttl_s: int) -> None:
        """Keep `ids` for `ttl_s` seconds."""
        ...

    def forget_channel(self, scope: str, name: str) -> None:
        """Drop one entry (Slack said the channel is gone or the bot left it)."""
        ...


@dataclass
class ChannelDirectory:
    """Configured channel (`#name`, `name` or an id) -> channel id, and why the others failed."""

    ids: dict[str, str] = field(default_factory=dict)
    problems: dict[str, NoticeFailed] = field(default_factory=dict)

    def id_of(self, channel: str) -> str:
        """The id of `channel` (already an id: itself); raises the channel's problem."""
        if channel in self.problems:
            raise self.problems[channel]
        if channel in self.ids:
            return self.ids[channel]
        if channel in self.ids.values() or CHANNEL_ID.match(channel):
            return channel
        raise NoticeFailed(
            f"Slack channel {channel} was not resolved to an id", permanent=True, reason="unknown"
        )


def channel_name(channel: str) -> str:
    """How Slack spells a channel name: `#Ops-Oncall` -> `ops-oncall`."""
    return channel.strip().lstrip("#").lower()


def _problem(channel: str, reason: str, channel_id: str = "") -> NoticeFailed:
    """Why notices cannot go to `channel`, and the fix."""
    where = f"{channel} ({channel_id})" if channel_id else channel
    message = {
        "channel_not_found": f"Slack channel {channel} not found: it does not exist, is "
        "archived, or is private without the bot in it (create it, or /invite the bot there)",
        "not_in_channel": f"the Slack bot is not in {where}: /invite it there (perfops reads "
        "its notices back to thread, deduplicate and recover)",
        "is_archived": f"Slack channel {where} is archived: name another channel in the "
        "escalation policy",
    }[reason]
    return NoticeFailed(message, permanent=True, reason=reason)


def _check(channel: str, info: dict[str, Any]) -> NoticeFailed | None:
    if info.get("is_archived"):
        return _problem(channel, "is_archived", str(info["id"]))
    if not info.get("is_member"):
        return _problem(channel, "not_in_channel", str(info["id"]))
    return None


def resolve_channels(
    call: Callable[..., Any],
    client: Any,
    channels: Iterable[str],
    cache: ChannelCache | None,
    scope: str,
    ttl_s: int,
) -> ChannelDirectory:
    """Resolve `channels` to ids: from `cache`, else `conversations.list` (stopping at the page
    that holds the last one wanted) and `conversations.info` for ids; caches what it found."""
    wanted = list(dict.fromkeys(channels))
    directory = ChannelDirectory()
    cached = cache.cached_channels(scope) if cache is not None else {}
    todo = []
    for channel in wanted:
        if channel in cached:
            directory.ids[channel] = cached[channel]
        else:
            todo.append(channel)
    by_name = [c for c in todo if not CHANNEL_ID.match(c)]
    found: dict[str, str] = {}
    if by_name:
        listed: dict[str, dict[str, Any]] = {}
        cursor = ""
        try:
            for _ in range(MAX_LIST_PAGES):
                page = call(
                    "listing channels",
                    client.conversations_list,
                    types=LIST_TYPES,
                    exclude_archived=True,
                    limit=LIST_PAGE,
                    cursor=cursor or None,
                )
                for info in page.get("channels", []):
                    listed.setdefault(str(info.get("name", "")), info)
                cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
                if not cursor or all(channel_name(c) in listed for c in by_name):
                    break
        except NoticeFailed as exc:
            for channel in by_name:
                directory.problems[channel] = NoticeFailed(
                    f"cannot resolve Slack channel {channel} to an id: {exc}",
                    permanent=exc.permanent,
                    reason=exc.reason,
                )
            by_name = []
        for channel in by_name:
            info = listed.get(channel_name(channel))
            problem = (
                _problem(channel, "channel_not_found") if info is None else _check(channel, info)
            )
            if problem is not None:
                directory.problems[channel] = problem
            elif info is not None:
                found[channel] = str(info["id"])
    for channel in (c for c in todo if CHANNEL_ID.match(c)):
        try:
            answer = call(f"reading channel {channel}", client.conversations_info, channel=channel)
        except NoticeFailed as exc:
            missing = exc.reason == "channel_not_found"
            directory.problems[channel] = _problem(channel, exc.reason) if missing else exc
            continue
        problem = _check(channel, answer["channel"])
        if problem is not None:
            directory.problems[channel] = problem
        else:
            found[channel] = channel
    directory.ids.update(found)
    if found and cache is not None:
        cache.cache_channels(scope, found, ttl_s)
    return directory
