"""Partition DDL: create ahead (rescuing rows from the default partition), detach, drop, and hash
children. The only module that changes a partitioned table's layout.

Every task is one I/O step and follows the same discipline:

* an autocommit connection that first refuses a replica (`ensure_primary`) and then takes the
  per-table session advisory lock `partitions:<schema>.<table>` (`LockBusy` at once if another
  run holds it), so two rotations of one table never interleave a step;
* every statement under `lock_timeout` and `statement_timeout` (a blocked DDL gives up quickly
  instead of queueing writers behind it);
* the state is re-read inside the lock, so a step that already happened (a crashed run, a
  concurrent one) is skipped, never repeated;
* SQL is composed with `psycopg.sql` (identifiers as `Identifier`, bounds as `Literal`).

Expired partitions are marked before they are detached: a table comment
`perfops:expired {"parent": ..., "schema": ..., "name": ..., "lower": ..., "upper": ...}` survives
the detach, so the next run finds a table a crashed run detached but did not archive or drop
(`fetch_detached`, in any schema). The mark names the parent and the marked table itself; a table
is only ever marked after the catalog (`pg_inherits`) shows it is a partition of that parent, and
only a table whose mark names this parent and the table itself is archived or dropped.

A partition may live in another schema than its parent: every step names a child by its own
schema and name (`schema_name` None on the decision models means the parent's schema).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any, LiteralString, TypeVar
from zoneinfo import ZoneInfo

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from psycopg.rows import DictRow
from pydantic import BaseModel, Field

from blocks import PostgresTarget
from decisions.partition_rotation import (
    DEFAULT_RESCUE_MAX_ROWS,
    CreatedPartition,
    Detached,
    DetachMode,
    Dropped,
    Expiring,
    Timeouts,
    ToDrop,
)
from decisions.partitioning import PlannedPartition
from perfops.errors import ConfigurationError, PerfopsError
from perfops.redaction import one_line
from tasks.postgres.partitions import qualified_name
from tasks.postgres.server import advisory_lock, connect, ensure_primary, set_timeouts
from tasks.transient_errors import RETRY_DEFAULTS

EXPIRED_MARK = "perfops:expired "

T = TypeVar("T")
R = TypeVar("R")


class RowCountMismatch(PerfopsError):
    """A table's row count differs from what was archived; nothing was dropped."""


class DetachedTable(BaseModel):
    """A table a rotation detached (marked by its comment) that still exists."""

    schema_name: str
    name: str
    parent: str
    lower: datetime | None
    upper: datetime | None
    problem: str | None = Field(
        default=None,
        description="Why the table is not taken as this parent's leftover although it carries a "
        "mark naming the parent (an older mark that does not name the table itself, or one "
        "naming another table): reported, never archived or dropped.",
    )


def lock_name(schema_name: str, table_name: str) -> str:
    return f"partitions:{qualified_name(schema_name, table_name)}"


def _ident(schema_name: str, table_name: str) -> sql.Identifier:
    return sql.Identifier(schema_name, table_name)


@contextmanager
def ddl_session(
    target: PostgresTarget, schema_name: str, table_name: str, what: str, timeouts: Timeouts
) -> Iterator[psycopg.Connection[DictRow]]:
    """Autocommit connection on a primary, holding the table's advisory lock, with session
    timeouts set (every statement and every explicit transaction inherits them)."""
    with connect(target, autocommit=True) as conn:
        ensure_primary(conn, what)
        set_timeouts(
            conn,
            lock_timeout_ms=timeouts.lock_timeout_ms,
            statement_timeout_ms=timeouts.statement_timeout_ms,
            local=False,
        )
        with advisory_lock(conn, lock_name(schema_name, table_name)):
            yield conn


def bound_literal(ts: datetime, key_type: str, tz: str) -> sql.Literal:
    """A partition bound for a key of `key_type`: timestamptz as an instant, timestamp and date as
    wall time in `tz` (the policy's zone)."""
    if key_type == "timestamp with time zone":
        return sql.Literal(ts.astimezone(UTC))
    local = ts.astimezone(ZoneInfo(tz)).replace(tzinfo=None)
    if key_type == "timestamp without time zone":
        return sql.Literal(local)
    if key_type == "date":
        return sql.Literal(date(local.year, local.month, local.day))
    raise ConfigurationError(f"partition key type {key_type!r} is not a time type")


