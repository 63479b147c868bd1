"""`perfops demo`: the main job end to end on a laptop-sized copy of the platform.

1. Find the demo database: `PERFOPS_DEMO_DSN`, else the local PostgreSQL on 127.0.0.1:5432,
   else a private cluster under `out/pgdata` on port 55432.
2. Create `perfops_demo` with the extensions perfops uses and load the workload (once).
3. Run every perfops flow once through Prefect against the demo database and the embedded
   defaults (CSV trace, folder archive, Slack and email as files under `out/`).
4. Summarise what each flow found and did, and where its artifacts and files are.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from demo.caches import run_collect_cache_stats, run_invalidate_cache, run_warm_cache
from demo.embedded_postgres import ensure_private_cluster
from demo.load import run_load_demo
from demo.outcome import FlowOutcome, Progress
from demo.workload import WorkloadResult, load_workload
from perfops.errors import ConnectionFailed, report_of
from perfops.redaction import redact
from perfops.settings import DEFAULT_DEMO_DSN

DEMO_DATABASE = "perfops_demo"
DEMO_EXTENSIONS = ("pg_stat_statements", "hypopg", "pg_partman")
# Connection settings the demo clears so every system but PostgreSQL uses its embedded default.
CONFIGURED_VARIABLES = (
    "PERFOPS_POSTGRES_BLOCK",
    "PERFOPS_PROMETHEUS_BLOCK",
    "PERFOPS_PROMETHEUS_URL",
    "PERFOPS_REDIS_BLOCK",
    "PERFOPS_S3_BLOCK",
    "PERFOPS_S3_BUCKET",
    "PERFOPS_SLACK_BLOCK",
    "PERFOPS_SLACK_TOKEN",
    "PERFOPS_EMAIL_BLOCK",
    "PERFOPS_SMTP_HOST",
)

FILE_DEFAULTS = ("metrics", "archive", "slack", "email")  # embedded defaults that are files


@dataclass
class DemoSummary:
    database: str
    database_origin: str
    workload: WorkloadResult
    extensions: dict[str, str]
    flows: list[FlowOutcome]
    prefect: str
    out_dir: str


def _reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def find_server(out_dir: Path, demo_dsn: str | None) -> tuple[str, str]:
    """(maintenance DSN, where it came from) for the server that hosts the demo database."""
    if demo_dsn:
        admin = make_conninfo(demo_dsn, dbname="postgres")
        if not _reachable(admin):
            raise ConnectionFailed(f"the demo server {redact(demo_dsn)} is not reachable")
        return admin, "PERFOPS_DEMO_DSN"
    local = make_conninfo(DEFAULT_DEMO_DSN, dbname="postgres")
    if _reachable(local):
        return local, "local PostgreSQL on 127.0.0.1:5432"
    return ensure_private_cluster(out_dir / "pgdata"), "private cluster under out/pgdata"


def prepare_database(admin_dsn: str) -> tuple[str, dict[str, str]]:
    """Create the demo database and extensions if missing; return its DSN and extension state."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", (DEMO_DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(DEMO_DATABASE)))
    dsn = make_conninfo(admin_dsn, dbname=DEMO_DATABASE)
    state: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        available = {
            r[0]
            for r in conn.execute(
                "select name from pg_available_extensions where name = any(%s)",
                (list(DEMO_EXTENSIONS),),
            )
        }
        for ext in DEMO_EXTENSIONS:
            if ext not in available:
                state[ext] = "not available (run scripts/setup.sh)"
                continue
            if ext == "pg_partman":
                conn.execute("create schema if not exists partman")
                conn.execute("create extension if not exists pg_partman schema partman")
            else:
                conn.execute(
                    sql.SQL("create extension if not exists {}").format(sql.Identifier(ext))
                )
            row = conn.execute(
                "select extversion from pg_extension where extname = %s", (ext,)
            ).fetchone()
            state[ext] = row[0] if row else "missing"
    return dsn, state


