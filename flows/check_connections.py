"""check_connections: touch every configured system and report what is real, reachable and
missing, with the command that fixes each gap. The first flow; CLI `perfops doctor`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect_email import EmailServerCredentials

from blocks import PrometheusSource, SlackEscalationTarget
from blocks.resolve import (
    CsvTrace,
    Resolved,
    resolve_archive,
    resolve_email,
    resolve_metrics,
    resolve_postgres,
    resolve_redis,
    resolve_slack,
)
from decisions.diagnosis import PostgresInfo, SystemCheck, check_from, postgres_findings
from perfops.errors import PerfopsError
from perfops.redaction import install_log_redaction
from tasks.cache import fetch_redis_info
from tasks.mail import fetch_smtp_greeting
from tasks.outbox import check_outbox_writable
from tasks.postgres.server import fetch_postgres_info
from tasks.prometheus.client import fetch_build_info
from tasks.records import emit, end_run, publish_table
from tasks.slack.client import fetch_identity
from tasks.storage import probe_archive
from tasks.traces import read_trace

ARTIFACT_KEY = "perfops-connections"

UNREACHABLE_FIXES = {
    "postgres": "check the DSN (PERFOPS_DSN or the block) and that the server accepts connections",
    "metrics": "check PERFOPS_PROMETHEUS_URL or the block, or unset it to use the CSV trace",
    "redis": "start Redis (redis-server) or fix PERFOPS_REDIS_URL / the block",
    "archive": "check the bucket, endpoint and AWS credentials (or unset PERFOPS_S3_BUCKET)",
    "slack": "check the bot token and API URL (or unset PERFOPS_SLACK_TOKEN to write files)",
    "email": "check the SMTP host, port and credentials (or unset PERFOPS_SMTP_HOST)",
}
# The embedded defaults fail for their own reasons: a CSV trace, folders under PERFOPS_OUT_DIR.
_FOLDER_FIX = "make PERFOPS_OUT_DIR (default out) a folder perfops can write to"
EMBEDDED_FIXES = {
    "metrics": "point PERFOPS_TRACE_CSV at a timestamp,value CSV file, or set "
    "PERFOPS_PROMETHEUS_URL",
    "archive": f"{_FOLDER_FIX}, or set PERFOPS_S3_BUCKET",
    "slack": f"{_FOLDER_FIX}, or set PERFOPS_SLACK_TOKEN",
    "email": f"{_FOLDER_FIX}, or set PERFOPS_SMTP_HOST",
}


class ConnectionsUnreachable(PerfopsError):
    """Raised at the end of a check when a system could not be reached; carries the report."""

    def __init__(self, checks: list[SystemCheck]):
        self.checks = checks
        down = [c.system for c in checks if c.status == "unreachable"]
        super().__init__(f"unreachable: {', '.join(down)} (see the perfops-connections artifact)")


def _finish(
    resolved: Resolved[Any],
    future: PrefectFuture[Any],
    summarize: Callable[[Any], dict[str, Any]],
) -> SystemCheck:
    """Turn a probe's outcome into a report row (`summarize` gives version/detail/findings)."""
    outcome = _outcome(future)
    if isinstance(outcome, BaseException):
        return check_from(
            resolved.system,
            resolved.origin,
            resolved.description,
            error=outcome,
            fix_when_unreachable=(
                EMBEDDED_FIXES.get(resolved.system, UNREACHABLE_FIXES[resolved.system])
                if resolved.is_default
                else UNREACHABLE_FIXES[resolved.system]
            ),
        )
    return check_from(resolved.system, resolved.origin, resolved.description, **summarize(outcome))


def _outcome(future: PrefectFuture[Any]) -> Any:
    """The task's return value, or the exception it failed with."""
    future.wait()
    return future.state.result(raise_on_failure=False)


def _summarize_postgres(info: PostgresInfo) -> dict[str, Any]:
    exts = ", ".join(
        f"{n} {e.installed_version or '(not installed)'}"
        for n, e in sorted(info.extensions.items())
    )
    return {
        "version": info.server_version,
        "detail": f"{info.database} as {info.current_user}; {exts}",
        "findings": postgres_findings(info),
    }