_CHILDREN: LiteralString = """
    select chn.nspname as schema_name, ch.relname as name,
           pg_get_expr(ch.relpartbound, ch.oid) as bound, i.inhdetachpending as detach_pending
    from pg_inherits i
    join pg_class ch on ch.oid = i.inhrelid
    join pg_namespace chn on chn.oid = ch.relnamespace
    where i.inhparent = to_regclass(%(parent)s)
"""

Children = dict[tuple[str, str], dict[str, Any]]


def _children(conn: psycopg.Connection[DictRow], parent: str) -> Children:
    """The parent's partitions as the catalog says now, by (schema, name): a partition may live
    in another schema than its parent, and a table of the same name elsewhere is not one."""
    return {
        (r["schema_name"], r["name"]): dict(r)
        for r in conn.execute(_CHILDREN, {"parent": parent}).fetchall()
    }


def _default_partition(children: Children) -> tuple[str, str] | None:
    """(schema, name) of the default partition, wherever it lives."""
    return next((key for key, c in children.items() if c["bound"] == "DEFAULT"), None)


def _exists(conn: psycopg.Connection[DictRow], schema_name: str, name: str) -> bool:
    row = conn.execute(
        "select to_regclass(%s) is not null as found", (qualified_name(schema_name, name),)
    ).fetchone()
    return bool(row and row["found"])


