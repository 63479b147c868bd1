"""The outside replay of issue 14, reproduced: the seed's SLA (deployments/slos.yaml) over eight
days of real Prometheus data holding an outage, a blip, a slow burn and a latency regression,
evaluated at replayed minutes as `perfops sla evaluate --at` does (read Prometheus at the
minute, evaluate, escalate), against the strict Slack stand-in. Every Slack post meets a fault
in turn (a 500 after Slack stored it, a 503 before, an answer held past the client's timeout,
a 429 storm); Redis loses its data in the middle of the outage; the slow burn is acknowledged
at the first replayed minute 5 minutes or more after its first notice.

Holds: every incident in its own thread(s), replies and the resolved notice in them; the
acknowledgement in the thread and no escalation after it; no new incident after the Redis
restart and the original resolved in its thread; zero duplicate messages; no notice lost (none
emailed, failed or deferred); the blip silent. Prints the Slack requests per run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from blocks import PrometheusSource, RedisTarget, SlackEscalationTarget
from blocks.resolve import FileOutbox
from decisions.burn_rate import evaluate
from decisions.slo_definitions import SlaDefinitions, load_definitions
from demo.sla_series import Incident, api_series
from tasks.prometheus.slis import fetch_measurements
from tasks.sla_delivery import Delivered, SlaStore, acknowledge_alert_in_store, deliver
from tasks.slack.threads import SlackMessenger
from tests.command import ROOT
from tests.servers import PrometheusServer, SlackStandIn
from tests.servers.slack import DEFAULT_TOKEN

END = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
SLOW = Incident(
    "slow burn", END - timedelta(days=6), END - timedelta(days=6, hours=-8), error_ratio=0.008
)
OUTAGE = Incident(
    "outage", END - timedelta(days=4), END - timedelta(days=4, minutes=-20), error_ratio=0.5
)
BLIP = Incident("blip", END - timedelta(days=2), END - timedelta(days=2, minutes=-2), 0.02)
LATENCY = Incident(
    "latency regression", END - timedelta(hours=6), END - timedelta(hours=4), latency_factor=1.5
)
INCIDENTS = [SLOW, OUTAGE, BLIP, LATENCY]
RESTART_AFTER = timedelta(minutes=30)  # Redis loses its data 30 min into the outage
ACK_AFTER = timedelta(minutes=5)  # the slow burn acknowledged this long after its first notice


@pytest.fixture(scope="module")
def replay_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    series = api_series(END - timedelta(days=8), END, INCIDENTS, buckets=[0.1, 0.2, 0.3, 0.5, 1])
    with PrometheusServer(tmp_path_factory.mktemp("replay-prometheus"), series) as server:
        yield server


def schedule(incident: Incident) -> Iterator[datetime]:
    """Replayed minutes: every minute for the first 25, then every 15 (as an outside replay
    samples), up to 12 hours after the incident's end."""
    at = incident.start - timedelta(minutes=5)
    while at <= incident.end + timedelta(hours=12):
        yield at
        at += timedelta(minutes=1 if at < incident.start + timedelta(minutes=20) else 15)


@dataclass
class Replay:
    store: SlaStore
    target: SlackEscalationTarget
    slack: SlackStandIn
    source: PrometheusSource
    d: SlaDefinitions
    email: FileOutbox
    delivered: list[tuple[datetime, Delivered]] = field(default_factory=list)
    runs: int = 0
    recovered: list[str] = field(default_factory=list)
    no_data: dict[str, datetime] = field(default_factory=dict)
    faults: int = 0

    def inject(self) -> None:
        """The next post meets the next fault, once the previous one was served."""
        if self.slack.faults_pending:
            return
        kind = self.faults % 4
        self.faults += 1
        post = "chat.postMessage"
        if kind == 0:
            self.slack.fail_next(500, method=post, after_handling=True)
        elif kind == 1:
            self.slack.fail_next(503, method=post)
        elif kind == 2:  # stored at once, answered after the client's 1 s timeout
            self.slack.delay_next(1.3, method=post)
        else:
            self.slack.fail_next(429, count=2, retry_after=0, method=post)

    def evaluate(self, at: datetime) -> None:
        self.inject()
        m = fetch_measurements(self.source, self.d, at)
        ev = evaluate(self.d, m.slos, m.rules, m.degradations, at, self.no_data)
        self.no_data = ev.no_data_since
        report = deliver(
            self.store, SlackMessenger(self.target), self.d, ev.alerts, at, email=self.email
        )
        self.runs += 1
        if report.recovered:
            self.recovered.append(report.recovered)
        self.delivered += [(at, d) for d in report.delivered]

    def open_incidents(self) -> int:
        return sum(s.open for s in self.store.incidents().values())


