"""Table statistics in PostgreSQL: read every table's change counters in one catalog query, and
ANALYZE (or VACUUM (ANALYZE)) a batch of tables on a few connections at once.

Each statement names its table through `sql.Identifier`, runs in autocommit with its own
`lock_timeout` and `statement_timeout`, and a table that fails (locked by another session, too
slow, dropped meanwhile, not ours to analyze) becomes a failed row in the result while the batch
goes on. A run holds the advisory lock `stats-refresh` so two runs on the same database never
overlap, and refuses a replica (see `refresh_session`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import copy_context
from datetime import datetime
from typing import Any, Literal

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import errors as pg_errors
from psycopg import sql
from pydantic import BaseModel

from blocks import PostgresTarget
from decisions.staleness import Action, Decision, TableStats
from perfops import progress
from perfops.errors import ConnectionFailed, ReadOnlyServer
from perfops.redaction import one_line, redact
from tasks.postgres.server import advisory_lock, connect, ensure_primary
from tasks.transient_errors import RETRY_DEFAULTS

LOCK_NAME = "stats-refresh"

Status = Literal["ok", "failed", "missing"]


class TableResult(BaseModel):
    """What happened to one table of a batch."""

    relid: int
    schema_name: str
    table_name: str
    action: Action
    status: Status  # ok, failed, or missing (dropped since the catalog was read)
    duration_ms: float
    error: str | None = None  # one line, for people


class AnalyzeMark(BaseModel):
    """A table's analyze counters, read again after the batch to confirm the refresh."""

    relid: int
    analyze_count: int
    last_analyze: datetime | None


