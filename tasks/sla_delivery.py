"""SLA notice delivery: incident state and the notification log in Redis, the escalation
decision under a Redis lock, Slack (or the file outbox) with email as the fallback.

Exactly one notice per incident and level:
- Everything from reading the state to recording the last notice runs under one Redis lock
  (`<prefix>sla:lock`): a second evaluator waits for it, then finds the notices recorded. The
  lock expires (`LOCK_TIMEOUT_S`) and is renewed before each notice (and as a rebuild reads
  Slack); a notice that outlived it is recorded (never clearing an acknowledgement made
  meanwhile, `SlaStore.save`) and the rest of the run is not sent (`HeldLock`).
- Each notice is *sent, then recorded* (`<prefix>sla:notice:<key>`, Slack's channel and ts
  kept to thread and update). Nothing is recorded before the send, so a crash between decide
  and send loses nothing: the next run decides the same notice again.
- Before sending, a `pending` marker names the notice; a marker left by a crash between send
  and record is resolved by reading the channel back: a message whose metadata carries the
  notice's key was sent (recorded now, not sent again), otherwise it is sent. While the channel
  cannot be read, the notice waits (`deferred`) rather than risk a second copy, for at most
  `PENDING_WAIT_S`, and so do the other notices of its group (a first message whose run
  crashed before recording it leaves no incident: the run decides a new one, the same alerts
  under another key).
- A level that cannot be reached does not hold the escalation back: a `fire` or `escalate`
  that failed (Slack refused it, no email fallback or it failed too) is recorded as a level not
  reached (`decisions.escalation.record_unreached`, under the lock), the next level falls due at
  its delay, and the notice is tried again (its own key) each run.
- Channels: the policies' channel names are resolved to Slack ids once per run (cached in
  Redis, `tasks.slack.channels`); every notice, thread key and read uses the id.
- One incident, its own threads: a notice of a new incident never continues the previous
  (resolved) incident's state (`decisions.escalation.continuing`).
- Evaluations decide in time order: the newest evaluation time decided is kept
  (`<prefix>sla:decided-at`), and a run evaluated at an older instant (one that waited for the
  lock behind a newer run, e.g. its Prometheus queries were slow) decides nothing: its alerts are
  older than the state, so it would fire again an incident the newer run resolved.
- When the state is gone (the `epoch` key is missing: first run, or a Redis that lost its data),
  the incidents and the log are rebuilt from the notices themselves: every notice carries its
  key, incident, level and alerts as Slack message metadata (`conversations.history` +
  `conversations.replies`, `recovery_lookback` back). What Slack does not hold is lost: the
  no-data clocks restart. Redis persistence (AOF) is the first line of defence
  (docs/production.md); this is the second.
"""

from __future__ import annotations

import contextlib
import json
import smtplib
import time
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from pydantic import BaseModel, Field

from blocks import RedisTarget
from blocks.resolve import EmailSink
from decisions.burn_rate import Alert
from decisions.escalation import (
    ESCALATING,
    IncidentState,
    Notice,
    PostedNotice,
    acknowledge,
    acknowledgement,
    as_recorded,
    continuing,
    decide,
    policy_channels,
    rebuild,
    record,
    record_unreached,
    record_unresolved,
)
from decisions.sla_notices import (
    notice_blocks,
    notice_metadata,
    notice_text,
    slack_escape,
    unreached_lines,
)
from decisions.sla_report import Delivered, DeliveryReport
from decisions.slo_definitions import SlaDefinitions
from perfops.errors import ConnectionFailed, LockBusy
from perfops.redaction import redact
from tasks.slack.threads import Messenger, NoticeFailed

LOCK_TIMEOUT_S = 120
LOCK_WAIT_S = 60
LOCK_POLL_S = 0.01
NOTICE_TTL_S = 90 * 86400
DEFAULT_RECOVERY_LOOKBACK = timedelta(days=7)
PENDING_WAIT_S = 15 * 60  # a notice unconfirmable this long (Slack unreadable) is sent anyway