def run_demo(out_dir: Path, demo_dsn: str | None, progress: Progress) -> DemoSummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    progress("finding the demo database", 0, 1)
    admin, origin = find_server(out_dir, demo_dsn)
    dsn, extensions = prepare_database(admin)
    with psycopg.connect(dsn) as conn:
        workload = load_workload(conn, progress)

    # Flows run against the demo database and embedded defaults, never a configured service.
    for name in CONFIGURED_VARIABLES:
        os.environ.pop(name, None)
    os.environ["PERFOPS_DSN"] = dsn
    os.environ["PERFOPS_OUT_DIR"] = str(out_dir)

    flows = [runner(progress) for runner in FLOW_RUNNERS]
    params = conninfo_to_dict(dsn)
    where = f"{params.get('user')}@{params.get('host')}:{params.get('port', 5432)}/{DEMO_DATABASE}"
    api = os.environ.get("PREFECT_API_URL")
    prefect = (
        f"Prefect server {api}"
        if api
        else f"ephemeral Prefect (SQLite in {os.environ.get('PREFECT_HOME', '~/.prefect')})"
    )
    return DemoSummary(
        database=where,
        database_origin=origin,
        workload=workload,
        extensions=extensions,
        flows=flows,
        prefect=prefect,
        out_dir=str(out_dir.resolve()),
    )


def _run_check_connections(progress: Progress) -> FlowOutcome:
    from flows.check_connections import ARTIFACT_KEY, ConnectionsUnreachable, check_connections

    progress("running check_connections", 0, 1)
    state = check_connections(fail_when_unreachable=False, return_state=True)
    result: Any = report_of(state.result(raise_on_failure=False))
    checks = result.checks if isinstance(result, ConnectionsUnreachable) else result
    if isinstance(checks, BaseException) or checks is None:
        return FlowOutcome(
            "check_connections", state.name or "Failed", redact(str(checks)), ARTIFACT_KEY
        )
    parts = [f"{c.system} {c.status} ({c.origin})" for c in checks]
    files = [
        c.target for c in checks if c.origin == "embedded default" and c.system in FILE_DEFAULTS
    ]
    return FlowOutcome("check_connections", state.name or "", "; ".join(parts), ARTIFACT_KEY, files)


def _run_suggest_indexes(progress: Progress) -> FlowOutcome:
    from decisions.indexing import IndexAdvisorSettings
    from flows.suggest_indexes import ARTIFACT_KEY, suggest_indexes

    progress("running suggest_indexes", 0, 1)
    state = suggest_indexes(settings=IndexAdvisorSettings(min_calls=5), return_state=True)
    report: Any = report_of(state.result(raise_on_failure=False))
    if isinstance(report, BaseException):
        return FlowOutcome(
            "suggest_indexes", state.name or "Failed", redact(str(report)), ARTIFACT_KEY
        )
    found = (
        "; ".join(
            f"{s.table}({', '.join(s.columns)}) saves ~{s.est_time_saved_ms:,.0f} ms over "
            f"{s.calls} calls"
            for s in report.suggestions
        )
        or "nothing worth an index"
    )
    return FlowOutcome(
        "suggest_indexes",
        state.name or "",
        f"{len(report.suggestions)} suggested ({found}); {len(report.rejected)} candidates "
        f"rejected with reasons; dry run, nothing built (perfops indexes suggest --apply)",
        ARTIFACT_KEY,
    )


def _run_find_slow_queries(progress: Progress) -> FlowOutcome:
    from decisions.slow_queries import SlowQuerySettings, format_ms, format_share
    from flows.find_slow_queries import ARTIFACT_KEY, find_slow_queries

    progress("running find_slow_queries", 0, 1)
    state = find_slow_queries(settings=SlowQuerySettings(explain=True), return_state=True)
    result: Any = report_of(state.result(raise_on_failure=False))
    if isinstance(result, BaseException) or result is None:
        return FlowOutcome(
            "find_slow_queries", state.name or "Failed", redact(str(result)), ARTIFACT_KEY
        )
    found = (
        f"{len(result.statements)} of {result.statements_seen} statements listed, "
        f"{result.over_threshold} with a mean over {format_ms(result.settings.threshold_ms)} ms"
    )
    if result.statements:
        top = result.statements[0]
        planned = sum(1 for s in result.statements if s.plan and s.plan.status == "planned")
        found += (
            f"; #1 takes {format_share(top.share_of_db_time)} of DB time at "
            f"{format_ms(top.mean_ms)} ms mean ({' '.join(top.query.split())[:60]}); "
            f"{planned} generic plans"
        )
    return FlowOutcome("find_slow_queries", state.name or "", found, ARTIFACT_KEY)


