"""The SLA part of `perfops demo`: a local Prometheus back-filled with eight days of API
metrics whose last hour holds an outage (50% errors for 20 minutes), then evaluate_slos at
three minutes of it: before (all ok), 5 minutes in (level 1 notified) and 20 minutes after the
first notice (escalated to level 2). Without Slack configured, the notices are JSON lines in
`out/slack/messages.jsonl`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from blocks.resolve import resolve_redis
from demo.embedded_prometheus import PrometheusServer
from demo.outcome import FlowOutcome, Progress
from demo.sla_series import Incident, api_series
from perfops.redaction import redact
from perfops.settings import get_settings

DEMO_BUCKETS = [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0]


def run_sla_demo(progress: Progress) -> FlowOutcome:
    from flows.evaluate_slos import ARTIFACT_KEY, evaluate_slos

    out = get_settings().out_dir.resolve()
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    outage = Incident(
        "outage", end - timedelta(minutes=50), end - timedelta(minutes=30), error_ratio=0.5
    )
    progress("evaluate_slos: back-filling a local Prometheus", 0, 1)
    series = api_series(end - timedelta(days=8), end, [outage], buckets=DEMO_BUCKETS)
    redis = resolve_redis()
    if redis.is_default:  # the local Redis holds only demo state: start the story afresh
        with redis.value.get_client() as client:
            for key in client.scan_iter(f"{redis.value.key_prefix}sla:*", count=1000):
                client.delete(key)
    previous = os.environ.get("PERFOPS_PROMETHEUS_URL")
    lines: list[str] = []
    try:
        with PrometheusServer(out / "sla-prometheus", series, startup_timeout=60) as prom:
            os.environ["PERFOPS_PROMETHEUS_URL"] = prom.url
            state: Any = None
            for label, at in (
                ("before the outage", outage.start - timedelta(minutes=5)),
                ("5 min into it", outage.start + timedelta(minutes=5)),
                ("20 min later", outage.start + timedelta(minutes=25)),
            ):
                progress(f"running evaluate_slos ({label})", 0, 1)
                state = evaluate_slos(at=at, return_state=True)
                report: Any = state.result(raise_on_failure=False)
                if isinstance(report, BaseException):
                    return FlowOutcome(
                        "evaluate_slos", state.name or "Failed", redact(str(report)), ARTIFACT_KEY
                    )
                sent = [
                    f"{d.kind} level {d.level}"
                    for d in (report.delivery.delivered if report.delivery else [])
                ]
                lines.append(
                    f"{label}: {len(report.alerts)} alerts"
                    + (f" ({', '.join(a.key for a in report.alerts[:3])})" if report.alerts else "")
                    + (f", notices: {', '.join(sent)}" if sent else "")
                )
    finally:
        if previous is None:
            os.environ.pop("PERFOPS_PROMETHEUS_URL", None)
        else:
            os.environ["PERFOPS_PROMETHEUS_URL"] = previous
    files = [str(out / "slack" / "messages.jsonl")]
    return FlowOutcome("evaluate_slos", state.name or "", "; ".join(lines), ARTIFACT_KEY, files)
