"""Slack through slack-sdk against the local Web API stand-in, and the file outbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from blocks import SlackEscalationTarget
from blocks.resolve import FileOutbox
from perfops.errors import ConnectionFailed
from tasks.outbox import read_slack_notices
from tasks.slack.client import fetch_identity, post_message, update_message
from tests.servers import DEFAULT_TOKEN, SlackStandIn

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _target(slack: SlackStandIn, token: str = DEFAULT_TOKEN) -> SlackEscalationTarget:
    return SlackEscalationTarget(
        bot_token=SecretStr(token),
        api_base_url=slack.base_url,
        channels=["#team-lead", "#eng-manager", "#cto"],
        max_retries=2,
    )


def test_message_is_received_then_updated_in_thread(slack: SlackStandIn) -> None:
    target = _target(slack)
    posted = post_message(
        target,
        target.channel_for(1),
        "SLO api-availability burning 14.4x",
        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "*burning*"}}],
    )
    reply = post_message(target, posted.channel, "escalated to level 2", thread_ts=posted.ts)
    update_message(target, posted, "SLO api-availability resolved")
    first, second = slack.messages
    assert posted.channel == slack.channel_id("#team-lead")  # Slack answers with the id
    assert (first["channel"], first["ts"]) == (posted.channel, posted.ts)
    assert first["text"] == "SLO api-availability resolved"
    assert first["updates"][0]["text"] == "SLO api-availability burning 14.4x"
    assert second["thread_ts"] == posted.ts and reply.thread_ts == posted.ts
    assert all(r.headers.get("authorization") == f"Bearer {DEFAULT_TOKEN}" for r in slack.requests)


def test_rate_limit_is_retried_after_retry_after(slack: SlackStandIn) -> None:
    slack.fail_next(429, retry_after=1)
    posted = post_message(_target(slack), "#team-lead", "hello")
    assert [r.status for r in slack.requests] == [429, 200]
    assert slack.requests[1].time - slack.requests[0].time >= 1.0
    assert posted.sink == "slack"


def test_server_errors_are_retried_but_a_post_is_never_sent_twice(slack: SlackStandIn) -> None:
    target = _target(slack)
    posted = post_message(target, "#team-lead", "hello")
    slack.fail_next(503, count=2)
    update_message(target, posted, "edited")  # idempotent: retried by the client
    assert [r.status for r in slack.requests][1:] == [503, 503, 200]
    # A 500 may come after Slack stored the message: the client does not post it again.
    slack.fail_next(500, method="chat.postMessage", after_handling=True)
    with pytest.raises(ConnectionFailed, match="internal_error"):
        post_message.fn(target, "#team-lead", "once")
    assert [m["text"] for m in slack.messages] == ["edited", "once"]


def test_permanent_error_fails_fast_with_slacks_reason(slack: SlackStandIn) -> None:
    with pytest.raises(ConnectionFailed, match="invalid_auth"):
        post_message.fn(_target(slack, token="xoxb-wrong"), "#team-lead", "hello")
    assert len(slack.requests) == 1


def test_identity(slack: SlackStandIn) -> None:
    assert set(fetch_identity(_target(slack))) == {"team", "user", "url"}


def test_outbox_records_posts_and_updates(tmp_path: Path) -> None:
    outbox = FileOutbox(directory=tmp_path)
    posted = post_message(outbox, "#team-lead", "hello")
    update_message(outbox, posted, "bye")
    notices = read_slack_notices(outbox)
    assert [(n["action"], n["text"]) for n in notices] == [("post", "hello"), ("update", "bye")]
    assert notices[1]["ts"] == posted.ts


def test_channel_per_level() -> None:
    target = SlackEscalationTarget(bot_token=SecretStr("x" * 10), channels=["#a", "#b"])
    assert [target.channel_for(n) for n in (1, 2, 3)] == ["#a", "#b", "#b"]
    with pytest.raises(ValueError, match="level must be >= 1"):
        target.channel_for(0)