class HeldLock:
    """The SLA lock while a run holds it. It expires `timeout_s` after it was taken or last
    renewed, so a run that stalls (a slow Slack: retries, Retry-After) cannot block the others
    for ever; the run renews it before each notice and, before each write of incident state,
    checks it still holds it (`renew`): once it expired another run (the next minute's
    evaluation, an acknowledgement) may have written newer state."""

    def __init__(self, lock: Any, name: str, timeout_s: float) -> None:
        self._lock = lock
        self.name = name
        self.timeout_s = timeout_s

    def renew(self) -> bool:
        """Start the timeout again; False when the lock expired and is no longer ours."""
        try:
            return bool(self._lock.reacquire())
        except redis.exceptions.LockNotOwnedError:
            return False

    def renew_reading(self, sink: str, undone: str) -> None:
        """`renew` while the state is read back from `sink`; raises LockBusy when the lock
        expired meanwhile (`undone`: what the run therefore did not do)."""
        if not self.renew():
            raise LockBusy(
                f"the SLA lock {self.name} expired (held over {self.timeout_s:g} s) while the "
                f"state was read back from {sink}: {undone} (the next run catches up)"
            )

    @property
    def lost(self) -> str:
        """What happened once `renew` failed."""
        return (
            f"the SLA lock {self.name} expired (held over {self.timeout_s:g} s with Slack slow "
            "to answer) and another run may have changed the incidents"
        )