@flow(
    name="check_connections",
    description="Touch every configured system (PostgreSQL, metrics, Redis, archive, Slack, "
    "email) and report real or default, reachable or not, version, and what is missing.",
    log_prints=False,
)
def check_connections(
    postgres_block: str | None = None,
    prometheus_block: str | None = None,
    redis_block: str | None = None,
    s3_block: str | None = None,
    slack_block: str | None = None,
    email_block: str | None = None,
    fail_when_unreachable: bool = True,
) -> list[SystemCheck]:
    """Check every system; block names override the `PERFOPS_*` settings and embedded defaults.

    Args:
        postgres_block: name of a `perfops-postgres-target` block.
        prometheus_block: name of a `perfops-prometheus-source` block.
        redis_block: name of a `perfops-redis-target` block.
        s3_block: name of a prefect-aws `s3-bucket` block.
        slack_block: name of a `perfops-slack-escalation-target` block.
        email_block: name of a prefect-email `email-server-credentials` block.
        fail_when_unreachable: end the run Failed when a system cannot be reached.
    """
    install_log_redaction()
    logger = get_run_logger()
    pg = resolve_postgres(postgres_block)
    metrics = resolve_metrics(prometheus_block)
    cache = resolve_redis(redis_block)
    archive = resolve_archive(s3_block)
    slack = resolve_slack(slack_block)
    mail = resolve_email(email_block)

    pg_f = fetch_postgres_info.with_options(retries=0).submit(pg.value)
    metrics_f: PrefectFuture[Any]
    if isinstance(metrics.value, PrometheusSource):
        metrics_f = fetch_build_info.submit(metrics.value)
    else:
        metrics_f = read_trace.submit(metrics.value)
    redis_f = fetch_redis_info.submit(cache.value)
    archive_f = probe_archive.submit(archive.value)
    slack_f = (
        fetch_identity.submit(slack.value)
        if isinstance(slack.value, SlackEscalationTarget)
        else check_outbox_writable.submit(slack.value)
    )
    mail_f = (
        fetch_smtp_greeting.submit(mail.value)
        if isinstance(mail.value, EmailServerCredentials)
        else check_outbox_writable.submit(mail.value)
    )

    def metrics_summary(result: Any) -> dict[str, Any]:
        if isinstance(metrics.value, CsvTrace):
            return {
                "version": "csv",
                "detail": f"{len(result)} points, "
                f"{result.index.min():%Y-%m-%d} .. {result.index.max():%Y-%m-%d}",
            }
        return {
            "version": result.get("version", ""),
            "detail": f"revision {result.get('revision', '')}",
        }

    checks = [
        _finish(pg, pg_f, _summarize_postgres),
        _finish(metrics, metrics_f, metrics_summary),
        _finish(
            cache,
            redis_f,
            lambda i: {
                "version": i.get("redis_version") or "",
                "detail": f"used memory {i.get('used_memory_human')}",
            },
        ),
    ]
    checks.append(
        _finish(
            archive,
            archive_f,
            lambda done: {
                "version": "s3" if archive.origin != "embedded default" else "folder",
                "detail": f"{done}, SHA-256 verified",
            },
        )
    )
    checks.append(
        _finish(
            slack,
            slack_f,
            lambda r: {
                "version": "slack" if isinstance(r, dict) else "file",
                "detail": f"team {r.get('team')}, bot {r.get('user')}"
                if isinstance(r, dict)
                else f"notices written to {r}",
            },
        )
    )
    checks.append(
        _finish(
            mail,
            mail_f,
            lambda r: {
                "version": "smtp" if isinstance(mail.value, EmailServerCredentials) else "file",
                "detail": r
                if isinstance(mail.value, EmailServerCredentials)
                else f"emails written to {r}",
            },
        )
    )

    rows = [
        {
            "system": c.system,
            "result": c.status,
            "detail": c.detail,
            "fix": c.fixes,
            "origin": c.origin,
            "target": c.target,
            "version": c.version,
        }
        for c in checks
    ]
    publish_table(ARTIFACT_KEY, rows, "perfops connection check: one row per system")
    statuses = {c.system: c.status for c in checks}
    emit(
        "perfops.connections.checked",
        "perfops.connections",
        {"statuses": statuses, "origins": {c.system: c.origin for c in checks}},
    )
    for c in checks:
        logger.info("%-8s %-11s %-16s %s %s", c.system, c.status, c.origin, c.target, c.fixes)
    if fail_when_unreachable and any(c.status == "unreachable" for c in checks):
        unreachable = ConnectionsUnreachable(checks)
        return end_run(checks, str(unreachable), error=unreachable)
    return checks