def _run_check_index_health(progress: Progress) -> FlowOutcome:
    from decisions.index_health import format_bytes
    from flows.check_index_health import ARTIFACT_KEY, check_index_health

    progress("running check_index_health", 0, 1)
    state = check_index_health(return_state=True)  # report only: the demo drops nothing
    result: Any = report_of(state.result(raise_on_failure=False))
    if isinstance(result, BaseException) or result is None:
        return FlowOutcome(
            "check_index_health", state.name or "Failed", redact(str(result)), ARTIFACT_KEY
        )
    kinds: dict[str, int] = {}
    for f in result.findings:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    found = (
        f"{result.indexes_checked} indexes checked, {len(result.findings)} "
        f"finding{'' if len(result.findings) == 1 else 's'} wasting "
        f"{format_bytes(result.wasted_bytes)}"
        + (" (" + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")" if kinds else "")
    )
    if result.findings:
        first = result.findings[0]
        found += f"; e.g. {first.name}: {first.reason.split('; ')[0]}"
    found += "; report only, nothing dropped"
    return FlowOutcome("check_index_health", state.name or "", found, ARTIFACT_KEY)


def _run_refresh_stale_statistics(progress: Progress) -> FlowOutcome:
    from flows.refresh_stale_statistics import ARTIFACT_KEY, refresh_stale_statistics

    progress("running refresh_stale_statistics", 0, 1)
    state = refresh_stale_statistics(return_state=True)
    report: Any = report_of(state.result(raise_on_failure=False))
    if isinstance(report, BaseException) or report is None:
        return FlowOutcome(
            "refresh_stale_statistics", state.name or "Failed", redact(str(report)), ARTIFACT_KEY
        )
    found = report.summary
    if report.failed_tables:
        found += f"; failed: {', '.join(report.failed_tables[:5])}"
    return FlowOutcome("refresh_stale_statistics", state.name or "", found, ARTIFACT_KEY)


def _run_generate_weekly_report(progress: Progress) -> FlowOutcome:
    """The last complete week's report from a private Prometheus of synthetic API metrics (the
    demo has no real traffic), written to out/report/<week>/index.html and mailed to the outbox."""
    from datetime import UTC, datetime

    from decisions.reporting import last_complete_week
    from demo.sample_metrics import demo_prometheus
    from flows.generate_weekly_report import ARTIFACT_KEY, generate_weekly_report

    progress("running generate_weekly_report (back-filling a demo Prometheus)", 0, 1)
    out_dir = Path(os.environ.get("PERFOPS_OUT_DIR", "out"))
    week = last_complete_week(datetime.now(UTC))
    try:
        with demo_prometheus(out_dir / "prometheus", week) as url:
            os.environ["PERFOPS_PROMETHEUS_URL"] = url
            try:
                state = generate_weekly_report(
                    week=week.label,
                    recipients=["platform-team@example.test"],
                    out_dir=str(out_dir / "report"),
                    return_state=True,
                )
            finally:
                os.environ.pop("PERFOPS_PROMETHEUS_URL", None)
    except Exception as exc:  # noqa: BLE001 - the demo reports it and goes on
        return FlowOutcome("generate_weekly_report", "Failed", redact(str(exc)), ARTIFACT_KEY)
    result: Any = report_of(state.result(raise_on_failure=False))
    if isinstance(result, BaseException) or result is None:
        return FlowOutcome(
            "generate_weekly_report", state.name or "Failed", redact(str(result)), ARTIFACT_KEY
        )
    found = (
        f"{result.headline} (synthetic metrics from a demo Prometheus); 1st thing to look at: "
        f"{result.things[0]}; {result.delivery}"
    )
    if result.archive_action == "keep":  # a second demo run of the same week
        found += f"; {result.archive_note}"
    files = [result.folder] if result.folder else []
    return FlowOutcome("generate_weekly_report", state.name or "", found, ARTIFACT_KEY, files)