class SlaStore:
    """The SLA keys in Redis under `<key_prefix>sla:`."""

    def __init__(
        self,
        target: RedisTarget,
        client: redis.Redis | None = None,
        lock_timeout_s: float | None = None,
    ) -> None:
        self.target = target
        self.client = client or target.get_client()
        self.prefix = f"{target.key_prefix}sla:"
        self.lock_timeout_s = lock_timeout_s or LOCK_TIMEOUT_S

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @contextlib.contextmanager
    def locked(self, wait_s: float | None = None) -> Iterator[HeldLock]:
        wait_s = LOCK_WAIT_S if wait_s is None else wait_s  # read when called (tests shorten it)
        lock = self.client.lock(
            self.key("lock"),
            timeout=self.lock_timeout_s,
            blocking_timeout=wait_s,
            sleep=LOCK_POLL_S,
        )
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            raise ConnectionFailed(f"Redis at {self.target.shown_url} failed: {exc}") from exc
        if not acquired:
            raise LockBusy(
                f"another SLA evaluation holds {self.key('lock')} for more than {wait_s:g} s; "
                "nothing was sent (the next run catches up)"
            )
        try:
            yield HeldLock(lock, self.key("lock"), self.lock_timeout_s)
        finally:
            with contextlib.suppress(redis.RedisError):  # expired: another run's now, untouched
                lock.release()

    def has_state(self) -> bool:
        return bool(self.client.exists(self.key("epoch")))

    def mark_state(self) -> None:
        self.client.set(self.key("epoch"), datetime.now(UTC).isoformat())

    def decided_at(self) -> datetime | None:
        """The newest evaluation time whose notices a run decided."""
        raw: Any = self.client.get(self.key("decided-at"))
        return datetime.fromisoformat(raw) if raw else None

    def mark_decided(self, at: datetime) -> None:
        """Keep `at` as the newest evaluation time decided (under the SLA lock)."""
        newest = self.decided_at()
        if newest is None or at > newest:
            self.client.set(self.key("decided-at"), at.isoformat(), ex=NOTICE_TTL_S)

    def incidents(self) -> dict[str, IncidentState]:
        keys = list(self.client.scan_iter(self.key("incident", "*"), count=500))
        values: list[Any] = list(self.client.mget(keys)) if keys else []  # type: ignore[arg-type]
        states = [IncidentState.model_validate_json(v) for v in values if v]
        return {s.group: s for s in states}

    def save(self, state: IncidentState) -> None:
        """Write the group's incident. An acknowledgement of the same incident already in Redis
        is kept even when `state` (read before it) has none: a run that lost the lock to
        `sla ack` never clears the acknowledgement (a WATCHed read-modify-write)."""
        key = self.key("incident", state.group)

        def write(pipe: Any) -> None:
            raw = pipe.get(key)
            stored = IncidentState.model_validate_json(raw) if raw else None
            merged = state
            if (
                stored is not None
                and stored.incident == state.incident
                and stored.acked_at is not None
                and state.acked_at is None
            ):
                merged = state.model_copy(
                    update={"acked_by": stored.acked_by, "acked_at": stored.acked_at}
                )
            pipe.multi()
            pipe.set(key, merged.model_dump_json())
            for alert in merged.alerts:
                pipe.set(self.key("alert", alert), merged.group)

        self.client.transaction(write, key)

    def move(self, old_group: str, state: IncidentState) -> None:
        """Save `state` under its (new) group and forget the incident under `old_group`."""
        self.save(state)
        self.client.delete(self.key("incident", old_group))

    def logged(self, key: str) -> PostedNotice | None:
        raw: Any = self.client.get(self.key("notice", key))
        return PostedNotice.model_validate_json(raw) if raw else None

    def log(self, notice: PostedNotice) -> None:
        self.client.set(self.key("notice", notice.key), notice.model_dump_json(), ex=NOTICE_TTL_S)

    def set_pending(self, notice: Notice) -> float:
        """Mark `notice` as being sent; returns since when (wall clock, kept across runs)."""
        key = self.key("pending", notice.key)
        since = time.time()
        value = json.dumps({"notice": notice.model_dump(mode="json"), "since": since})
        if not self.client.set(key, value, ex=NOTICE_TTL_S, nx=True):
            since = self.pending_since(notice.key) or since
        return since

    def clear_pending(self, key: str) -> None:
        self.client.delete(self.key("pending", key))

    def pending_since(self, key: str) -> float | None:
        raw: Any = self.client.get(self.key("pending", key))
        return float(json.loads(raw).get("since", 0)) if raw else None

    def pending(self) -> list[tuple[Notice, float]]:
        """Notices being sent when a run stopped, with since when (wall clock)."""
        keys = list(self.client.scan_iter(self.key("pending", "*"), count=500))
        out = []
        for k in keys:
            raw: Any = self.client.get(k)
            if raw:
                value = json.loads(raw)
                if "notice" not in value:  # a marker written before `since` was kept
                    value = {"notice": value, "since": 0.0}
                out.append((Notice.model_validate(value["notice"]), float(value["since"])))
        return out

    # The Slack channel directory's cache (tasks.slack.channels.ChannelCache): one JSON value
    # per workspace and token, each entry with its own expiry.
    def cached_channels(self, scope: str) -> dict[str, str]:
        raw: Any = self.client.get(self.key("slack-channels", scope))
        entries = json.loads(raw) if raw else {}
        now = time.time()
        return {name: cid for name, (cid, until) in entries.items() if until > now}

    def cache_channels(self, scope: str, ids: dict[str, str], ttl_s: int) -> None:
        key = self.key("slack-channels", scope)
        raw: Any = self.client.get(key)
        now = time.time()
        entries = {n: e for n, e in (json.loads(raw) if raw else {}).items() if e[1] > now}
        entries.update({name: [cid, now + ttl_s] for name, cid in ids.items()})
        self.client.set(key, json.dumps(entries), ex=ttl_s)

    def forget_channel(self, scope: str, name: str) -> None:
        key = self.key("slack-channels", scope)
        raw: Any = self.client.get(key)
        if raw:
            entries = json.loads(raw)
            entries.pop(name, None)
            self.client.set(key, json.dumps(entries), keepttl=True)

    def group_of(self, alert_key: str) -> str | None:
        value = self.client.get(self.key("alert", alert_key))
        return str(value) if value else None

    def no_data_since(self) -> dict[str, datetime]:
        try:
            raw: Any = self.client.get(self.key("nodata"))
        except redis.RedisError as exc:
            raise ConnectionFailed(f"Redis at {self.target.url} failed: {exc}") from exc
        return {k: datetime.fromisoformat(v) for k, v in json.loads(raw).items()} if raw else {}

    def save_no_data_since(self, since: dict[str, datetime]) -> None:
        self.client.set(self.key("nodata"), _json({k: v.isoformat() for k, v in since.items()}))


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def recover(
    store: SlaStore,
    messenger: Messenger,
    definitions: SlaDefinitions,
    now: datetime,
    lookback: timedelta = DEFAULT_RECOVERY_LOOKBACK,
    held: HeldLock | None = None,
) -> str:
    """Rebuild incidents and the notification log from the notices in the channels (by id).
    Slack's ts are wall-clock times, so a replayed minute still reads the recent messages.
    `held`: the SLA lock, renewed as the read goes on (a long history read outlived it) and
    checked before anything is written (LockBusy: nothing written)."""

    def tick() -> None:
        if held is not None:
            held.renew_reading(messenger.sink, "nothing was rebuilt, decided or sent")

    oldest = min(now.timestamp(), time.time()) - lookback.total_seconds()
    payloads: list[dict[str, Any]] = []
    read: set[str] = set()
    unread: list[str] = []
    for channel in policy_channels(definitions):
        try:
            channel_id = messenger.channel_id(channel)
        except NoticeFailed as exc:
            if not exc.permanent:
                raise
            unread.append(f"{channel} ({exc.reason})")  # no notice can be there either
            continue
        if channel_id not in read:
            read.add(channel_id)
            payloads.extend(messenger.notices(channel_id, oldest, tick))
    incidents, log = rebuild(payloads)
    tick()  # still ours: nobody else wrote meanwhile
    for posted in log:
        store.log(posted)
    for state in incidents.values():
        store.save(state)
    store.mark_state()
    open_ = sum(s.open for s in incidents.values())
    return (
        f"state rebuilt from {messenger.sink}: {len(log)} notices, {len(incidents)} incidents "
        f"({open_} open)" + (f"; not read: {', '.join(unread)}" if unread else "")
    )