@task(name="fetch_table_stats", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def fetch_table_stats(target: PostgresTarget, schemas: list[str] | None = None) -> list[TableStats]:
    """Every user table's change counters and size estimate, in one catalog query.

    Leaves out system schemas, other sessions' temporary tables, TOAST tables and tables that
    belong to an extension (pg_partman's configuration...). Takes no lock on any table (sizes
    come from `relpages`, not `pg_relation_size`; partitions from `pg_inherits`, not
    `pg_partition_tree`, which locks them), so a locked table cannot stall it.

    PostgreSQL keeps no change counter for a partitioned table: its `n_mod_since_analyze` is
    read here from its leaf partitions, as their changes since their own analyze plus how far
    their rows now differ from the rows the table had at its last analyze (`reltuples`: new
    partitions, growth, partitions dropped). Analyze times cannot tell it: ANALYZE of the table
    stamps it before the partitions it recurses into.
    """
    with connect(target, statement_timeout_ms=60_000) as conn:
        conn.read_only = True
        rows = conn.execute(
            """
            select c.oid::bigint as relid, n.nspname as schema_name, c.relname as table_name,
                   c.relkind::text as relkind,
                   pg_stat_get_live_tuples(c.oid) as n_live_tup,
                   pg_stat_get_dead_tuples(c.oid) as n_dead_tup,
                   case when c.relkind = 'p'
                        then coalesce(parts.changes, 0)
                             + abs(coalesce(parts.rows, 0) - greatest(c.reltuples, 0))
                        else pg_stat_get_mod_since_analyze(c.oid)
                   end::bigint as n_mod_since_analyze,
                   array(  -- the partitioned tables it belongs to, nearest first (no lock)
                       with recursive up(oid, depth) as (
                           select i.inhparent, 1 from pg_inherits i where i.inhrelid = c.oid
                           union all
                           select i.inhparent, up.depth + 1
                           from pg_inherits i join up on i.inhrelid = up.oid
                       )
                       select up.oid::bigint from up join pg_class a on a.oid = up.oid
                       where a.relkind = 'p' order by up.depth
                   ) as ancestors,
                   c.reltuples::float8 as reltuples,
                   c.relpages::bigint * current_setting('block_size')::bigint as size_bytes,
                   pg_stat_get_last_analyze_time(c.oid) as last_analyze,
                   pg_stat_get_last_autoanalyze_time(c.oid) as last_autoanalyze,
                   pg_stat_get_analyze_count(c.oid) as analyze_count,
                   pg_stat_get_autoanalyze_count(c.oid) as autoanalyze_count,
                   case  -- only asked when no analyze time is recorded (counters reset?)
                       when pg_stat_get_last_analyze_time(c.oid) is null
                        and pg_stat_get_last_autoanalyze_time(c.oid) is null
                       then exists (
                           select 1 from pg_stats s
                           where s.schemaname = n.nspname and s.tablename = c.relname)
                       else true
                   end as has_statistics
            from pg_class c
            join pg_namespace n on n.oid = c.relnamespace
            left join lateral (  -- a partitioned table: its leaf partitions, without a lock
                with recursive tree(oid) as (
                    select i.inhrelid from pg_inherits i where i.inhparent = c.oid
                    union all
                    select i.inhrelid from pg_inherits i join tree on i.inhparent = tree.oid
                )
                select sum(case when l.reltuples > 0 then l.reltuples
                                else pg_stat_get_live_tuples(l.oid) end) as rows,
                       sum(pg_stat_get_mod_since_analyze(l.oid)) as changes
                from tree join pg_class l on l.oid = tree.oid
                where l.relkind = 'r'
            ) parts on c.relkind = 'p'
            where c.relkind in ('r', 'm', 'p')
              and c.relpersistence <> 't'
              and n.nspname not in ('pg_catalog', 'information_schema')
              and n.nspname !~ '^pg_toast'
              and n.nspname !~ '^pg_temp_'
              and not exists (  -- tables that belong to an extension (pg_partman's config...)
                  select 1 from pg_depend d
                  where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
              and (%(schemas)s::text[] is null or n.nspname = any(%(schemas)s::text[]))
            order by n.nspname, c.relname
            """,
            {"schemas": schemas},
        ).fetchall()
    return [TableStats.model_validate(r) for r in rows]


@contextmanager
def refresh_session(target: PostgresTarget, *, dry_run: bool = False) -> Iterator[None]:
    """For the length of a run: a connection that proves the server answers and, unless
    `dry_run`, checks it is a primary and holds the advisory lock `stats-refresh`. Raises
    `ConnectionFailed`, `ReadOnlyServer` or `LockBusy` with a one-line message before anything is
    read or changed (no retries: an unreachable server fails the run at once)."""
    with connect(target, autocommit=True, statement_timeout_ms=10_000) as conn:
        if dry_run:
            yield
            return
        # This connection sits idle for the whole run, holding the lock: a server or role
        # idle_session_timeout (PostgreSQL 14+) would end it, dropping the lock mid-run and
        # failing the run at its end ("terminating connection due to idle-session timeout").
        if conn.info.server_version >= 140000:
            conn.execute("set idle_session_timeout = 0")
        try:
            ensure_primary(conn, "refresh statistics")
        except ReadOnlyServer as exc:
            raise ReadOnlyServer(
                f"{exc}; a standby cannot ANALYZE: point perfops at the primary"
            ) from None
        with advisory_lock(conn, LOCK_NAME):
            yield


def statement_for(decision: Decision) -> sql.Composed:
    """`ANALYZE schema.table` or `VACUUM (ANALYZE) schema.table`, identifiers quoted."""
    verb = sql.SQL("VACUUM (ANALYZE)" if decision.action == "vacuum-analyze" else "ANALYZE")
    t = decision.table
    return sql.SQL("{} {}.{}").format(
        verb, sql.Identifier(t.schema_name), sql.Identifier(t.table_name)
    )


def _run_one(
    conn: psycopg.Connection[Any],
    decision: Decision,
    warnings: list[str],
    *,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
) -> TableResult:
    """Run one table's statement; every error becomes the row's `error`, never an exception."""
    t = decision.table
    status: Status = "ok"
    error: str | None = None
    warnings.clear()
    start = time.perf_counter()
    try:
        conn.execute(statement_for(decision))
    except pg_errors.LockNotAvailable:
        status, error = (
            "failed",
            f"locked by another session: gave up after lock_timeout {lock_timeout_ms} ms",
        )
    except pg_errors.QueryCanceled as exc:
        if "statement timeout" in str(exc):
            status, error = "failed", f"stopped by statement_timeout {statement_timeout_ms} ms"
        else:  # pg_cancel_backend() from another session
            status, error = "failed", f"canceled: {one_line(exc)}"
    except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName):
        status, error = "missing", "dropped since the catalog was read"
    except psycopg.Error as exc:
        status, error = "failed", f"{type(exc).__name__}: {one_line(exc)}"
    else:
        skipped = [w for w in warnings if w.startswith("skipping")]
        if skipped:  # e.g. 'skipping "t" --- only table or database owner can analyze it'
            status, error = "failed", redact(skipped[0])
    return TableResult(
        relid=t.relid,
        schema_name=t.schema_name,
        table_name=t.table_name,
        action=decision.action,
        status=status,
        duration_ms=round((time.perf_counter() - start) * 1000, 1),
        error=error,
    )