def _demo_audit_logs(dsn: str) -> None:
    """A small monthly-partitioned `audit_logs` (15 months, 100 rows each, some rows waiting in
    the default partition), made once, for the partition rotation's dry run."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("select to_regclass('public.audit_logs')").fetchone() != (None,):
            return
        conn.execute(
            "create table public.audit_logs (id bigint not null, created_at timestamptz not null,"
            " actor text, payload jsonb) partition by range (created_at)"
        )
        conn.execute("create index on public.audit_logs (created_at)")
        for back in range(14, -1, -1):
            lower, upper = conn.execute(
                "select date_trunc('month', now() at time zone 'UTC') at time zone 'UTC'"
                " - make_interval(months => %s), date_trunc('month', now() at time zone 'UTC')"
                " at time zone 'UTC' - make_interval(months => %s)",
                (back, back - 1),
            ).fetchone() or (None, None)
            conn.execute(
                sql.SQL(
                    "create table {} partition of public.audit_logs for values from ({}) to ({})"
                ).format(
                    sql.Identifier("public", f"audit_logs_p{lower:%Y_%m}"),
                    sql.Literal(lower),
                    sql.Literal(upper),
                )
            )
        conn.execute(
            "create table public.audit_logs_default partition of public.audit_logs default"
        )
        conn.execute(
            "insert into public.audit_logs select g, date_trunc('month', now())"
            " - make_interval(months => g % 15) + make_interval(hours => g), 'user' || g % 7,"
            " jsonb_build_object('n', g) from generate_series(1, 1500) g"
        )
        conn.execute(
            "insert into public.audit_logs select 10000 + g, date_trunc('month', now())"
            " + interval '2 months' + make_interval(hours => g), 'early', '{}'"
            " from generate_series(1, 12) g"
        )


def _run_rotate_partitions(progress: Progress) -> FlowOutcome:
    from decisions.partitioning import PartitionPolicy
    from flows.rotate_partitions import ARTIFACT_KEY, rotate_partitions

    progress("running rotate_partitions (dry run)", 0, 1)
    out_dir = Path(os.environ.get("PERFOPS_OUT_DIR", "out"))
    try:
        _demo_audit_logs(os.environ["PERFOPS_DSN"])
    except psycopg.Error as exc:
        return FlowOutcome("rotate_partitions", "Failed", redact(str(exc)), ARTIFACT_KEY)
    policy = PartitionPolicy(
        table="public.audit_logs",
        interval="month",
        premake=3,
        retention="12 months",
        archive=str((out_dir / "archive").resolve()),
    )
    state = rotate_partitions(policies=[policy], return_state=True)
    report: Any = report_of(state.result(raise_on_failure=False))
    if isinstance(report, BaseException) or report is None:
        return FlowOutcome(
            "rotate_partitions", state.name or "Failed", redact(str(report)), ARTIFACT_KEY
        )
    found = report.summary
    if report.tables and report.tables[0].plan:
        plan = report.tables[0].plan
        found += (
            f" (create {', '.join(p.name for p in plan.create) or 'nothing'}; expire "
            f"{', '.join(e.name for e in plan.expire) or 'nothing'}; "
            f"{report.tables[0].default_rows} rows waiting in the default partition); "
            "dry run, nothing changed (perfops partitions rotate --apply)"
        )
    return FlowOutcome("rotate_partitions", state.name or "", found, ARTIFACT_KEY)


def _run_evaluate_slos(progress: Progress) -> FlowOutcome:
    from demo.sla import run_sla_demo

    return run_sla_demo(progress)


def _run_scale_predictively(progress: Progress) -> FlowOutcome:
    from flows.scale_predictively import ARTIFACT_KEY, scale_predictively

    progress("running scale_predictively (dry run on the CSV trace)", 0, 1)
    state = scale_predictively(group="demo", current_capacity=10, return_state=True)
    run: Any = report_of(state.result(raise_on_failure=False))
    if isinstance(run, BaseException) or run is None:
        return FlowOutcome(
            "scale_predictively", state.name or "Failed", redact(str(run)), ARTIFACT_KEY
        )
    found = f"{run.summary}; dry run, nothing changed" + (
        f"; chart {run.chart}" if run.chart else ""
    )
    return FlowOutcome("scale_predictively", state.name or "", found, ARTIFACT_KEY)


FLOW_RUNNERS: list[Callable[[Progress], FlowOutcome]] = [
    _run_check_connections,
    _run_refresh_stale_statistics,
    _run_find_slow_queries,
    _run_suggest_indexes,
    _run_check_index_health,
    _run_rotate_partitions,
    _run_evaluate_slos,
    _run_scale_predictively,
    run_load_demo,
    run_warm_cache,
    run_invalidate_cache,
    run_collect_cache_stats,
    # last: the report reads what the flows above recorded
    _run_generate_weekly_report,
]
