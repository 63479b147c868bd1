"""Column statistics for skew-aware costing: `pg_stats` (most common values and their
frequencies, histogram bounds, n_distinct, null_frac) and the table's row estimate, for the
columns the workload's parameters are compared with. Read-only, one query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import LiteralString

from prefect import task

from blocks import PostgresTarget
from decisions.index_costing import ColumnStats, stats_key
from tasks.postgres.server import connect
from tasks.transient_errors import RETRY_DEFAULTS

_STATS_QUERY: LiteralString = """
    select distinct on (w.schema_name, w.table_name, w.column_name)
           w.schema_name, w.table_name, w.column_name as column,
           s.null_frac, s.n_distinct, greatest(c.reltuples, 0) as reltuples,
           coalesce(s.most_common_vals::text::text[], '{}') as most_common_vals,
           coalesce(s.most_common_freqs, '{}') as most_common_freqs,
           coalesce(s.histogram_bounds::text::text[], '{}') as histogram_bounds
    from unnest(%(schemas)s::text[], %(tables)s::text[], %(columns)s::text[])
         as w(schema_name, table_name, column_name)
    join pg_stats s on s.schemaname = w.schema_name and s.tablename = w.table_name
                   and s.attname = w.column_name
    join pg_namespace n on n.nspname = w.schema_name
    join pg_class c on c.relnamespace = n.oid and c.relname = w.table_name
    order by w.schema_name, w.table_name, w.column_name, s.inherited
"""


@task(name="fetch_column_stats", **RETRY_DEFAULTS)
def fetch_column_stats(
    target: PostgresTarget, columns: Sequence[tuple[str, str, str]]
) -> dict[tuple[str, str, str], ColumnStats]:
    """`pg_stats` of each (schema, table, column); a column without statistics (never analyzed,
    or hidden from this role) is absent from the result."""
    if not columns:
        return {}
    with connect(target, statement_timeout_ms=30_000) as conn:
        conn.read_only = True
        rows = conn.execute(
            _STATS_QUERY,
            {
                "schemas": [c[0] for c in columns],
                "tables": [c[1] for c in columns],
                "columns": [c[2] for c in columns],
            },
        ).fetchall()
    out: dict[tuple[str, str, str], ColumnStats] = {}
    for row in rows:
        stats = ColumnStats.model_validate(row)
        out[stats_key(stats.schema_name, stats.table_name, stats.column)] = stats
    return out
