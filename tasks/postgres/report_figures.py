"""One fleet target's database as the weekly report's Fleet section shows it: size, cache hit
ratio, the tables' change counters and the slow statements of pg_stat_statements, read in one
read-only session (docs/fleet.md, "The weekly report over a fleet").

pg_stat_database and pg_stat_statements count since their last reset, not per week: the report
says so. A database without pg_stat_statements gets its other figures and a note saying why it
has no statement figures.
"""

from __future__ import annotations

from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks import PostgresTarget
from decisions.report_fleet import DatabaseFigures
from perfops.errors import MissingPrerequisite
from perfops.redaction import mask_statement_secrets
from tasks.postgres.server import connect
from tasks.postgres.statements import ensure_pg_stat_statements
from tasks.postgres.tables import fetch_table_stats
from tasks.transient_errors import RETRY_DEFAULTS

STATEMENT_TIMEOUT_MS = 30_000

_DATABASE = """
select current_setting('server_version') as version, pg_is_in_recovery() as replica,
       pg_database_size(current_database()) as size_bytes,
       coalesce(d.blks_hit, 0) as blks_hit, coalesce(d.blks_read, 0) as blks_read,
       d.stats_reset
from pg_stat_database d where d.datname = current_database()
"""
_STATEMENTS = """
with s as (
    select query, calls, mean_exec_time from pg_stat_statements
    where dbid = (select oid from pg_database where datname = current_database())
      and toplevel and calls > 0
)
select (select count(*) from s where mean_exec_time >= %(slow_ms)s) as slow,
       slowest.query, slowest.calls, slowest.mean_exec_time as mean_ms
from (select 1) one
left join lateral (select * from s order by mean_exec_time desc limit 1) slowest on true
"""


def _statements(conn: psycopg.Connection[Any], slow_ms: float) -> dict[str, Any]:
    try:
        ensure_pg_stat_statements(conn)
    except MissingPrerequisite as exc:
        return {"statements_note": str(exc)}
    row = conn.execute(_STATEMENTS, {"slow_ms": slow_ms}).fetchone()
    assert row is not None
    return {
        "slow_statements": int(row["slow"]),
        "slowest_mean_ms": row["mean_ms"],
        "slowest_calls": row["calls"],
        "slowest_query": mask_statement_secrets(row["query"] or ""),
    }


@task(name="fetch_database_figures", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def fetch_database_figures(target: PostgresTarget, slow_ms: float) -> DatabaseFigures:
    """Size, cache hit counters, slow statements (mean >= `slow_ms`) and every table's change
    counters of `target`'s database; read-only, nothing locked."""
    with connect(target, statement_timeout_ms=STATEMENT_TIMEOUT_MS) as conn:
        conn.read_only = True
        head = conn.execute(_DATABASE).fetchone()
        assert head is not None
        statements = _statements(conn, slow_ms)
    tables = fetch_table_stats.fn(target)
    role = "replica" if head["replica"] else "primary"
    return DatabaseFigures(
        server=f"PostgreSQL {head['version']}, {role}",
        size_bytes=head["size_bytes"],
        blks_hit=head["blks_hit"],
        blks_read=head["blks_read"],
        stats_reset=head["stats_reset"],
        tables=tables,
        **statements,
    )
