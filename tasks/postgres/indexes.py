"""The index catalog: every index of the user's tables with its columns, predicate, method,
constraint, validity, size and scans since the statistics were reset."""

from __future__ import annotations

from typing import LiteralString

from prefect import task
from psycopg import errors as pg_errors

from blocks import PostgresTarget
from decisions.index_health import IndexCatalog, IndexInfo, IndexLocation, LockedTable
from tasks.postgres.server import connect, set_timeouts
from tasks.transient_errors import RETRY_DEFAULTS

# --- Reading the catalog around locked tables (added for check_index_health) -----------------
#
# pg_get_indexdef() takes ACCESS SHARE on the index's table, so one table held in ACCESS EXCLUSIVE
# by another session (ALTER TABLE, VACUUM FULL, a migration) would make the whole catalog read
# wait and then fail. `fetch_index_catalog` reads everything at once under a short lock_timeout,
# and only when that times out reads table by table, skipping the locked ones with a reason.


_CATALOG_QUERY: LiteralString = """
    select n.nspname as schema_name, t.relname as table_name, i.relname as index_name,
           array(
               select pg_get_indexdef(x.indexrelid, k.n, true)
               from generate_series(1, x.indnkeyatts) as k(n)
               order by k.n
           ) as columns,
           array(
               select pg_get_indexdef(x.indexrelid, k.n, true)
               from generate_series(x.indnkeyatts + 1, x.indnatts) as k(n)
               order by k.n
           ) as include_columns,
           am.amname as method,
           pg_get_expr(x.indpred, x.indrelid, true) as predicate,
           x.indisunique as is_unique, x.indisprimary as is_primary,
           c.conname as constraint_name,
           (select string_agg(quote_ident(f.conname), ', ' order by f.conname)
              from pg_constraint f
              where f.conindid = x.indexrelid and f.contype = 'f') as foreign_keys,
           x.indisreplident as is_replica_identity,
           i.relkind = 'I' as is_partitioned,
           (select quote_ident(pn.nspname) || '.' || quote_ident(pi.relname)
              from pg_inherits p
              join pg_class pi on pi.oid = p.inhparent
              join pg_namespace pn on pn.oid = pi.relnamespace
              where p.inhrelid = x.indexrelid) as partition_of,
           x.indisvalid as is_valid, x.indisready as is_ready,
           pg_relation_size(i.oid) as size_bytes,
           coalesce(s.idx_scan, 0) as scans,
           pg_get_indexdef(x.indexrelid) as definition,
           obj_description(x.indexrelid, 'pg_class') as comment
    from pg_index x
    join pg_class i on i.oid = x.indexrelid
    join pg_class t on t.oid = x.indrelid
    join pg_namespace n on n.oid = t.relnamespace
    join pg_am am on am.oid = i.relam
    left join pg_constraint c on c.conindid = x.indexrelid
         and c.contype in ('p', 'u', 'x')
    left join pg_stat_user_indexes s on s.indexrelid = x.indexrelid
    where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
      and n.nspname not like 'pg_temp%%'
      and not exists (
          select 1 from pg_depend d
          where d.classid = 'pg_class'::regclass and d.objid = t.oid and d.deptype = 'e')
      and (%(schemas)s::text[] is null or n.nspname = any(%(schemas)s::text[]))
      and (%(table)s::oid is null or t.oid = %(table)s::oid)
    order by n.nspname, t.relname, i.relname
"""

# The same tables, without taking any lock: names only.
_TABLES_QUERY: LiteralString = """
    select t.oid as table_oid, n.nspname as schema_name, t.relname as table_name,
           array_agg(i.relname::text order by i.relname) as index_names
    from pg_index x
    join pg_class i on i.oid = x.indexrelid
    join pg_class t on t.oid = x.indrelid
    join pg_namespace n on n.oid = t.relnamespace
    where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
      and n.nspname not like 'pg_temp%%'
      and not exists (
          select 1 from pg_depend d
          where d.classid = 'pg_class'::regclass and d.objid = t.oid and d.deptype = 'e')
      and (%(schemas)s::text[] is null or n.nspname = any(%(schemas)s::text[]))
    group by t.oid, n.nspname, t.relname
    order by n.nspname, t.relname
"""