@task(name="analyze_tables", cache_policy=NO_CACHE, retries=0)
def analyze_tables(
    target: PostgresTarget,
    decisions: list[Decision],
    *,
    parallelism: int = 2,
    lock_timeout_ms: int = 2_000,
    statement_timeout_ms: int = 600_000,
) -> list[TableResult]:
    """ANALYZE (or VACUUM (ANALYZE)) a batch of tables, in the given order, on up to
    `parallelism` connections at once. Never raises for one table: each result says ok, failed
    (with a one-line error) or missing. Not retried as a whole (done tables would be redone)."""
    if not decisions:
        return []
    results: list[TableResult | None] = [None] * len(decisions)
    pending = iter(enumerate(decisions))
    take_lock = threading.Lock()
    connect_errors: list[str] = []
    finished = [0]

    def take() -> tuple[int, Decision] | None:
        with take_lock:
            return next(pending, None)

    def worker() -> None:
        warnings: list[str] = []

        def on_notice(diag: psycopg.errors.Diagnostic) -> None:
            if diag.severity_nonlocalized == "WARNING":
                warnings.append(diag.message_primary or "")

        while True:
            try:
                with connect(
                    target,
                    autocommit=True,
                    lock_timeout_ms=lock_timeout_ms,
                    statement_timeout_ms=statement_timeout_ms,
                ) as conn:
                    conn.add_notice_handler(on_notice)
                    while (item := take()) is not None:
                        index, decision = item
                        results[index] = _run_one(
                            conn,
                            decision,
                            warnings,
                            lock_timeout_ms=lock_timeout_ms,
                            statement_timeout_ms=statement_timeout_ms,
                        )
                        with take_lock:
                            finished[0] += 1
                            progress.report("analyzing stale tables", finished[0], len(decisions))
                        if conn.broken:
                            break  # reconnect for the next table
                    else:
                        return
            except ConnectionFailed as exc:
                connect_errors.append(str(exc))
                return  # the tables this worker would have taken are reported below

    workers = min(parallelism, len(decisions))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="analyze") as pool:
        # Each worker in a copy of this context: progress reaches whoever listens (the CLI).
        for future in [pool.submit(copy_context().run, worker) for _ in range(workers)]:
            future.result()
    reason = connect_errors[0] if connect_errors else "not attempted"
    return [
        r
        if r is not None
        else TableResult(
            relid=d.table.relid,
            schema_name=d.table.schema_name,
            table_name=d.table.table_name,
            action=d.action,
            status="failed",
            duration_ms=0.0,
            error=f"not attempted: {reason}",
        )
        for r, d in zip(results, decisions, strict=True)
    ]


@task(name="fetch_analyze_marks", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def fetch_analyze_marks(target: PostgresTarget, relids: Sequence[int]) -> dict[int, AnalyzeMark]:
    """Each table's analyze count and time now, to confirm a batch really refreshed them."""
    if not relids:
        return {}
    with connect(target, statement_timeout_ms=30_000) as conn:
        conn.read_only = True
        rows = conn.execute(
            """
            select c.oid::bigint as relid,
                   pg_stat_get_analyze_count(c.oid) as analyze_count,
                   pg_stat_get_last_analyze_time(c.oid) as last_analyze
            from pg_class c
            where c.oid = any(%s::bigint[]::oid[])
            """,
            (list(relids),),
        ).fetchall()
    return {int(r["relid"]): AnalyzeMark.model_validate(r) for r in rows}


def refreshed(before: TableStats, after: AnalyzeMark | None) -> bool:
    """Did the table's statistics get a new ANALYZE since `before` was read?"""
    if after is None:
        return False
    if after.analyze_count > before.analyze_count:
        return True
    return after.last_analyze is not None and (
        before.last_analyze is None or after.last_analyze > before.last_analyze
    )
