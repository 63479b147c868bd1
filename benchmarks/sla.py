"""SLA evaluation and escalation, replayed minute by minute on two weeks of real metrics.

    python -m benchmarks.sla [--keep]

Sets up its own data: a real Prometheus (Debian's, back-filled with promtool) holding 14 days
of API request/error counters and a latency histogram, one sample a minute, with four known
incidents (demo/sla_series.py):

- fast burn: 50% errors for 20 minutes (500x the 99.9% budget rate);
- slow burn: 0.8% errors for 8 hours (8x);
- latency regression: every request 25% slower for 2 hours (p95 ~180 ms -> ~228 ms);
- blip: 2% errors for 2 minutes (too short to matter: 0.08% over the hour).

It then replays evaluate_slos' work (read Prometheus at the minute, evaluate, escalate) for
every minute of each incident window, from 15 minutes before it until its alerts resolve
(at most 14 hours after), with deployments/slos.yaml's SLOs, rules, degradation rule and
escalation policy (team lead -> +15 min engineering manager -> +30 min CTO). Notices go to the
Slack Web API stand-in (tests/servers/slack.py, as strict as Slack: channel ids for reads and
updates) through slack-sdk; state to Redis (PERFOPS_BENCH_REDIS_URL, default
redis://127.0.0.1:6379/0, keys under a private prefix that is deleted at the end). Two
evaluators run every minute at once, each retrying its delivery once. Whenever the previous
fault was served, the stand-in answers the next Slack request with a 500 (minute a multiple
of 7), or a storm of five 429s (Retry-After 0; multiple of 5); and the next post with a 500
after storing it (multiple of 11) or an answer held past the client's timeout (multiple of
13). Redis loses its data (the benchmark's keys deleted) 30 minutes into the fast burn. The
slow burn's first incident is acknowledged 5 minutes after its first notice.

Goals (exit 1 when one is missed): every incident notified and the blip not; the page within
5 minutes of the burn rate crossing 14.4x (exact crossing minute computed from the generated
counts); every escalation exactly at its configured delay; a resolved notice for every
incident, in its own thread(s); the acknowledgement in its thread; no new incident after the
Redis restart; zero duplicate messages in the stand-in and no notice lost (every notice sent
to Slack: none emailed, failed or deferred); one evaluation of 50 SLOs under 2 s (anchor: the
same 50 SLOs read the naive way, one query per window and part, in series). Prints the Slack
requests per evaluation.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks._support import print_table
from blocks import PrometheusSource, RedisTarget, SlackEscalationTarget
from decisions.burn_rate import evaluate
from decisions.slo_definitions import SlaDefinitions, load_definitions
from demo.embedded_prometheus import PrometheusServer
from demo.sla_series import (
    Incident,
    api_series,
    error_ratio_at,
    minutes,
    rps_at,
)
from tasks.prometheus.slis import fetch_measurements, slo_query
from tasks.sla_delivery import SlaStore, acknowledge_alert_in_store, deliver
from tasks.slack.threads import SlackMessenger
from tests.servers.slack import DEFAULT_TOKEN, SlackStandIn

ROOT = Path(__file__).resolve().parent.parent
END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
START = END - timedelta(days=14)
FAST = Incident(
    "fast burn",
    END - timedelta(days=2, hours=3),
    END - timedelta(days=2, hours=3) + timedelta(minutes=20),
    error_ratio=0.5,
)
SLOW = Incident(
    "slow burn",
    END - timedelta(days=5),
    END - timedelta(days=5) + timedelta(hours=8),
    error_ratio=0.008,
)
LATENCY = Incident(
    "latency regression",
    END - timedelta(days=3, hours=10),
    END - timedelta(days=3, hours=8),
    latency_factor=1.25,
)
BLIP = Incident(
    "blip",
    END - timedelta(days=1, hours=5),
    END - timedelta(days=1, hours=5) + timedelta(minutes=2),
    error_ratio=0.02,
)
INCIDENTS = [FAST, SLOW, LATENCY, BLIP]
MAX_AFTER = timedelta(hours=14)
RESTART_AFTER = timedelta(minutes=30)  # Redis loses its data this long into the fast burn
TIMEOUT_S = 2
HELD_S = 2.5


def burn_crossing(incident: Incident, factor: float = 14.4, budget: float = 0.001) -> datetime:
    """The first minute the 1-hour burn rate exceeds `factor`, from the generated counts."""
    for t in minutes(incident.start, incident.end + timedelta(hours=1)):
        total = bad = 0.0
        for m in range(60):
            ts = (t - timedelta(minutes=m + 1)).timestamp()
            n = rps_at(ts) * 60
            total += n
            bad += n * error_ratio_at(ts, INCIDENTS)
        if bad / total / budget > factor:
            return t
    raise AssertionError(f"{incident.name} never burns faster than {factor}x over 1h")


def fifty_slos(base: SlaDefinitions) -> SlaDefinitions:
    objectives = [0.99, 0.995, 0.999, 0.9995, 0.9999]
    windows = ["1d", "7d", "14d", "30d", "30d"]
    slos = []
    for i in range(50):
        slo = base.slos[i % len(base.slos)]
        slos.append(
            slo.model_copy(
                update={
                    "name": f"slo-{i:02d}",
                    "objective": objectives[i % 5],
                    "window": load_window(windows[(i // 5) % 5]),
                }
            )
        )
    return base.model_copy(update={"slos": slos, "alert_rules": [], "degradation": []})


def load_window(text: str) -> timedelta:
    from decisions.slo_definitions import parse_duration

    return parse_duration(text)


def naive_fetch(source: PrometheusSource, d: SlaDefinitions, at: datetime) -> int:
    """The anchor: one instant query per SLO, window and part, one after the other."""
    from decisions.burn_rate import slo_windows

    client = source.get_client()
    n = 0
    for slo in d.slos:
        assert slo.sli.kind == "ratio"
        for w in slo_windows(slo):
            for expr in (slo.sli.good, slo.sli.total):
                client.custom_query(expr.replace("$window", w), params={"time": at.timestamp()})
                n += 1
    return n


class Replay:
    def __init__(
        self,
        source: PrometheusSource,
        store: SlaStore,
        target: SlackEscalationTarget,
        slack: SlackStandIn,
        d: SlaDefinitions,
    ) -> None:
        self.source, self.store, self.target, self.slack, self.d = source, store, target, slack, d
        self.notices: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.eval_seconds: list[float] = []
        self.errors: list[str] = []
        self.no_data: dict[str, datetime] = {}
        self.acked: set[str] = set()
        self.outcomes: Counter[str] = Counter()
        self.recovered: list[str] = []
        self.deliveries = 0

    def evaluator(self, at: datetime) -> None:
        try:
            t = time.perf_counter()
            m = fetch_measurements(self.source, self.d, at)
            ev = evaluate(self.d, m.slos, m.rules, m.degradations, at, self.no_data)
            with self.lock:
                self.eval_seconds.append(time.perf_counter() - t)
            for _ in range(2):  # the run and its retry
                report = deliver(self.store, SlackMessenger(self.target), self.d, ev.alerts, at)
                with self.lock:
                    self.deliveries += 1
                    if report.recovered:
                        self.recovered.append(report.recovered)
                    for n in report.delivered:
                        self.outcomes[n.outcome] += 1
                        if n.outcome in ("sent", "email fallback"):
                            self.notices.append({"at": at, **n.model_dump()})
        except Exception as exc:  # noqa: BLE001 - reported as a missed goal
            with self.lock:
                self.errors.append(f"{at:%m-%d %H:%M}: {type(exc).__name__}: {exc}")

    def minute(self, at: datetime, request_no: list[int]) -> int:
        # Faults wait for the next Slack requests (minutes without a notice send none): add
        # one only when the previous one was served.
        request_no[0] += 1
        if self.slack.faults_pending == 0:
            post = "chat.postMessage"
            if request_no[0] % 13 == 0:  # stored at once, answered after the timeout
                self.slack.delay_next(HELD_S, method=post)
            elif request_no[0] % 11 == 0:
                self.slack.fail_next(500, method=post, after_handling=True)
            elif request_no[0] % 7 == 0:
                self.slack.fail_next(500)
            elif request_no[0] % 5 == 0:
                self.slack.fail_next(429, count=5, retry_after=0)
        threads = [threading.Thread(target=self.evaluator, args=(at,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(self.store.incidents())

    def open_incidents(self) -> int:
        return sum(s.open for s in self.store.incidents().values())


def thread_check(slack: SlackStandIn) -> list[str]:
    """What is wrong with the threads: an incident with two roots in one channel, a reply
    outside its incident's thread, an incident without a resolved notice in each of its
    threads, an ack outside its thread."""
    errors: list[str] = []
    by_incident: dict[str, list[dict[str, Any]]] = {}
    for m in slack.messages:
        by_incident.setdefault(m["metadata"]["event_payload"]["incident"], []).append(m)
    for incident, items in by_incident.items():
        tops = [m for m in items if m["thread_ts"] is None]
        roots = {m["channel"]: m["ts"] for m in tops}
        if len(roots) != len(tops):
            errors.append(f"{incident}: {len(tops)} roots in {len(roots)} channels")
        for m in items:
            if m["thread_ts"] is not None and m["thread_ts"] != roots.get(m["channel"]):
                errors.append(f"{incident}: {m['metadata']['event_payload']['key']} elsewhere")
        resolved = {
            m["channel"] for m in items if m["metadata"]["event_payload"]["kind"] == "resolved"
        }
        if resolved != set(roots):
            errors.append(f"{incident}: resolved in {len(resolved)} of {len(roots)} threads")
    return errors


def main() -> int:
    faulthandler.register(signal.SIGUSR1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the Prometheus data folder")
    args = parser.parse_args()
    d = load_definitions(ROOT / "deployments" / "slos.yaml")
    work = Path(tempfile.mkdtemp(prefix="perfops-bench-sla-"))
    t0 = time.perf_counter()
    series = api_series(START, END, INCIDENTS)
    redis_target = RedisTarget(
        url=os.environ.get("PERFOPS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        key_prefix=f"perfops-bench-sla-{os.getpid()}:",
    )
    store = SlaStore(redis_target)
    print(
        f"generating 14 days x {len(series)} series and back-filling Prometheus...", file=sys.stderr
    )
    with PrometheusServer(work, series, startup_timeout=60) as prom, SlackStandIn() as slack:
        setup_s = time.perf_counter() - t0
        source = PrometheusSource(url=prom.url)
        target = SlackEscalationTarget(
            bot_token=DEFAULT_TOKEN,
            channels=["#oncall"],
            api_base_url=slack.base_url,
            timeout_s=TIMEOUT_S,
            max_retries=10,
        )
        replay = Replay(source, store, target, slack, d)
        rows = []
        request_no = [0]
        window_of: dict[str, tuple[datetime, datetime]] = {}
        t_replay = time.perf_counter()
        evaluations = 0
        restarted_at: datetime | None = None
        for inc in INCIDENTS:
            first = inc.start - timedelta(minutes=15)
            at = first
            acked = False
            # Each incident replays from its own start, which may be earlier than the last
            # replayed minute: forget it, or these minutes are refused as older (a schedule
            # never goes back in time).
            store.client.delete(store.key("decided-at"))
            while at <= inc.end + MAX_AFTER:
                if inc is FAST and restarted_at is None and at >= inc.start + RESTART_AFTER:
                    for key in store.client.scan_iter(f"{redis_target.key_prefix}*", count=1000):
                        store.client.delete(key)  # a Redis without persistence restarted
                    restarted_at = at
                replay.minute(at, request_no)
                evaluations += 1
                if evaluations % 60 == 0:
                    print(
                        f"  {evaluations} minutes replayed, {time.perf_counter() - t_replay:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                if inc is SLOW and not acked:
                    mine = [n for n in replay.notices if n["kind"] == "fire" and n["at"] >= first]
                    if mine and at >= mine[0]["at"] + timedelta(minutes=5):
                        alert = mine[0]["alerts"][0]["key"]
                        done = acknowledge_alert_in_store(
                            store, SlackMessenger(target), d, alert, "benchmark", at
                        )
                        if [r.outcome for r in done.replies] != ["sent"]:
                            replay.errors.append(f"ack replies: {done.replies}")
                        replay.acked.add(str(mine[0]["incident"]))
                        acked = True
                if at >= inc.end + timedelta(minutes=10) and replay.open_incidents() == 0:
                    break
                at += timedelta(minutes=1)
            window_of[inc.name] = (first, at)
            print(
                f"{inc.name}: replayed {first:%m-%d %H:%M} .. {at:%m-%d %H:%M} "
                f"({time.perf_counter() - t_replay:.0f} s so far)",
                file=sys.stderr,
            )
        replay_s = time.perf_counter() - t_replay

        # Goals per incident.
        notices = replay.notices
        fires = [n for n in notices if n["kind"] in ("fire", "join")]
        missed: list[str] = []
        for inc in INCIDENTS:
            lo, hi = window_of[inc.name]
            mine = [n for n in notices if lo <= n["at"] <= hi]
            first_fire = min((n["at"] for n in mine if n["kind"] == "fire"), default=None)
            incidents = {str(n["incident"]) for n in mine}
            resolved = {str(n["incident"]) for n in mine if n["kind"] == "resolved"}
            delay = "" if first_fire is None else f"{(first_fire - inc.start)}"
            expected = inc is not BLIP
            ok = bool(first_fire) == expected and (not expected or incidents == resolved)
            if not ok:
                missed.append(
                    f"{inc.name}: notified={bool(first_fire)} resolved "
                    f"{len(resolved)}/{len(incidents)}"
                )
            rows.append(
                [
                    inc.name,
                    "yes" if expected else "no",
                    "yes" if first_fire else "no",
                    delay or "-",
                    len(incidents),
                    len(resolved),
                    f"{(hi - lo).total_seconds() / 60:.0f}",
                    "ok" if ok else "MISSED",
                ]
            )
        print_table(
            [
                "incident",
                "should notify",
                "notified",
                "first notice after start",
                "incidents",
                "resolved",
                "minutes replayed",
                "goal",
            ],
            rows,
        )

        # Page within 5 minutes of the 1h burn crossing 14.4x.
        crossing = burn_crossing(FAST)
        pages = [
            n
            for n in fires
            if any(a["key"] == "availability/page-fast" for a in n["alerts"])
            and n["at"] >= FAST.start
        ]
        page_at = min((n["at"] for n in pages), default=None)
        page_delay = (page_at - crossing) if page_at else None
        page_ok = page_delay is not None and page_delay <= timedelta(minutes=5)
        print(
            f"\nfast burn: 1h burn rate crosses 14.4x at {crossing:%H:%M} "
            f"({crossing - FAST.start} after the errors start); page-fast notice at "
            f"{page_at:%H:%M} -> {page_delay} after the crossing"
            if page_at
            else "\nfast burn: NO page-fast notice"
        )

        # Escalation delays, to the minute.
        policy = d.policy("default")
        wrong: list[str] = []
        checked = 0
        by_incident: dict[str, list[dict[str, Any]]] = {}
        for n in notices:
            by_incident.setdefault(str(n["incident"]), []).append(n)
        for incident, items in by_incident.items():
            items.sort(key=lambda n: (n["at"], n["level"]))
            levels = {int(n["level"]): n["at"] for n in items if n["kind"] in ("fire", "escalate")}
            resolved_at = next((n["at"] for n in items if n["kind"] == "resolved"), None)
            for lvl in range(1, len(policy.levels)):
                if lvl not in levels:
                    continue
                due = levels[lvl] + policy.levels[lvl - 1].after
                if incident in replay.acked:
                    if lvl + 1 in levels:
                        wrong.append(f"{incident}: escalated after ack")
                    continue
                if resolved_at is not None and resolved_at <= due:
                    continue
                checked += 1
                if levels.get(lvl + 1) != due:
                    wrong.append(f"{incident}: level {lvl + 1} at {levels.get(lvl + 1)}, due {due}")
        print(
            f"escalations checked against their delays: {checked}, wrong: {len(wrong)}"
            + (f" ({'; '.join(wrong[:3])})" if wrong else "")
        )

        # Duplicates in the stand-in; notices lost.
        keys = [m["metadata"]["event_payload"]["key"] for m in slack.messages if m["metadata"]]
        dupes = sum(c - 1 for c in Counter(keys).values() if c > 1)
        statuses = Counter(r.status for r in slack.requests)
        lost = {k: v for k, v in replay.outcomes.items() if k not in ("sent", "already sent")}
        print(
            f"Slack stand-in: {len(slack.messages)} messages, {dupes} duplicates; notices not "
            f"sent to Slack: {lost or 0}; requests by status {dict(statuses)}; evaluator "
            f"errors: {len(replay.errors)}" + (f" ({replay.errors[0]})" if replay.errors else "")
        )
        per_minute = len(slack.requests) / evaluations
        per_delivery = len(slack.requests) / max(replay.deliveries, 1)
        print(
            f"Slack requests: {len(slack.requests)} for {evaluations} minutes x 2 evaluators x "
            f"2 deliveries ({per_minute:.2f} a minute, {per_delivery:.2f} a delivery); by method "
            f"{dict(Counter(r.method for r in slack.requests))}"
        )

        # Threads: each incident one root per channel it reached, every reply in its own
        # incident's thread, a resolved notice in each; the ack in its thread.
        thread_errors = thread_check(slack)
        rebuilt = [r for r in replay.recovered if "state rebuilt from slack" in r]
        print(
            f"threads: {len({m['metadata']['event_payload']['incident'] for m in slack.messages})}"
            f" incidents, {len(thread_errors)} threading errors"
            + (f" ({'; '.join(thread_errors[:3])})" if thread_errors else "")
            + f"; Redis restarted at {restarted_at:%m-%d %H:%M}: {rebuilt[-1] if rebuilt else '-'}"
        )

        # 50 SLOs in one evaluation vs the naive anchor.
        d50 = fifty_slos(d)
        at = END - timedelta(hours=2)
        ours, naive = [], []
        for _ in range(5):
            t = time.perf_counter()
            m = fetch_measurements(source, d50, at)
            evaluate(d50, m.slos, m.rules, m.degradations, at)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            n_naive = naive_fetch(source, d50, at)
            naive.append(time.perf_counter() - t)
        q_len = len(slo_query(d50.slos[0]))
        print_table(
            ["50 SLOs, one evaluation", "queries", "median s", "max s"],
            [
                [
                    "perfops (one query per SLO, 8 threads)",
                    m.queries,
                    f"{statistics.median(ours):.3f}",
                    f"{max(ours):.3f}",
                ],
                [
                    "anchor: one query per window and part, serial",
                    n_naive,
                    f"{statistics.median(naive):.3f}",
                    f"{max(naive):.3f}",
                ],
            ],
        )
        print(
            f"(query per SLO: {q_len} characters; replay evaluation median "
            f"{statistics.median(replay.eval_seconds) * 1000:.0f} ms for "
            f"{len(d.slos)} SLOs + {len(d.alert_rules)} rules + 1 degradation rule)"
        )

    # Clean up the private keys.
    for key in store.client.scan_iter(f"{redis_target.key_prefix}*", count=1000):
        store.client.delete(key)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    fifty_ok = max(ours) < 2.0
    goals = {
        "incidents notified, blip not, all resolved": not missed,
        "page within 5 min of 14.4x": page_ok,
        "escalations at their delays": not wrong and checked > 0,
        "zero duplicates": dupes == 0 and not replay.errors,
        "no notice lost": not lost,
        "own threads, resolved and acked in them": not thread_errors,
        "state rebuilt after the Redis restart": bool(rebuilt) and "1 open" in rebuilt[-1],
        "50 SLOs < 2 s": fifty_ok,
    }
    failed = [k for k, v in goals.items() if not v]
    print(
        f"sla: {evaluations} minutes replayed x2 evaluators in {replay_s:.0f} s (setup "
        f"{setup_s:.0f} s); {len(INCIDENTS) - 1}/3 incidents notified, blip "
        f"{'silent' if not missed or 'blip' not in str(missed) else 'NOTIFIED'}; page "
        f"{page_delay} after 14.4x; {checked} escalations on time, {len(wrong)} late; "
        f"{dupes} duplicates in {len(slack.messages)} messages, {sum(lost.values())} lost, "
        f"{len(thread_errors)} threading errors; {per_minute:.2f} Slack requests a minute; "
        f"50 SLOs in "
        f"{max(ours):.2f} s (anchor {statistics.median(naive):.2f} s) -> "
        + ("all goals met" if not failed else "MISSED: " + ", ".join(failed))
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