@task(name="fetch_indexes", **RETRY_DEFAULTS)
def fetch_indexes(target: PostgresTarget, schemas: list[str] | None = None) -> list[IndexInfo]:
    """Every index outside the system schemas (or in `schemas`), in one catalog query (it waits
    up to the target's lock_timeout on a locked table; see `fetch_index_catalog`)."""
    with connect(target, statement_timeout_ms=30_000) as conn:
        rows = conn.execute(_CATALOG_QUERY, {"schemas": schemas, "table": None}).fetchall()
    return [IndexInfo.model_validate(r) for r in rows]


@task(name="fetch_index_catalog", **RETRY_DEFAULTS)
def fetch_index_catalog(
    target: PostgresTarget,
    schemas: list[str] | None = None,
    *,
    lock_timeout_ms: int = 1_000,
) -> IndexCatalog:
    """Every index outside the system schemas (or in `schemas`), like `fetch_indexes`, but a table
    locked by another session for longer than `lock_timeout_ms` is skipped with a reason instead
    of failing the read. Also reads `pg_stat_database.stats_reset`."""
    with connect(target, statement_timeout_ms=60_000) as conn:
        conn.read_only = True
        reset = conn.execute(
            "select stats_reset from pg_stat_database where datname = current_database()"
        ).fetchone()
        stats_reset = reset["stats_reset"] if reset else None
        conn.commit()
        params: dict[str, object] = {"schemas": schemas, "table": None}
        try:
            with conn.transaction():
                set_timeouts(conn, lock_timeout_ms=lock_timeout_ms)
                rows = conn.execute(_CATALOG_QUERY, params).fetchall()
            return IndexCatalog(
                indexes=[IndexInfo.model_validate(r) for r in rows],
                locked_tables=[],
                stats_reset=stats_reset,
            )
        except pg_errors.LockNotAvailable:
            pass  # some table is locked: read them one by one below
        indexes: list[IndexInfo] = []
        locked: list[LockedTable] = []
        tables = conn.execute(_TABLES_QUERY, {"schemas": schemas}).fetchall()
        conn.commit()
        for table in tables:
            try:
                with conn.transaction():
                    set_timeouts(conn, lock_timeout_ms=lock_timeout_ms)
                    rows = conn.execute(
                        _CATALOG_QUERY, {"schemas": schemas, "table": table["table_oid"]}
                    ).fetchall()
                indexes.extend(IndexInfo.model_validate(r) for r in rows)
            except pg_errors.LockNotAvailable:
                locked.append(
                    LockedTable(
                        schema_name=table["schema_name"],
                        table_name=table["table_name"],
                        index_names=list(table["index_names"]),
                        reason=(
                            "table locked by another session: lock_timeout "
                            f"({lock_timeout_ms:,} ms) expired; its indexes were not checked"
                        ),
                    )
                )
    return IndexCatalog(indexes=indexes, locked_tables=locked, stats_reset=stats_reset)


_LOCATIONS_QUERY: LiteralString = """
    select n.nspname as schema_name, i.relname as index_name, t.relname as table_name
    from pg_index x
    join pg_class i on i.oid = x.indexrelid
    join pg_class t on t.oid = x.indrelid
    join pg_namespace n on n.oid = i.relnamespace
    where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
      and n.nspname not like 'pg_temp%%'
      and n.nspname not like 'pg_toast_temp%%'
    order by 1, 2
"""


@task(name="fetch_index_locations", **RETRY_DEFAULTS)
def fetch_index_locations(target: PostgresTarget) -> list[IndexLocation]:
    """Every index outside the system schemas, by schema, name and table: pg_class only (no
    lock), to place a name `--drop` gave that the catalog read (limited to `--schema`) did not
    find."""
    with connect(target, statement_timeout_ms=60_000) as conn:
        conn.read_only = True
        rows = conn.execute(_LOCATIONS_QUERY).fetchall()
    return [IndexLocation.model_validate(r) for r in rows]
