"""The index catalog: every index of the user's tables with its columns, predicate, method,
constraint, validity, size and scans since the statistics were reset."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel

from blocks import PostgresTarget
from tasks.postgres import connect
from tasks.transient_errors import RETRY_DEFAULTS


class IndexInfo(BaseModel):
    """One index as the catalog describes it."""

    schema_name: str
    table_name: str
    index_name: str
    columns: list[str]  # key columns in order; an expression appears as its text
    include_columns: list[str]
    method: str  # btree, hash, gin, gist, brin, ...
    predicate: str | None  # partial index WHERE clause, normalised by the server
    is_unique: bool
    is_primary: bool
    constraint_name: str | None  # the constraint it backs (primary key, unique, exclusion)
    is_valid: bool
    is_ready: bool
    size_bytes: int
    scans: int  # idx_scan since the last statistics reset
    definition: str  # pg_get_indexdef


@task(name="fetch_indexes", **RETRY_DEFAULTS)
def fetch_indexes(target: PostgresTarget, schemas: list[str] | None = None) -> list[IndexInfo]:
    """Every index outside the system schemas (or in `schemas`), in one catalog query."""
    with connect(target, statement_timeout_ms=30_000) as conn:
        rows = conn.execute(
            """
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
                   x.indisvalid as is_valid, x.indisready as is_ready,
                   pg_relation_size(i.oid) as size_bytes,
                   coalesce(s.idx_scan, 0) as scans,
                   pg_get_indexdef(x.indexrelid) as definition
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
              and not exists (  -- tables that belong to an extension (pg_partman's config...)
                  select 1 from pg_depend d
                  where d.classid = 'pg_class'::regclass and d.objid = t.oid and d.deptype = 'e')
              and (%(schemas)s::text[] is null or n.nspname = any(%(schemas)s::text[]))
            order by n.nspname, t.relname, i.relname
            """,
            {"schemas": schemas},
        ).fetchall()
    return [IndexInfo.model_validate(r) for r in rows]