def _reconcile_pending(
    store: SlaStore, messenger: Messenger
) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Notices being sent when a run stopped (a crash between send and record, or Slack's
    answer lost): found in the channel, they are recorded now with the incident state they lead
    to; not found, they are decided and sent again. Returns the keys found, and per group the
    key that could not be checked (Slack unreadable: the marker stays, the group's notices
    wait) with why."""
    found: list[str] = []
    unchecked: dict[str, tuple[str, str]] = {}
    states = store.incidents()
    for notice, since in store.pending():
        if store.logged(notice.key) is not None:
            store.clear_pending(notice.key)
            continue
        posted, why = _find_interrupted(store, messenger, notice, since, notice.at)
        if why is not None:
            unchecked.setdefault(notice.group, (notice.key, why))
            continue
        if posted is not None:
            states[notice.group] = record(states.get(notice.group), notice, posted)
            store.save(states[notice.group])
            found.append(notice.key)
        store.clear_pending(notice.key)
    return found, unchecked


def _find_interrupted(
    store: SlaStore, messenger: Messenger, notice: Notice, since: float, sent_at: datetime
) -> tuple[PostedNotice | None, str | None]:
    """A notice whose send was interrupted (pending since `since`), looked for in its channel:
    the post found, recorded in the notice log as sent at `sent_at`, or None (not there: send
    it); or why it could not be checked (Slack unreadable within PENDING_WAIT_S: the marker
    stays, the notice waits)."""
    oldest = (since or time.time() - 86400) - 300  # since 0: a marker from before it was kept
    try:
        ts = messenger.find(notice.channel, notice.key, notice.thread_ts, oldest)
    except NoticeFailed as exc:
        if not exc.permanent and time.time() - since < PENDING_WAIT_S:
            return None, str(exc)
        ts = None
    if ts is None:
        return None, None
    posted = PostedNotice(
        key=notice.key,
        channel=messenger.channel_id(notice.channel),
        ts=ts,
        sent_at=sent_at,
        sink=messenger.sink,
        note="found in the channel after an interrupted send",
    )
    store.log(posted)
    return posted, None


def _send(
    notice: Notice,
    messenger: Messenger,
    run_url: str,
    state: IncidentState | None,
) -> tuple[str, str, str]:
    """Post (or update) `notice`; returns the channel, ts and a note (what went wrong after
    the post went out: it is not sent again)."""
    minutes = int((notice.at - notice.started_at).total_seconds() // 60)
    text = notice_text(notice, minutes)
    blocks = notice_blocks(notice, run_url)
    meta = notice_metadata(notice)
    if notice.kind == "update":
        if notice.update_ts:
            messenger.update(notice.channel, notice.update_ts, text, blocks)
        return notice.channel, notice.update_ts or "", ""
    channel, ts = messenger.post(
        notice.channel,
        text,
        blocks,
        meta,
        thread_ts=notice.thread_ts,
        broadcast=notice.kind in ("escalate", "repeat", "join"),
    )
    if notice.kind == "resolved" and notice.update_ts:
        try:
            messenger.update(notice.channel, notice.update_ts, text, blocks)
        except NoticeFailed as exc:  # the reply went out: never a failed (re-sent) notice
            return channel, ts, f"the first message not updated to RESOLVED: {redact(str(exc))}"
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
    return channel, ts, ""


def _email_fallback(
    notice: Notice, email: EmailSink | None, recipients: list[str], sender: str, why: str
) -> str:
    """Email `notice` to `recipients` because Slack failed (`why`); raises ConnectionFailed
    naming both failures when there is no fallback or the email could not be sent."""
    from tasks.mail import build_message, send_email

    if email is None or not recipients:
        raise ConnectionFailed(f"{why}; no email fallback configured")
    minutes = int((notice.at - notice.started_at).total_seconds() // 60)
    lines = [notice_text(notice, minutes, slack=False), "", f"Slack failed: {why}", ""]
    lines += [*unreached_lines(notice, slack=False), ""] if notice.unreached else []
    for a in notice.alerts:
        lines.append(f"- {a.key} [{a.severity}]: {a.reason} (runbook {a.runbook or 'n/a'})")
    message = build_message(
        sender=sender,
        to=recipients,
        subject=f"[perfops] {notice_text(notice, minutes, slack=False)}"[:200],
        text="\n".join(lines),
    )
    try:
        result = send_email.fn(email, message)
    except (smtplib.SMTPException, OSError) as exc:
        raise ConnectionFailed(
            f"{why}; the email fallback to {', '.join(recipients)} failed too: "
            f"{redact(str(exc)) or type(exc).__name__}"
        ) from exc
    if not result.accepted:  # the server refused every recipient: nobody got it
        refused = "; ".join(f"{a} ({why})" for a, why in result.refused.items())
        raise ConnectionFailed(
            f"{why}; the email fallback to {', '.join(recipients)} failed too: refused: "
            f"{redact(refused)}"
        )
    return f"emailed {', '.join(result.accepted)} via {result.sink}"


def _row(notice: Notice, names: dict[str, str]) -> dict[str, Any]:
    """What every `Delivered` of `notice` says; the channel as the policy names it (`names`:
    id -> name) and its id."""
    return {
        "key": notice.key,
        "incident": notice.incident,
        "group": notice.group,
        "kind": notice.kind,
        "level": notice.level,
        "channel": names.get(notice.channel, notice.channel),
        "channel_id": notice.channel if notice.channel in names else "",
        "alerts": notice.alerts,
    }


def _rebuild_state(
    store: SlaStore,
    messenger: Messenger,
    definitions: SlaDefinitions,
    now: datetime,
    lookback: timedelta,
    held: HeldLock,
) -> tuple[str, bool]:
    """Rebuild the state from Slack when Redis has none. Returns (what happened, whether to
    decide now). Slack briefly unreadable: nothing is decided (an open incident would fire
    again as new), for at most `PENDING_WAIT_S`; a permanent failure (no scope, bad token):
    go on with what Redis holds, the email fallback still notifies."""
    if store.has_state():
        return "", True
    try:
        return recover(store, messenger, definitions, now, lookback, held), True
    except NoticeFailed as exc:
        marker = store.key("rebuild-failing-since")
        store.client.set(marker, time.time(), nx=True, ex=NOTICE_TTL_S)
        since: Any = store.client.get(marker)
        waiting = not exc.permanent and time.time() - float(since or 0) < PENDING_WAIT_S
        if waiting:
            return (
                f"state could not be rebuilt from {messenger.sink} ({exc}): nothing decided, "
                "the next run tries again",
                False,
            )
        return f"state could not be rebuilt from {messenger.sink}: {exc}", True


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
    unknown: Collection[str] = (),
) -> DeliveryReport:
    """Decide and deliver the notices due at `now`, exactly once each (see the module doc).
    `unknown`: the alerts that could not be evaluated at `now` (an open incident keeps them)."""
    delivered: list[Delivered] = []
    with store.locked(lock_wait_s) as held:
        newer = store.decided_at()
        if newer is not None and now < newer:  # a newer evaluation decided while this one waited
            return DeliveryReport(
                delivered=[],
                suppressed=[],
                stale=(
                    f"nothing decided: an evaluation at {newer:%Y-%m-%d %H:%M:%S} UTC already "
                    f"decided the notices, and this one (at {now:%Y-%m-%d %H:%M:%S} UTC) is "
                    "older: its alerts would undo newer state (fire again an incident since "
                    "resolved); a replay of a past minute is --no-notify"
                ),
            )
        channel_ids = messenger.resolve(policy_channels(definitions), cache=store)
        names = {cid: name for name, cid in channel_ids.items()}
        recovered, decide_now = _rebuild_state(
            store, messenger, definitions, now, recovery_lookback, held
        )
        if not decide_now:
            return DeliveryReport(delivered=[], suppressed=[], recovered=recovered, deferred=True)
        found, unchecked = _reconcile_pending(store, messenger)
        # the rebuild or the read-backs outlived the lock?
        held.renew_reading(messenger.sink, "nothing was decided or sent")
        for key in found:
            recovered += f"{'; ' if recovered else ''}notice {key} found sent, recorded"
        states = store.incidents()
        plan = decide(now, alerts, states, definitions, channel_ids, unknown)
        store.mark_decided(now)
        for old, moved in plan.moved.items():  # its policy is gone: the incident moved group
            store.move(old, moved)
            states.pop(old, None)
            states[moved.group] = moved
        for state in plan.states.values():
            store.save(state)
        lost = False
        unresolved: dict[str, Notice] = {}  # group -> a resolved reply not delivered
        for notice in plan.notices:
            notice = as_recorded(notice, states.get(notice.group))
            state = continuing(states.get(notice.group), notice)
            base = _row(notice, names)
            if lost or not held.renew():  # expired: another run may be deciding; send no more
                lost = True
                delivered.append(
                    Delivered(
                        **base,
                        sink="skipped",
                        outcome="failed",
                        note=f"not sent: {held.lost}; the next run decides it again",
                    )
                )
                continue
            logged = store.logged(notice.key)
            if logged is not None:  # sent by an earlier (retried or crashed) run
                states[notice.group] = record(state, notice, logged)
                store.save(states[notice.group])
                delivered.append(
                    Delivered(**base, sink=logged.sink, ts=logged.ts, outcome="already sent")
                )
                continue
            if notice.group in unchecked:  # maybe sent, Slack unreadable: never a second copy
                # The group's other notices wait too: a first message whose run crashed before
                # recording it leaves no incident in Redis, so this run decided a new one
                # (another key, the same alerts)
                key, why = unchecked[notice.group]
                why = (
                    f"maybe sent, not confirmed ({why}); checked next run"
                    if key == notice.key
                    else f"waits: {key} of this group maybe sent, not confirmed ({why}); "
                    "checked next run"
                )
                delivered.append(Delivered(**base, sink="skipped", outcome="deferred", note=why))
                continue
            store.set_pending(notice)
            note = ""
            try:
                channel, ts, note = _send(notice, messenger, run_url, state)
                sink, outcome = messenger.sink, "sent"
            except NoticeFailed as exc:
                if notice.kind == "update":
                    store.clear_pending(notice.key)
                    delivered.append(
                        Delivered(**base, sink="skipped", outcome="failed", note=str(exc))
                    )
                    continue
                # the incident's policy as decided (`fit_policy`: one still defined)
                policy = definitions.find_policy(notice.state_after.policy)
                recipients = policy.email_fallback if policy is not None else []
                try:
                    note = _email_fallback(notice, email, recipients, email_from, str(exc))
                except ConnectionFailed as unsent:  # not sent at all: say so, go on with the rest
                    if exc.permanent:  # Slack did not take it: nothing to look for next run
                        store.clear_pending(notice.key)
                    # else the marker stays: a post Slack stored but could not confirm is found
                    # (and recorded) by the next run rather than sent twice
                    why = redact(str(unsent))
                    if notice.kind in ESCALATING and not held.renew():
                        lost = True  # another run may hold it: record nothing, send no more
                        why += f"; {held.lost}: not recorded, the next run decides it again"
                    elif notice.kind in ESCALATING:
                        # The level is due all the same: the incident goes on to it (the next
                        # level at its delay from now) and this notice is tried again.
                        states[notice.group] = record_unreached(state, notice, why, base["channel"])
                        store.save(states[notice.group])
                        why += (
                            f"; level {notice.level} not reached since "
                            f"{notice.due_at:%Y-%m-%d %H:%M} UTC, the escalation went on without "
                            "it; tried again each run"
                            if notice.due_at is not None
                            else f"; the incident went on to level {notice.level} all the same "
                            "(the next level at its delay); this notice is tried again each run"
                        )
                    elif notice.kind == "resolved":  # another thread's reply may close it
                        unresolved.setdefault(notice.group, notice)
                        why += "; the incident stays open until this thread is told (next run)"
                    delivered.append(Delivered(**base, sink="skipped", outcome="failed", note=why))
                    continue
                note = f"{exc}; {note}"
                channel, ts, sink, outcome = notice.channel, "", "email", "email fallback"
            if notice.unreached:
                levels = ", ".join(f"level {u.level} ({u.channel})" for u in notice.unreached)
                note = f"{note + '; ' if note else ''}said {levels} could not be reached"
            posted = PostedNotice(
                key=notice.key, channel=channel, ts=ts, sent_at=now, sink=sink, note=redact(note)
            )
            store.log(posted)  # a fact whoever holds the lock: never sent again
            if not held.renew():  # the send outlived the lock: record it, send nothing more
                lost = True
                note = (
                    f"{note + '; ' if note else ''}{held.lost} while it was sent: recorded "
                    "over the newer state (an acknowledgement there is kept)"
                )
            states[notice.group] = record(state, notice, posted)
            store.save(states[notice.group])
            store.clear_pending(notice.key)
            delivered.append(Delivered(**base, sink=sink, ts=ts, outcome=outcome, note=note))
        for group, notice in unresolved.items():  # open again: the next run tells that thread
            reopened = record_unresolved(states.get(group), notice)
            if reopened is not None and not lost and held.renew():
                states[group] = reopened
                store.save(reopened)
        store.client.delete(store.key("rebuild-failing-since"))
        return DeliveryReport(
            delivered=delivered,
            suppressed=plan.suppressed,
            recovered=recovered,
            incidents_open=sum(s.open for s in states.values()),
            warnings=plan.warnings,
            lock_lost=f"{held.lost}: the rest of this run was not sent or recorded" if lost else "",
        )


class Acknowledged(BaseModel):
    """What `perfops sla ack` did: the incident after it, whether it was new, and the replies
    that say so in the incident's threads (those Slack refused, with why)."""

    state: IncidentState
    newly_acked: bool
    replies: list[Delivered] = Field(default_factory=list)

    @property
    def failed_replies(self) -> list[Delivered]:
        return [r for r in self.replies if r.outcome == "failed"]


