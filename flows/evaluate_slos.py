"""evaluate_slos: read the SLIs from Prometheus at one instant, compute burn rates, alert rules
and the degradation rule, and escalate the alerts to Slack exactly once per incident and level.
CLI `perfops sla evaluate`. Scheduled every minute; `at` replays any past minute.

Records: the table artifact `perfops-sla` (every SLO and rule with its budget and burn rates,
then every notice sent), `perfops.sla.evaluated` once per run, and `perfops.sla.breached` /
`.escalated` / `.resolved` per alert of each notice sent. Degradation alerts are emitted on the
resource `perfops.sla.degradation.<rule>`, which the deployment trigger of
`scale_predictively` watches (prefect.yaml). A run that could not reach Prometheus for any SLO
or rule ends Failed after its records are written (every item "no data"), and so does one
that could not take the SLA lock (another run held it) or read Redis: evaluated and recorded,
nothing sent. A notice that could not be sent at all ends the run Failed naming it; when it is
a level's (Slack refused it, no email fallback), the escalation goes on past that level all the
same and the notice is tried again each run (docs/sla.md, "A level Slack cannot reach").
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from blocks import PrometheusSource
from blocks.resolve import (
    check_block_names,
    resolve_email,
    resolve_metrics,
    resolve_redis,
    resolve_slack,
)
from decisions.burn_rate import Evaluation, evaluate
from decisions.sla_report import DeliveryReport, SlaRunReport, artifact_rows, sla_events
from decisions.slo_definitions import SlaDefinitions, load_definitions
from perfops.errors import ConfigurationError, ConnectionFailed, LockBusy
from perfops.redaction import install_log_redaction
from perfops.settings import PROJECT_DIR, get_settings
from tasks import sla_delivery
from tasks.prometheus.slis import fetch_sli_measurements
from tasks.records import emit, end_run, publish_table
from tasks.sla_delivery import SlaStore, deliver
from tasks.slack.threads import messenger_for

ARTIFACT_KEY = "perfops-sla"
DEFAULT_DEFINITIONS = str(PROJECT_DIR / "deployments" / "slos.yaml")


@task(name="load_sla_definitions")
def load_sla_definitions(path: str) -> SlaDefinitions:
    """Read and validate the SLA definitions file (line and field named on an error)."""
    return load_definitions(Path(path))


@task(name="read_no_data_clocks", cache_policy=NO_CACHE)
def read_no_data_clocks(store: SlaStore) -> dict[str, datetime]:
    """Since when each item has had no data (Redis)."""
    return store.no_data_since()


@task(name="escalate_alerts", cache_policy=NO_CACHE)
def escalate_alerts(
    store: SlaStore,
    definitions: SlaDefinitions,
    evaluation: Evaluation,
    slack_block: str | None,
    email_block: str | None,
    run_url: str,
) -> DeliveryReport:
    """Under the SLA lock in Redis: decide the notices due and send each exactly once."""
    slack = resolve_slack(slack_block)
    email = resolve_email(email_block)
    try:
        report = deliver(
            store,
            messenger_for(slack.value),
            definitions,
            evaluation.alerts,
            evaluation.at,
            email=email.value,
            email_from=get_settings().email_from,
            run_url=run_url,
            lock_wait_s=sla_delivery.LOCK_WAIT_S,
            unknown=evaluation.unknown,
        )
    except LockBusy as exc:  # evaluated all the same: the run records it, then ends Failed
        return DeliveryReport(delivered=[], suppressed=[], busy=str(exc))
    if not report.stale:  # an older evaluation's clocks would undo the newer run's
        store.save_no_data_since(evaluation.no_data_since)
    return report


@flow(
    name="evaluate_slos",
    description="Evaluate SLOs (multi-window multi-burn-rate), alert rules and the degradation "
    "rule at one instant from Prometheus; notify and escalate in Slack exactly once per incident "
    "and level (email when Slack fails); resolved notices in the same thread.",
    log_prints=False,
)
def evaluate_slos(
    definitions_path: str = DEFAULT_DEFINITIONS,
    at: datetime | None = None,
    notify: bool = True,
    prometheus_block: str | None = None,
    redis_block: str | None = None,
    slack_block: str | None = None,
    email_block: str | None = None,
    allow_partial: bool = False,
) -> SlaRunReport:
    """Evaluate every SLO and rule once and escalate what fires.

    Args:
        definitions_path: the SLA definitions YAML (default deployments/slos.yaml).
        at: evaluation time (default now); a past minute replays it.
        notify: send notices (false: evaluate and record only, nothing sent, state unchanged).
        prometheus_block: `perfops-prometheus-source` block (default PERFOPS_PROMETHEUS_URL).
        redis_block: `perfops-redis-target` block for incident state and the notice log.
        slack_block: `perfops-slack-escalation-target` block (default: files in out/slack).
        email_block: prefect-email `EmailServerCredentials` block, the fallback when Slack fails.
        allow_partial: end Completed when some notices could not be sent and others were (the
            artifact and state message still say which); default False: Failed.
    """
    install_log_redaction()
    check_block_names(
        prometheus_block=prometheus_block,
        redis_block=redis_block,
        slack_block=slack_block,
        email_block=email_block,
    )
    logger = get_run_logger()
    started = time.monotonic()
    now = (at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    definitions = load_sla_definitions(definitions_path)
    metrics = resolve_metrics(prometheus_block)
    if not isinstance(metrics.value, PrometheusSource):
        raise ConfigurationError(
            "evaluate_slos reads Prometheus: set PERFOPS_PROMETHEUS_URL or a "
            "perfops-prometheus-source block (the CSV trace holds no request/error series)"
        )
    redis = resolve_redis(redis_block)
    store = SlaStore(redis.value)
    measurements = fetch_sli_measurements(metrics.value, definitions, now)
    redis_failed = ""
    try:
        clocks = read_no_data_clocks(store)
    except ConnectionFailed as exc:  # evaluated and recorded all the same; nothing decided
        clocks, redis_failed = {}, str(exc)
        logger.error("%s", redis_failed)
    evaluation = evaluate(
        definitions,
        measurements.slos,
        measurements.rules,
        measurements.degradations,
        now,
        clocks,
    )
    run_id = flow_run.get_id()
    base_url = definitions.settings.prefect_ui_url.rstrip("/")
    run_url = f"{base_url}/runs/flow-run/{run_id}" if base_url and run_id else ""
    delivery = None
    if notify and redis_failed:
        delivery = DeliveryReport(
            delivered=[],
            suppressed=[],
            busy=f"nothing decided or sent: {redis_failed} (the incidents, the notice log and "
            "the lock are there); the next run catches up",
        )
    elif notify:
        delivery = escalate_alerts(
            store, definitions, evaluation, slack_block, email_block, run_url
        )
    report = SlaRunReport(
        at=now,
        statuses=evaluation.statuses,
        alerts=evaluation.alerts,
        delivery=delivery,
        queries=measurements.queries,
        seconds=round(time.monotonic() - started, 3),
        metrics=metrics.description,
        slack=resolve_slack(slack_block).description,
    )
    if delivery and delivery.stale:
        logger.warning("%s", delivery.stale)
        report.notes.append(delivery.stale)
    if redis_failed and not notify:
        report.notes.append(f"no-data clocks not read: {redis_failed}")
    if delivery and delivery.recovered:
        logger.warning("%s", delivery.recovered)
        report.notes.append(delivery.recovered)
    for warning in delivery.warnings if delivery else []:
        logger.warning("%s", warning)
        report.notes.append(warning)
    logger.info("%s in %.2f s", report.summary, report.seconds)
    publish_table(ARTIFACT_KEY, artifact_rows(report), report.description)
    for event, resource, payload, labels in sla_events(report):
        emit(event, resource, payload, **labels)
    return end_run(report, report.failure, partial=report.partial, allow_partial=allow_partial)
