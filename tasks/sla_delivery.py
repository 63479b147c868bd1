"""SLA notice delivery: incident state and the notification log in Redis, the escalation
decision under a Redis lock, Slack (or the file outbox) with email as the fallback.

Exactly one notice per incident and level:
- Everything from reading the state to recording the last notice runs under one Redis lock
  (`<prefix>sla:lock`): a second evaluator waits for it, then finds the notices recorded.
- Each notice is *sent, then recorded* (`<prefix>sla:notice:<key>`, Slack's channel and ts
  kept to thread and update). Nothing is recorded before the send, so a crash between decide
  and send loses nothing: the next run decides the same notice again.
- Before sending, a `pending` marker names the notice; a marker left by a crash between send
  and record is resolved by reading the channel back: a message whose metadata carries the
  notice's key was sent (recorded now, not sent again), otherwise it is sent.
- Redis here runs without persistence. When the state is gone (the `epoch` key is missing:
  first run, flushed or restarted Redis), the incidents and the log are rebuilt from the
  notices themselves: every notice carries its key, incident, level and alerts as Slack message
  metadata (`conversations.history` + `conversations.replies`, `recovery_lookback` back).
  What Slack does not hold is lost: the no-data clocks restart.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from pydantic import BaseModel, Field

from blocks import RedisTarget
from blocks.resolve import EmailSink
from decisions.burn_rate import Alert
from decisions.escalation import (
    IncidentState,
    Notice,
    PostedNotice,
    Suppressed,
    acknowledge,
    decide,
    rebuild,
    record,
)
from decisions.sla_notices import notice_blocks, notice_metadata, notice_text
from decisions.slo_definitions import SlaDefinitions
from perfops.errors import ConnectionFailed, LockBusy
from perfops.redaction import redact
from tasks.slack.threads import Messenger, NoticeFailed

LOCK_TIMEOUT_S = 120
LOCK_WAIT_S = 60
LOCK_POLL_S = 0.01
NOTICE_TTL_S = 90 * 86400
DEFAULT_RECOVERY_LOOKBACK = timedelta(days=7)


class Delivered(BaseModel):
    key: str
    incident: str
    group: str
    kind: str
    level: int
    channel: str
    sink: str  # slack, file, email, skipped
    ts: str | None = None
    outcome: str  # sent, already sent, recovered from Slack, email fallback, failed
    note: str = ""
    alerts: list[Alert] = Field(default_factory=list)


class DeliveryReport(BaseModel):
    delivered: list[Delivered]
    suppressed: list[Suppressed]
    recovered: str = ""  # what a state rebuild found, when one ran
    incidents_open: int = 0


class SlaStore:
    """The SLA keys in Redis under `<key_prefix>sla:`."""

    def __init__(self, target: RedisTarget, client: redis.Redis | None = None) -> None:
        self.target = target
        self.client = client or target.get_client()
        self.prefix = f"{target.key_prefix}sla:"

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @contextlib.contextmanager
    def locked(self, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
        lock = self.client.lock(
            self.key("lock"), timeout=LOCK_TIMEOUT_S, blocking_timeout=wait_s, sleep=LOCK_POLL_S
        )
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            raise ConnectionFailed(f"Redis at {self.target.url} failed: {exc}") from exc
        if not acquired:
            raise LockBusy(
                f"another SLA evaluation holds {self.key('lock')} for more than {wait_s:g} s; "
                "nothing was sent (the next run catches up)"
            )
        try:
            yield
        finally:
            with contextlib.suppress(redis.RedisError):
                lock.release()

    def has_state(self) -> bool:
        return bool(self.client.exists(self.key("epoch")))

    def mark_state(self) -> None:
        self.client.set(self.key("epoch"), datetime.now(UTC).isoformat())

    def incidents(self) -> dict[str, IncidentState]:
        keys = list(self.client.scan_iter(self.key("incident", "*"), count=500))
        values: list[Any] = list(self.client.mget(keys)) if keys else []  # type: ignore[arg-type]
        states = [IncidentState.model_validate_json(v) for v in values if v]
        return {s.group: s for s in states}

    def save(self, state: IncidentState) -> None:
        pipe = self.client.pipeline()
        pipe.set(self.key("incident", state.group), state.model_dump_json())
        for alert in state.alerts:
            pipe.set(self.key("alert", alert), state.group)
        pipe.execute()

    def logged(self, key: str) -> PostedNotice | None:
        raw: Any = self.client.get(self.key("notice", key))
        return PostedNotice.model_validate_json(raw) if raw else None

    def log(self, notice: PostedNotice) -> None:
        self.client.set(self.key("notice", notice.key), notice.model_dump_json(), ex=NOTICE_TTL_S)

    def set_pending(self, notice: Notice) -> None:
        self.client.set(self.key("pending", notice.key), notice.model_dump_json(), ex=NOTICE_TTL_S)

    def clear_pending(self, key: str) -> None:
        self.client.delete(self.key("pending", key))

    def pending(self) -> list[Notice]:
        keys = list(self.client.scan_iter(self.key("pending", "*"), count=500))
        out = []
        for k in keys:
            raw: Any = self.client.get(k)
            if raw:
                out.append(Notice.model_validate_json(raw))
        return out

    def group_of(self, alert_key: str) -> str | None:
        value = self.client.get(self.key("alert", alert_key))
        return str(value) if value else None

    def no_data_since(self) -> dict[str, datetime]:
        raw: Any = self.client.get(self.key("nodata"))
        return {k: datetime.fromisoformat(v) for k, v in json.loads(raw).items()} if raw else {}

    def save_no_data_since(self, since: dict[str, datetime]) -> None:
        self.client.set(self.key("nodata"), _json({k: v.isoformat() for k, v in since.items()}))


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _channels(definitions: SlaDefinitions) -> list[str]:
    seen: list[str] = []
    for policy in definitions.escalation_policies:
        for level in policy.levels:
            if level.channel and level.channel not in seen:
                seen.append(level.channel)
    return seen


def recover(
    store: SlaStore,
    messenger: Messenger,
    definitions: SlaDefinitions,
    now: datetime,
    lookback: timedelta = DEFAULT_RECOVERY_LOOKBACK,
) -> str:
    """Rebuild incidents and the notification log from the notices in the channels."""
    oldest = (now - lookback).timestamp()
    payloads: list[dict[str, Any]] = []
    for channel in _channels(definitions):
        payloads.extend(messenger.notices(channel, oldest))
    incidents, log = rebuild(payloads)
    for posted in log:
        store.log(posted)
    for state in incidents.values():
        store.save(state)
    store.mark_state()
    open_ = sum(s.open for s in incidents.values())
    return (
        f"state rebuilt from {messenger.sink}: {len(log)} notices, {len(incidents)} incidents "
        f"({open_} open)"
    )


def _reconcile_pending(store: SlaStore, messenger: Messenger, now: datetime) -> list[str]:
    """Notices sent but not recorded (a crash between send and record): record them now, with
    the incident state they lead to; the others are decided and sent again."""
    found: list[str] = []
    states = store.incidents()
    for notice in store.pending():
        if store.logged(notice.key) is None:
            oldest = (now - timedelta(days=1)).timestamp()
            match = next(
                (
                    p
                    for p in messenger.notices(notice.channel, oldest)
                    if p.get("key") == notice.key
                ),
                None,
            )
            if match is not None:
                posted = PostedNotice(
                    key=notice.key,
                    channel=match["_channel"],
                    ts=match["_ts"],
                    sent_at=notice.at,
                    sink=messenger.sink,
                    note="found in the channel after a crash",
                )
                store.log(posted)
                state = states.get(notice.group)
                if state is None or state.incident != notice.incident:
                    state = notice.state_after
                states[notice.group] = record(state, notice, posted)
                store.save(states[notice.group])
                found.append(notice.key)
        store.clear_pending(notice.key)
    return found


def _send(
    notice: Notice,
    messenger: Messenger,
    run_url: str,
    state: IncidentState | None,
) -> tuple[str, str]:
    minutes = int((notice.at - notice.started_at).total_seconds() // 60)
    text = notice_text(notice, minutes)
    blocks = notice_blocks(notice, run_url)
    meta = notice_metadata(notice)
    if notice.kind == "update":
        if notice.update_ts:
            messenger.update(notice.channel, notice.update_ts, text, blocks)
        return notice.channel, notice.update_ts or ""
    channel, ts = messenger.post(
        notice.channel,
        text,
        blocks,
        meta,
        thread_ts=notice.thread_ts,
        broadcast=notice.kind in ("escalate", "repeat", "join"),
    )
    if notice.kind == "resolved" and notice.update_ts:
        messenger.update(notice.channel, notice.update_ts, text, blocks)
    if notice.kind == "join" and notice.update_ts and state is not None and state.root_channel:
        every = notice.model_copy(
            update={"kind": "update", "alerts": list(notice.state_after.alerts.values())}
        )
        with contextlib.suppress(NoticeFailed):  # the reply went out; the summary can lag
            messenger.update(
                state.root_channel,
                notice.update_ts,
                notice_text(every, minutes),
                notice_blocks(every, run_url),
            )
    return channel, ts


def _email_fallback(
    notice: Notice, email: EmailSink | None, recipients: list[str], sender: str, why: str
) -> str:
    from tasks.mail import build_message, send_email

    if email is None or not recipients:
        raise ConnectionFailed(f"{why}; no email fallback configured")
    minutes = int((notice.at - notice.started_at).total_seconds() // 60)
    lines = [notice_text(notice, minutes), "", f"Slack failed: {why}", ""]
    for a in notice.alerts:
        lines.append(f"- {a.key} [{a.severity}]: {a.reason} (runbook {a.runbook or 'n/a'})")
    message = build_message(
        sender=sender,
        to=recipients,
        subject=f"[perfops] {notice_text(notice, minutes)}"[:200],
        text="\n".join(lines),
    )
    result = send_email.fn(email, message)
    return f"emailed {', '.join(result.accepted)} via {result.sink}"


def deliver(
    store: SlaStore,
    messenger: Messenger,
    definitions: SlaDefinitions,
    alerts: list[Alert],
    now: datetime,
    *,
    email: EmailSink | None = None,
    email_from: str = "perfops@localhost",
    run_url: str = "",
    lock_wait_s: float = LOCK_WAIT_S,
    recovery_lookback: timedelta = DEFAULT_RECOVERY_LOOKBACK,
) -> DeliveryReport:
    """Decide and deliver the notices due at `now`, exactly once each (see the module doc)."""
    delivered: list[Delivered] = []
    with store.locked(lock_wait_s):
        recovered = ""
        if not store.has_state():
            try:
                recovered = recover(store, messenger, definitions, now, recovery_lookback)
            except NoticeFailed as exc:
                # Slack unreadable: go on with what Redis holds (the fallback still notifies);
                # the next run tries to rebuild again.
                recovered = f"state could not be rebuilt from {messenger.sink}: {exc}"
        for key in _reconcile_pending(store, messenger, now):
            recovered += f"{'; ' if recovered else ''}notice {key} found sent, recorded"
        states = store.incidents()
        plan = decide(now, alerts, states, definitions)
        for state in plan.states.values():
            store.save(state)
        for notice in plan.notices:
            state = states.get(notice.group) or notice.state_after
            base = {
                "key": notice.key,
                "incident": notice.incident,
                "group": notice.group,
                "kind": notice.kind,
                "level": notice.level,
                "channel": notice.channel,
                "alerts": notice.alerts,
            }
            logged = store.logged(notice.key)
            if logged is not None:  # sent by an earlier (retried or crashed) run
                states[notice.group] = record(state, notice, logged)
                store.save(states[notice.group])
                delivered.append(
                    Delivered(**base, sink=logged.sink, ts=logged.ts, outcome="already sent")
                )
                continue
            store.set_pending(notice)
            note = ""
            try:
                channel, ts = _send(notice, messenger, run_url, state)
                sink, outcome = messenger.sink, "sent"
            except NoticeFailed as exc:
                if notice.kind == "update":
                    store.clear_pending(notice.key)
                    delivered.append(
                        Delivered(**base, sink="skipped", outcome="failed", note=str(exc))
                    )
                    continue
                policy = definitions.policy(state.policy)
                note = _email_fallback(notice, email, policy.email_fallback, email_from, str(exc))
                note = f"{exc}; {note}"
                channel, ts, sink, outcome = notice.channel, "", "email", "email fallback"
            posted = PostedNotice(
                key=notice.key, channel=channel, ts=ts, sent_at=now, sink=sink, note=redact(note)
            )
            store.log(posted)
            states[notice.group] = record(state, notice, posted)
            store.save(states[notice.group])
            store.clear_pending(notice.key)
            delivered.append(Delivered(**base, sink=sink, ts=ts, outcome=outcome, note=note))
        return DeliveryReport(
            delivered=delivered,
            suppressed=plan.suppressed,
            recovered=recovered,
            incidents_open=sum(s.open for s in states.values()),
        )


def acknowledge_alert_in_store(
    store: SlaStore,
    messenger: Messenger,
    definitions: SlaDefinitions,
    alert_or_group: str,
    by: str,
    now: datetime,
) -> tuple[IncidentState, bool]:
    """Acknowledge the open incident holding `alert_or_group` (an alert key, a group or an
    incident id); posts an acknowledged reply in its thread. Returns (state, newly acked)."""
    with store.locked():
        if not store.has_state():
            recover(store, messenger, definitions, now)
        states = store.incidents()
        group = store.group_of(alert_or_group) or alert_or_group
        state = states.get(group) or next(
            (s for s in states.values() if s.incident == alert_or_group), None
        )
        if state is None:
            known = sorted({k for s in states.values() if s.open for k in s.alerts})
            raise LookupError(
                f"no incident for {alert_or_group!r}; open alerts: {', '.join(known) or 'none'}"
            )
        if not state.open:
            raise LookupError(
                f"{alert_or_group!r} belongs to incident {state.incident}, resolved at "
                f"{state.resolved_at}: nothing to acknowledge"
            )
        if state.acked_at is not None:
            return state, False
        acked = acknowledge(state, by, now)
        notice = Notice(
            key=f"{state.incident}:ack:{state.level}",
            incident=state.incident,
            group=group,
            kind="ack",
            level=state.level,
            channel=state.root_channel or "#perfops",
            thread_ts=state.root_ts,
            alerts=list(state.alerts.values()),
            started_at=state.started_at,
            at=now,
            state_after=acked,
        )
        posted_ts = ""
        if store.logged(notice.key) is None:
            try:
                text = (
                    f":eyes: Acknowledged by *{by}* at {now:%H:%M} UTC: escalation and "
                    "reminders stopped."
                )
                _, posted_ts = messenger.post(
                    notice.channel,
                    f"ACKNOWLEDGED by {by}: escalation stopped",
                    [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                    notice_metadata(notice),
                    thread_ts=notice.thread_ts,
                )
            except NoticeFailed:
                posted_ts = ""  # the ack itself is recorded in Redis either way
            store.log(
                PostedNotice(
                    key=notice.key,
                    channel=notice.channel,
                    ts=posted_ts,
                    sent_at=now,
                    sink=messenger.sink,
                )
            )
        store.save(acked)
        return acked, True