def acknowledge_alert_in_store(
    store: SlaStore,
    messenger: Messenger,
    definitions: SlaDefinitions,
    alert_or_group: str,
    by: str,
    now: datetime,
) -> Acknowledged:
    """Acknowledge the open incident holding `alert_or_group` (an alert key, a group or an
    incident id): escalation and reminders stop, and a reply says so in each of its threads.
    A reply that failed is posted by the next acknowledgement of the same incident."""
    with store.locked() as held:
        channel_ids = messenger.resolve(policy_channels(definitions), cache=store)
        names = {cid: name for name, cid in channel_ids.items()}
        if not store.has_state():
            recover(store, messenger, definitions, now, held=held)  # Slack unreadable: an error
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
        newly = state.acked_at is None
        replies: list[Delivered] = []
        for notice in acknowledgement(state, by, now):
            acked_by = notice.state_after.acked_by or by
            acked_at = notice.state_after.acked_at or now
            base = _row(notice, names)
            logged = store.logged(notice.key)
            if logged is not None:
                replies.append(
                    Delivered(**base, sink=logged.sink, ts=logged.ts, outcome="already sent")
                )
                continue
            since = store.pending_since(notice.key)
            if since is not None:  # a reply being posted when an earlier ack stopped
                found, why = _find_interrupted(store, messenger, notice, since, acked_at)
                if why is not None:
                    why = f"maybe posted, not confirmed ({why}); run the acknowledgement again"
                    replies.append(Delivered(**base, sink="skipped", outcome="failed", note=why))
                    continue
                if found is not None:
                    store.clear_pending(notice.key)
                    replies.append(
                        Delivered(**base, sink=messenger.sink, ts=found.ts, outcome="already sent")
                    )
                    continue
            text = (
                f":eyes: Acknowledged by *{slack_escape(acked_by)}* at "
                f"{acked_at:%Y-%m-%d %H:%M} UTC: "
                f"escalation stopped at level {notice.level}, no more reminders."
            )
            store.set_pending(notice)
            try:
                channel, ts = messenger.post(
                    notice.channel,
                    f"ACKNOWLEDGED by {acked_by}: escalation stopped",
                    [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
                    notice_metadata(notice),
                    thread_ts=notice.thread_ts,
                )
            except NoticeFailed as exc:  # the ack itself holds (Redis); the reply is retried
                if exc.permanent:  # Slack did not take it: nothing to look for
                    store.clear_pending(notice.key)
                replies.append(Delivered(**base, sink="skipped", outcome="failed", note=str(exc)))
                continue
            store.log(
                PostedNotice(
                    key=notice.key, channel=channel, ts=ts, sent_at=now, sink=messenger.sink
                )
            )
            store.clear_pending(notice.key)
            replies.append(Delivered(**base, sink=messenger.sink, ts=ts, outcome="sent"))
        if not held.renew():  # Slack was slow: re-read the incident, never save a stale one
            fresh = store.incidents().get(state.group)
            if fresh is None or fresh.incident != state.incident or not fresh.open:
                raise LookupError(
                    f"incident {state.incident} resolved while its acknowledgement was being "
                    "posted (the SLA lock expired meanwhile): nothing to acknowledge"
                )
            state = fresh
        acked = acknowledge(state, by, now)
        store.save(acked)
        return Acknowledged(state=acked, newly_acked=newly, replies=replies)
