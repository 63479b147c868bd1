"""What PostgreSQL executes: pg_stat_statements rows, and generic plans of normalised statements.

Statements from pg_stat_statements keep their `$n` parameters. `explain_generic` plans them as
the server would for any parameter values: `EXPLAIN (GENERIC_PLAN)` on PostgreSQL 16+, and on 15
`PREPARE` + `plan_cache_mode = force_generic_plan` + `EXPLAIN EXECUTE` with NULL arguments. It only
ever EXPLAINs (never ANALYZE), inside a read-only transaction that is rolled back.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime
from typing import Any

import psycopg
from pglast import parse_sql
from pglast.parser import ParseError
from prefect import task
from psycopg import errors as pg_errors
from psycopg import sql
from pydantic import BaseModel

from blocks import PostgresTarget
from decisions.slow_queries import HiddenStatements, StatementStats
from perfops.errors import MissingPrerequisite
from perfops.redaction import mask_statement_secrets, one_line
from tasks.postgres.server import connect, extension_off_path, set_timeouts
from tasks.transient_errors import RETRY_DEFAULTS

PSS_FIX = (
    "add pg_stat_statements to shared_preload_libraries and restart PostgreSQL, then run "
    "CREATE EXTENSION pg_stat_statements; in the database"
)
_PARAM = re.compile(r"\$(\d+)")
_PREPARED = "perfops_generic_plan"
_PREPARED_COUNT = itertools.count()


def ensure_pg_stat_statements(conn: psycopg.Connection[Any]) -> None:
    """Raise `MissingPrerequisite` with the fix unless pg_stat_statements is installed and
    preloaded."""
    row = conn.execute(
        "select extversion from pg_extension where extname = 'pg_stat_statements'"
    ).fetchone()
    db = conn.info.dbname
    if row is None:
        preload = conn.execute(  # pg_settings: NULL, not an error, for a role that cannot see it
            "select setting from pg_settings where name = 'shared_preload_libraries'"
        ).fetchone()
        libraries = [x.strip() for x in ((preload or {}).get("setting") or "").split(",")]
        fix = (
            "the library is preloaded: run CREATE EXTENSION pg_stat_statements; in the database"
            if "pg_stat_statements" in libraries
            else PSS_FIX
        )
        raise MissingPrerequisite(f"pg_stat_statements is not installed in database {db}: {fix}")
    off_path = extension_off_path(conn, "pg_stat_statements")
    if off_path:
        raise MissingPrerequisite(off_path)
    try:
        conn.execute("select 1 from pg_stat_statements limit 1")
    except pg_errors.ObjectNotInPrerequisiteState:
        conn.rollback()
        raise MissingPrerequisite(
            f"pg_stat_statements is installed in {db} but not preloaded: {PSS_FIX}"
        ) from None


@task(name="fetch_statement_stats", **RETRY_DEFAULTS)
def fetch_statement_stats(
    target: PostgresTarget,
    *,
    min_calls: int = 1,
    min_total_ms: float = 0.0,
    limit: int = 500,
) -> list[StatementStats]:
    """Top statements of the current database by total execution time."""
    with connect(target, statement_timeout_ms=30_000) as conn:
        ensure_pg_stat_statements(conn)
        rows = conn.execute(
            """
            with s as (
                select queryid, query, calls, total_exec_time, mean_exec_time, stddev_exec_time,
                       min_exec_time, max_exec_time, rows, shared_blks_hit, shared_blks_read
                from pg_stat_statements
                where dbid = (select oid from pg_database where datname = current_database())
                  and toplevel
            ), total as (select coalesce(sum(total_exec_time), 0) as t from s)
            select s.queryid, s.query, s.calls,
                   s.total_exec_time as total_ms, s.mean_exec_time as mean_ms,
                   s.stddev_exec_time as stddev_ms, s.min_exec_time as min_ms,
                   s.max_exec_time as max_ms, s.rows, s.shared_blks_hit, s.shared_blks_read,
                   case when total.t > 0 then s.total_exec_time / total.t else 0 end
                       as share_of_db_time
            from s, total
            where s.calls >= %(min_calls)s and s.total_exec_time >= %(min_total)s
              and s.queryid is not null
            order by s.total_exec_time desc
            limit %(limit)s
            """,
            {"min_calls": min_calls, "min_total": min_total_ms, "limit": limit},
        ).fetchall()
    # Utility statements keep their literals in pg_stat_statements (ALTER ROLE ... PASSWORD).
    return [
        StatementStats.model_validate(r | {"query": mask_statement_secrets(r["query"])})
        for r in rows
    ]


@task(name="fetch_hidden_statements", **RETRY_DEFAULTS)
def fetch_hidden_statements(target: PostgresTarget) -> HiddenStatements | None:
    """The statements of this database pg_stat_statements hides from this role (another role's,
    without pg_read_all_stats: no text, no queryid), or None when it hides none.
    `fetch_statement_stats` cannot return them; a run says they exist instead of listing around
    them as if they did not."""
    with connect(target, statement_timeout_ms=30_000) as conn:
        row = conn.execute(
            """
            with s as (
                select queryid, total_exec_time from pg_stat_statements
                where dbid = (select oid from pg_database where datname = current_database())
                  and toplevel
            )
            select count(*) filter (where queryid is null) as statements,
                   coalesce(sum(total_exec_time) filter (where queryid is null), 0) as hidden_ms,
                   coalesce(sum(total_exec_time), 0) as all_ms,
                   current_user as role
            from s
            """
        ).fetchone()
    if row is None or not row["statements"]:
        return None
    return HiddenStatements(
        statements=row["statements"],
        total_ms=row["hidden_ms"],
        share_of_db_time=row["hidden_ms"] / row["all_ms"] if row["all_ms"] else 0.0,
        role=row["role"],
    )


@task(name="fetch_statements_reset", **RETRY_DEFAULTS)
def fetch_statements_reset(target: PostgresTarget) -> datetime | None:
    """When pg_stat_statements was last reset (`pg_stat_statements_info`, PostgreSQL 14+): what
    a run with no statements to look at says it counted since. None when unknown."""
    with connect(target, statement_timeout_ms=10_000) as conn:
        try:
            row = conn.execute("select stats_reset from pg_stat_statements_info").fetchone()
        except psycopg.Error:
            return None
    return row["stats_reset"] if row else None


def statements_since(count: int, reset: datetime | None, what: str = "statements") -> str:
    """'0 statements in pg_stat_statements since its reset at 2026-11-20 06:00 UTC'."""
    since = f" since its reset at {reset.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if reset else ""
    return f"{count} {what} in pg_stat_statements{since}"


def parameter_count(query: str) -> int:
    """The highest `$n` in a normalised statement (0 when it has none)."""
    return max((int(n) for n in _PARAM.findall(query)), default=0)


def explain_generic(conn: psycopg.Connection[Any], query: str) -> dict[str, Any]:
    """The generic plan of `query` (JSON plan's top node); the caller owns the transaction.

    Runs `SET LOCAL transaction_read_only`-style protection itself: call it inside a transaction
    the caller rolls back (hypothetical indexes of hypopg are per session and survive it).
    """
    # The statement text is what the server itself executed (pg_stat_statements), not a value
    # being spliced in; it is only ever planned here, never executed. One round trip: the
    # settings, the plan and the clean-up go as one simple-protocol batch (a what-if costing
    # plans hundreds of statements; each trip costs more than the planning on a busy server).
    # A newline after the text: a statement ending in a `--` comment (`... = $1 -- nightly
    # report`, as pg_stat_statements keeps it) would otherwise comment out the rest of the batch.
    statement = sql.SQL(query) + sql.SQL("\n")
    guard = sql.SQL("set local transaction_read_only = on; ")
    try:
        count = len(parse_sql(query))
    except ParseError:
        # the server says what is wrong with the statement alone (a truncated text: "syntax
        # error at end of input"); EXPLAIN without ANALYZE runs nothing
        conn.execute(guard + sql.SQL("explain ") + statement)
        raise psycopg.ProgrammingError("does not parse") from None
    if count != 1:  # the batch below must plan one statement, and only plan it
        raise psycopg.ProgrammingError(f"{count} statements in one text: not planned")
    if conn.info.server_version >= 160000:
        batch = guard + sql.SQL("explain (generic_plan, format json) ") + statement
    else:
        # PREPARE is not transactional: a name of its own per call, so one that a failed call
        # left behind (its DEALLOCATE never ran) is in no later call's way
        name = sql.Identifier(f"{_PREPARED}_{next(_PREPARED_COUNT)}")
        n = parameter_count(query)
        args = sql.SQL("({})").format(sql.SQL(", ").join([sql.NULL] * n)) if n else sql.SQL("")
        batch = (
            guard
            + sql.SQL("set local plan_cache_mode = force_generic_plan; prepare {} as ").format(name)
            + statement
            + sql.SQL("; explain (format json) execute {}{}; deallocate {}").format(
                name, args, name
            )
        )
    cursor = conn.execute(batch)
    plan = None
    while True:
        if cursor.description is not None:
            plan = cursor.fetchone()
            break
        if not cursor.nextset():
            break
    if plan is None:  # (never seen: the batch always ends in the EXPLAIN's result)
        raise psycopg.ProgrammingError("EXPLAIN returned no plan: not planned")
    value = next(iter(plan.values())) if isinstance(plan, dict) else plan[0]
    document = json.loads(value) if isinstance(value, str) else value
    top: dict[str, Any] = document[0]["Plan"]
    return top


def plan_cost(plan: dict[str, Any]) -> float:
    """Total estimated cost of a plan node."""
    return float(plan["Total Cost"])


def plan_index_names(plan: dict[str, Any]) -> set[str]:
    """Every index a plan scans (including hypopg's `<oid>btree_...` names)."""
    names: set[str] = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if "Index Name" in node:
            names.add(str(node["Index Name"]))
        stack.extend(node.get("Plans", []))
    return names


# --- Plans for a batch of statements (added for find_slow_queries) ---------------------------


class GenericPlanResult(BaseModel):
    """The generic plan of one statement (its JSON top node), or why it could not be planned."""

    plan: dict[str, Any] | None = None
    error: str | None = None


@task(name="explain_statements", **RETRY_DEFAULTS)
def explain_statements(
    target: PostgresTarget,
    queries: list[str],
    *,
    lock_timeout_ms: int = 1_000,
    statement_timeout_ms: int = 5_000,
) -> list[GenericPlanResult]:
    """`explain_generic` for each statement over one connection, each in its own transaction that
    is rolled back, under its own lock and statement timeouts. A statement that fails to plan
    (missing table, unknown parameter type, a table locked by another session, a timeout) gets
    the reason instead of a plan; the batch goes on."""
    results: list[GenericPlanResult] = []
    with connect(target) as conn:
        for query in queries:
            try:
                set_timeouts(
                    conn, lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=statement_timeout_ms
                )
                results.append(GenericPlanResult(plan=explain_generic(conn, query)))
            except psycopg.Error as exc:
                if conn.broken:
                    raise
                results.append(
                    GenericPlanResult(error=_plan_error(exc, lock_timeout_ms, statement_timeout_ms))
                )
            finally:
                if not conn.broken:
                    conn.rollback()
    return results


def _plan_error(exc: psycopg.Error, lock_timeout_ms: int, statement_timeout_ms: int) -> str:
    original: BaseException = exc
    if isinstance(original, pg_errors.LockNotAvailable):
        return (
            "a table it uses is locked by another session: lock_timeout "
            f"({lock_timeout_ms:,} ms) expired"
        )
    if isinstance(original, pg_errors.QueryCanceled):
        return f"planning took longer than statement_timeout ({statement_timeout_ms:,} ms)"
    return f"fails to plan: {one_line(original)}"