def test_replay_threads_ack_restart_no_duplicates_nothing_lost(
    replay_prometheus: PrometheusServer,
    redis_target: RedisTarget,
    slack: SlackStandIn,
    tmp_path: Path,
) -> None:
    d = load_definitions(ROOT / "deployments" / "slos.yaml")
    target = SlackEscalationTarget(
        bot_token=SecretStr(DEFAULT_TOKEN),
        api_base_url=slack.base_url,
        timeout_s=1,
        max_retries=3,
    )
    replay = Replay(
        SlaStore(redis_target),
        target,
        slack,
        PrometheusSource(url=replay_prometheus.url),
        d,
        FileOutbox(directory=tmp_path),
    )
    acked: dict[str, datetime] = {}
    restarted_at: datetime | None = None
    windows: dict[str, tuple[datetime, datetime]] = {}
    for inc in INCIDENTS:
        first = last = inc.start
        for at in schedule(inc):
            replay.evaluate(at)
            last = at
            if inc is SLOW and not acked:
                fires = [(t, n) for t, n in replay.delivered if n.kind == "fire"]
                if fires and at >= fires[0][0] + ACK_AFTER:
                    done = acknowledge_alert_in_store(
                        replay.store,
                        SlackMessenger(target),
                        d,
                        fires[0][1].alerts[0].key,
                        "alice",
                        at,
                    )
                    assert [r.outcome for r in done.replies] == ["sent"]
                    acked[fires[0][1].incident] = at
            if at >= inc.end + timedelta(minutes=10) and replay.open_incidents() == 0:
                break
            if inc is OUTAGE and restarted_at is None and at >= inc.start + RESTART_AFTER:
                replay.store.client.flushdb()  # Redis without persistence restarted
                restarted_at = at
        windows[inc.name] = (first - timedelta(minutes=5), last)

    messages = slack.messages
    meta = [m["metadata"]["event_payload"] for m in messages]
    keys = [p["key"] for p in meta]
    outcomes = Counter(n.outcome for _, n in replay.delivered)
    requests = Counter(r.method for r in slack.requests)
    by_incident: dict[str, list[dict[str, Any]]] = {}
    for m, p in zip(messages, meta, strict=True):
        by_incident.setdefault(p["incident"], []).append({**m, "payload": p})
    print(  # the numbers the report quotes (pytest -s)
        f"\nreplay: {replay.runs} evaluate runs, {len(slack.requests)} Slack requests "
        f"({len(slack.requests) / replay.runs:.2f} a run; {dict(requests)}), "
        f"{replay.faults} faults injected, {len(messages)} messages, "
        f"{len(keys) - len(set(keys))} duplicates, {len(by_incident)} incidents, "
        f"outcomes {dict(outcomes)}; {dict(Counter(replay.recovered))}"
    )

    # Zero duplicates; no notice lost (none emailed, failed or deferred).
    assert len(keys) == len(set(keys))
    assert set(outcomes) <= {"sent", "already sent"}, outcomes
    assert list(tmp_path.glob("*.eml")) == []
    # The blip is silent; every other incident notified and resolved.
    lo, hi = windows["blip"]
    assert [p for p in meta if lo <= datetime.fromisoformat(p["at"]) <= hi] == []
    for name in ("slow burn", "outage", "latency regression"):
        lo, hi = windows[name]
        started = {
            p["incident"] for p in meta if lo <= datetime.fromisoformat(p["started_at"]) <= hi
        }
        assert started, f"{name}: no notice"
        for incident in started:
            kinds = [m["payload"]["kind"] for m in by_incident[incident]]
            assert kinds[0] == "fire" and "resolved" in kinds, (name, kinds)
    # Threads: one root per channel an incident reached; every reply in its own incident's.
    for incident, items in by_incident.items():
        roots = {m["channel"]: m["ts"] for m in items if m["thread_ts"] is None}
        assert len(roots) == len([m for m in items if m["thread_ts"] is None]), incident
        for m in items:
            if m["thread_ts"] is not None:
                assert m["thread_ts"] == roots[m["channel"]], (incident, m["payload"]["key"])
        resolved = [m for m in items if m["payload"]["kind"] == "resolved"]
        assert {m["channel"] for m in resolved} == set(roots)
        root = next(m for m in items if m["payload"]["kind"] == "fire")
        assert "RESOLVED" in root["text"]  # the first message updated in place
    # The acknowledgement: in the thread, and nothing escalated after it.
    [(incident, at)] = acked.items()
    ack = [m for m in by_incident[incident] if m["payload"]["kind"] == "ack"]
    assert len(ack) == 1 and ack[0]["thread_ts"] is not None
    after = [m for m in by_incident[incident] if m["payload"]["kind"] in ("escalate", "repeat")]
    assert all(datetime.fromisoformat(m["payload"]["at"]) <= at for m in after)  # not after
    # The Redis restart: state rebuilt, no new incident for the outage, resolved in its thread.
    assert restarted_at is not None
    assert any("state rebuilt from slack" in r and "1 open" in r for r in replay.recovered)
    lo, hi = windows["outage"]
    outage = {p["incident"] for p in meta if lo <= datetime.fromisoformat(p["at"]) <= hi}
    groups = Counter(i.split("@")[0] for i in outage)
    assert all(n == 1 for n in groups.values()), groups  # one incident per group
    assert any(
        datetime.fromisoformat(m["payload"]["at"]) > restarted_at
        for i in outage
        for m in by_incident[i]
        if m["payload"]["kind"] == "resolved"
    )