@task(name="create_partitions", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def create_partitions(
    target: PostgresTarget,
    schema_name: str,
    table_name: str,
    key_column: str,
    key_type: str,
    tz: str,
    planned: list[PlannedPartition],
    timeouts: Timeouts = Timeouts(),  # noqa: B008 - frozen defaults
    rescue_max_rows: int = DEFAULT_RESCUE_MAX_ROWS,
) -> list[CreatedPartition]:
    """Create the planned children (`CREATE TABLE ... PARTITION OF`, so indexes and constraints
    follow the parent), one transaction each.

    Rows of the default partition that fall in a new child's range are moved into it in the same
    transaction (pg_partman's `partition_data_time`): lock the default partition against writes,
    `DELETE ... RETURNING` its rows of that range into a temporary table, create the child, insert
    them into it and check the counts match, then commit. A failure rolls all of it back: no row
    is lost or duplicated. One partition is one batch; a range holding more than
    `rescue_max_rows` rows in the default partition is skipped and reported.
    """
    parent = qualified_name(schema_name, table_name)
    results: list[CreatedPartition] = []
    with ddl_session(
        target, schema_name, table_name, f"create partitions of {parent}", timeouts
    ) as conn:
        for item in planned:
            children = _children(conn, parent)
            if (schema_name, item.name) in children:
                results.append(
                    CreatedPartition(name=item.name, status="existed", detail="already there")
                )
                continue
            if _exists(conn, schema_name, item.name):
                results.append(
                    CreatedPartition(
                        name=item.name,
                        status="failed",
                        detail=f"{qualified_name(schema_name, item.name)} exists but is not a "
                        f"partition of {parent}: rename or drop that table, then run again",
                    )
                )
                continue
            lower = bound_literal(item.lower, key_type, tz)
            upper = bound_literal(item.upper, key_type, tz)
            default = _default_partition(children)
            try:
                results.append(
                    _create_one(
                        conn,
                        schema_name,
                        table_name,
                        item.name,
                        key_column,
                        lower,
                        upper,
                        default,
                        rescue_max_rows,
                    )
                )
            except psycopg.Error as exc:
                results.append(
                    CreatedPartition(
                        name=item.name, status="failed", detail=one_line(exc, empty="failed")
                    )
                )
    return results


def _rows_waiting(
    conn: psycopg.Connection[DictRow],
    default: tuple[str, str],
    key: sql.Identifier,
    lower: sql.Literal,
    upper: sql.Literal,
) -> bool:
    """Whether the default partition (schema, name) holds a row of [lower, upper) (read without
    a lock)."""
    row = conn.execute(
        sql.SQL(
            "select exists (select from {table} where {key} >= {lo} and {key} < {hi}) as found"
        ).format(table=_ident(*default), key=key, lo=lower, hi=upper)
    ).fetchone()
    return bool(row and row["found"])


def _create_one(
    conn: psycopg.Connection[DictRow],
    schema_name: str,
    table_name: str,
    name: str,
    key_column: str,
    lower: sql.Literal,
    upper: sql.Literal,
    default: tuple[str, str] | None,
    rescue_max_rows: int,
) -> CreatedPartition:
    parent = _ident(schema_name, table_name)
    child = _ident(schema_name, name)
    key = sql.Identifier(key_column)
    create = sql.SQL("create table {} partition of {} for values from ({}) to ({})").format(
        child, parent, lower, upper
    )
    if default is None or not _rows_waiting(conn, default, key, lower, upper):
        # Nothing to move (the common case): one autocommit statement, so the parent's lock is
        # held only while it runs. PostgreSQL checks the default partition itself under that
        # lock; a row that arrived since the count fails it, and the rescue below moves it.
        try:
            conn.execute(create)
            return CreatedPartition(name=name, status="created")
        except psycopg.errors.CheckViolation:
            if default is None:
                raise
    with conn.transaction():
        moved = 0
        if default is not None:
            dflt = _ident(*default)
            in_range = sql.SQL("{key} >= {lo} and {key} < {hi}").format(key=key, lo=lower, hi=upper)
            # Writers routed to the default partition wait (under their own timeouts) for this
            # short transaction; readers do not.
            conn.execute(sql.SQL("lock table {} in exclusive mode").format(dflt))
            waiting = conn.execute(
                sql.SQL("select count(*) as n from {} where {}").format(dflt, in_range)
            ).fetchone()
            waiting_rows = int(waiting["n"]) if waiting else 0
            if waiting_rows > rescue_max_rows:
                return CreatedPartition(
                    name=name,
                    status="skipped",
                    detail=f"{waiting_rows} rows of its range wait in the default partition "
                    f"{'.'.join(default)}, more than rescue_max_rows={rescue_max_rows} moved in "
                    "one transaction; raise the limit or move them by hand",
                )
            if waiting_rows:
                conn.execute(
                    sql.SQL(
                        "create temporary table perfops_rescue on commit drop as "
                        "select * from {} with no data"
                    ).format(dflt)
                )
                cur = conn.execute(
                    sql.SQL(
                        "with moved as (delete from {} where {} returning *) "
                        "insert into perfops_rescue select * from moved"
                    ).format(dflt, in_range)
                )
                moved = cur.rowcount
            conn.execute(create)
            if moved:
                inserted = conn.execute(
                    sql.SQL("insert into {} select * from perfops_rescue").format(child)
                ).rowcount
                if inserted != moved:
                    raise RowCountMismatch(
                        f"moved {moved} rows out of {'.'.join(default)} but inserted {inserted} "
                        f"into {name}; rolled back"
                    )
        else:
            conn.execute(create)
    detail = f"moved {moved} rows from the default partition" if moved else ""
    return CreatedPartition(name=name, status="created", moved_rows=moved, detail=detail)


@task(name="create_hash_partitions", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def create_hash_partitions(
    target: PostgresTarget,
    schema_name: str,
    table_name: str,
    modulus: int,
    remainders: list[int],
    names: list[str],
    timeouts: Timeouts = Timeouts(),  # noqa: B008
) -> list[CreatedPartition]:
    """Create the missing hash children (`FOR VALUES WITH (MODULUS m, REMAINDER r)`)."""
    parent = qualified_name(schema_name, table_name)
    results = []
    with ddl_session(
        target, schema_name, table_name, f"create partitions of {parent}", timeouts
    ) as conn:
        for remainder, name in zip(remainders, names, strict=True):
            bounds = {c["bound"] for c in _children(conn, parent).values()}
            wanted = f"FOR VALUES WITH (modulus {modulus}, remainder {remainder})"
            if wanted in bounds or _exists(conn, schema_name, name):
                results.append(CreatedPartition(name=name, status="existed"))
                continue
            try:
                conn.execute(
                    sql.SQL(
                        "create table {} partition of {} for values with (modulus {}, remainder {})"
                    ).format(
                        _ident(schema_name, name),
                        _ident(schema_name, table_name),
                        sql.Literal(modulus),
                        sql.Literal(remainder),
                    )
                )
                results.append(CreatedPartition(name=name, status="created"))
            except psycopg.Error as exc:
                results.append(
                    CreatedPartition(
                        name=name, status="failed", detail=one_line(exc, empty="failed")
                    )
                )
    return results


def expired_comment(
    schema_name: str,
    table_name: str,
    lower: datetime | None,
    upper: datetime | None,
    partition: tuple[str, str] | None = None,
) -> str:
    """The mark of an expired partition `partition` (its schema, name) of `schema.table`. Without
    `partition` the mark is an older perfops's, which named only the parent: such a table is
    reported, never archived or dropped."""
    mark: dict[str, str | None] = {
        "parent": f"{schema_name}.{table_name}",
        "lower": lower.astimezone(UTC).isoformat() if lower else None,
        "upper": upper.astimezone(UTC).isoformat() if upper else None,
    }
    if partition is not None:
        mark["schema"], mark["name"] = partition
    return EXPIRED_MARK + json.dumps(mark, sort_keys=True)


@task(name="detach_partitions", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def detach_partitions(
    target: PostgresTarget,
    schema_name: str,
    table_name: str,
    partitions: list[Expiring],
    timeouts: Timeouts = Timeouts(),  # noqa: B008
) -> list[Detached]:
    """Mark each partition as expired (table comment) and detach it from its parent, in order, on
    one connection holding the table's advisory lock.

    `DETACH PARTITION ... CONCURRENTLY` outside a transaction when it can; PostgreSQL refuses it
    while the parent has a DEFAULT partition, so then a plain `DETACH` (ACCESS EXCLUSIVE on the
    parent, bounded by lock_timeout) and the mode says "plain". Each DETACH is its own autocommit
    statement: the parent's lock is held while it runs and commits, never across a round trip to
    this client, and never for more than one partition. A concurrent detach interrupted by a
    crash is completed with `DETACH ... FINALIZE`; one already detached is left as it is. A
    partition that fails (a lock timeout) is reported and stays attached, or, when a concurrent
    detach stopped after its first step, detach-pending (`pending`: the next run finalizes it);
    the others go on.
    """
    parent = qualified_name(schema_name, table_name)
    with ddl_session(
        target, schema_name, table_name, f"detach partitions of {parent}", timeouts
    ) as conn:
        done = _one_by_one(
            partitions, lambda item: _detach_one(conn, schema_name, table_name, item)
        )
        # A DETACH CONCURRENTLY that failed after its first step (waiting for older snapshots
        # past lock_timeout) leaves the partition detach-pending, not attached: say which.
        pending = _pending(conn, parent) if any(error for _, _, error in done) else set()
        return [
            Detached(
                name=item.label,
                mode=mode,
                error=error,
                pending=error is not None
                and (item.schema_name or schema_name, item.name) in pending,
            )
            for item, mode, error in done
        ]


def _pending(conn: psycopg.Connection[DictRow], parent: str) -> set[tuple[str, str]]:
    """The parent's partitions a DETACH CONCURRENTLY left pending (empty if it cannot tell)."""
    if conn.broken:
        return set()
    try:
        return {key for key, c in _children(conn, parent).items() if c["detach_pending"]}
    except psycopg.Error:
        return set()


def _one_by_one(items: list[T], step: Callable[[T], R]) -> list[tuple[T, R | None, str | None]]:
    """`step` on every item in order: (item, result, None), or (item, None, the one-line error)
    for an item that failed; the others go on."""
    done: list[tuple[T, R | None, str | None]] = []
    for item in items:
        try:
            done.append((item, step(item), None))
        except (PerfopsError, psycopg.Error) as exc:
            done.append((item, None, one_line(exc, empty="failed")))
    return done


def _detach_one(
    conn: psycopg.Connection[DictRow], schema_name: str, table_name: str, item: Expiring
) -> DetachMode:
    parent_q = qualified_name(schema_name, table_name)
    child_schema = item.schema_name or schema_name
    where = qualified_name(child_schema, item.name)
    parent, child = _ident(schema_name, table_name), _ident(child_schema, item.name)
    # The catalog, read inside the lock, says whether this very table (schema and name) is a
    # partition of this parent: only then is it marked. A table of the same name in another
    # schema is never touched.
    children = _children(conn, parent_q)
    found = children.get((child_schema, item.name))
    if found is None:
        why = _not_ours(conn, child_schema, item.name, schema_name, table_name)
        if why is None:
            return "already detached"
        raise ConfigurationError(
            f"{where} is neither a partition of {parent_q} nor a table a rotation of it "
            f"detached ({why}): nothing to detach"
        )
    mark = expired_comment(
        schema_name, table_name, item.lower, item.upper, (child_schema, item.name)
    )
    conn.execute(sql.SQL("comment on table {} is {}").format(child, sql.Literal(mark)))
    if found["detach_pending"]:
        conn.execute(sql.SQL("alter table {} detach partition {} finalize").format(parent, child))
        return "finalized"
    if _default_partition(children) is not None:
        conn.execute(sql.SQL("alter table {} detach partition {}").format(parent, child))
        return "plain"
    conn.execute(sql.SQL("alter table {} detach partition {} concurrently").format(parent, child))
    return "concurrently"


def _parent_mark(comment: str | None, schema_name: str, parent_name: str) -> dict[str, Any] | None:
    """The mark `expired_comment` left naming `schema.parent` as the parent, or None when the
    comment is anything else (no mark, unreadable, another parent's)."""
    if not comment or not comment.startswith(EXPIRED_MARK):
        return None
    try:
        mark = json.loads(comment.removeprefix(EXPIRED_MARK))
    except ValueError:
        return None
    if not isinstance(mark, dict) or mark.get("parent") != f"{schema_name}.{parent_name}":
        return None
    return mark


def _mark_problem(mark: dict[str, Any], table_schema: str, table_name: str) -> str | None:
    """Why a mark naming the right parent does not make the table `schema.name` its leftover
    (None: it does). The mark must name the table itself: an older perfops's mark did not, and
    could sit on a table of the same name in the parent's schema that was never a partition."""
    where = qualified_name(table_schema, table_name)
    if "name" not in mark:
        return (
            f"{where} carries an expiry mark of {mark.get('parent')} from an older perfops that "
            "does not name the marked table: it is not archived or dropped; check that it is a "
            "detached partition, then drop it by hand (or remove its comment)"
        )
    if (mark.get("schema"), mark.get("name")) != (table_schema, table_name):
        return (
            f"{where} carries the expiry mark of {mark.get('schema')}.{mark.get('name')} "
            f"(renamed or copied since?): it is not archived or dropped"
        )
    return None


def _expiry_mark(
    comment: str | None, schema_name: str, parent_name: str, table_schema: str, table_name: str
) -> dict[str, Any] | None:
    """The mark `expired_comment` left on the table `table_schema.table_name` a rotation of
    `schema.parent` detached, or None (no mark, another parent's, or not naming this table)."""
    mark = _parent_mark(comment, schema_name, parent_name)
    if mark is None or _mark_problem(mark, table_schema, table_name) is not None:
        return None
    return mark


def _not_ours(
    conn: psycopg.Connection[DictRow],
    table_schema: str,
    table_name: str,
    schema_name: str,
    parent_name: str,
) -> str | None:
    """None when `table_schema.table_name` is a plain table a rotation of `schema.parent`
    detached (not a partition, marked for this parent and this table); else why not."""
    row = conn.execute(
        "select c.relispartition, obj_description(c.oid, 'pg_class') as mark "
        "from pg_class c where c.oid = to_regclass(%s)",
        (qualified_name(table_schema, table_name),),
    ).fetchone()
    if row is None:
        return "no such table"
    if row["relispartition"]:
        return "it is a partition of another table"
    mark = _parent_mark(row["mark"], schema_name, parent_name)
    if mark is None:
        return "it carries no expiry mark of this parent"
    return _mark_problem(mark, table_schema, table_name)


_DETACHED: LiteralString = """
    select n.nspname as schema_name, c.relname as name, obj_description(c.oid, 'pg_class') as mark
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind = 'r' and not c.relispartition
      and obj_description(c.oid, 'pg_class') like 'perfops:expired %%'
    order by n.nspname, c.relname
"""


@task(name="fetch_detached", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def fetch_detached(
    target: PostgresTarget, schema_name: str, table_name: str
) -> list[DetachedTable]:
    """Tables a rotation of `schema.table` detached (its comment mark) that still exist, in any
    schema (a partition may live outside its parent's): a crashed or failed run's leftovers, to
    archive and drop (or keep, for detach_only). A table whose mark names this parent but not
    the table itself comes with its `problem` and is never archived or dropped."""
    parent = f"{schema_name}.{table_name}"
    found = []
    with connect(target, statement_timeout_ms=30_000) as conn:
        conn.read_only = True
        for row in conn.execute(_DETACHED).fetchall():
            mark = _parent_mark(row["mark"], schema_name, table_name)
            if mark is None:
                continue
            found.append(
                DetachedTable(
                    schema_name=row["schema_name"],
                    name=row["name"],
                    parent=parent,
                    lower=datetime.fromisoformat(mark["lower"]) if mark.get("lower") else None,
                    upper=datetime.fromisoformat(mark["upper"]) if mark.get("upper") else None,
                    problem=_mark_problem(mark, row["schema_name"], row["name"]),
                )
            )
    return found


@task(name="count_rows", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def count_rows(
    target: PostgresTarget, schema_name: str, table_name: str, statement_timeout_ms: int = 120_000
) -> int:
    """count(*) of one table."""
    with connect(target, statement_timeout_ms=statement_timeout_ms) as conn:
        conn.read_only = True
        row = conn.execute(
            sql.SQL("select count(*) as n from {}").format(_ident(schema_name, table_name))
        ).fetchone()
    return int(row["n"]) if row else 0


@task(name="drop_detached_tables", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def drop_detached_tables(
    target: PostgresTarget,
    schema_name: str,
    parent_name: str,
    tables: list[ToDrop],
    timeouts: Timeouts = Timeouts(),  # noqa: B008
) -> list[Dropped]:
    """Drop detached expired tables of `parent_name`, each in its own transaction, on one
    connection holding the parent's advisory lock.

    Each table must still be a detached table that a rotation of this parent marked (never a
    partition, never anyone else's table); it is locked ACCESS EXCLUSIVE, counted, and dropped
    only when the count equals `expected_rows` (the verified archive's row count). Otherwise it
    stays, with the reason (`RowCountMismatch`, ...) in its result; the others go on. The parent
    itself is not locked: these tables are no longer its partitions.
    """
    parent = qualified_name(schema_name, parent_name)
    with ddl_session(
        target, schema_name, parent_name, f"drop expired tables of {parent}", timeouts
    ) as conn:
        return [
            Dropped(name=item.label, rows=rows, error=error)
            for item, rows, error in _one_by_one(
                tables, lambda item: _drop_one(conn, schema_name, parent_name, item)
            )
        ]


def _drop_one(
    conn: psycopg.Connection[DictRow], schema_name: str, parent_name: str, item: ToDrop
) -> int:
    table_schema = item.schema_name or schema_name
    where = qualified_name(table_schema, item.name)
    table = _ident(table_schema, item.name)
    with conn.transaction():
        row = conn.execute(
            "select c.relispartition, obj_description(c.oid, 'pg_class') as mark "
            "from pg_class c where c.oid = to_regclass(%s)",
            (where,),
        ).fetchone()
        if row is None:
            raise ConfigurationError(f"{where} does not exist: nothing to drop")
        mark = _expiry_mark(row["mark"], schema_name, parent_name, table_schema, item.name)
        if row["relispartition"] or mark is None:
            raise ConfigurationError(
                f"refusing to drop {where}: it is not a table detached by a perfops rotation "
                f"of {schema_name}.{parent_name}"
            )
        conn.execute(sql.SQL("lock table {} in access exclusive mode").format(table))
        counted = conn.execute(sql.SQL("select count(*) as n from {}").format(table)).fetchone()
        rows = int(counted["n"]) if counted else 0
        if item.expected_rows is not None and rows != item.expected_rows:
            raise RowCountMismatch(
                f"{where} holds {rows} rows but its verified archive has {item.expected_rows}: "
                "not dropped (the table stays detached; the next run archives it again)"
            )
        conn.execute(sql.SQL("drop table {}").format(table))
    return rows
