"""Partitioned tables in PostgreSQL, read for the partition planner (`decisions.partitioning`).

Read-only: the catalog (strategy, key, first-level children and their bounds), the rows waiting
in a default partition per interval bucket, and the remainders of a hash-partitioned table. No
DDL and no lock on any table: catalog reads use `pg_class`/`pg_inherits` (sizes from `relpages`,
not `pg_relation_size`), so a child held by a concurrent DETACH cannot stall them.

Names: a table is given as PostgreSQL reads a qualified name (`to_regclass` semantics, as a
parameter): unquoted parts fold to lower case, double-quoted parts are kept as written. Build it
from a schema and table name with `qualified_name`, which always quotes.

Bounds: `pg_get_expr(relpartbound)` is text, printed with the session's `DateStyle` and
`TimeZone`. `fetch_partitioned_table` pins both (`ISO`, `UTC`) for its transaction, so the text
is canonical ISO and `parse_range_bound` stays pure (testable without a server) instead of a
second round trip per bound to cast them (`select %s::timestamptz`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, LiteralString, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import errors as pg_errors
from psycopg import sql
from pydantic import BaseModel, Field

from blocks import PostgresTarget
from decisions.partitioning import DefaultRows, ExistingPartition, Interval
from perfops.errors import ConfigurationError
from tasks.postgres.server import connect
from tasks.transient_errors import RETRY_DEFAULTS

Strategy = Literal["range", "list", "hash"]

TIME_KEY_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
CATALOG_TIMEOUT_MS = 30_000
DEFAULT_ROWS_TIMEOUT_MS = 120_000

_STRATEGIES: dict[str, Strategy] = {"r": "range", "l": "list", "h": "hash"}
_RANGE = re.compile(r"\s*FOR VALUES FROM \((?P<lower>.+)\) TO \((?P<upper>.+)\)\s*", re.DOTALL)
_HASH = re.compile(
    r"\s*FOR VALUES WITH \(modulus (?P<modulus>\d+), remainder (?P<remainder>\d+)\)\s*",
    re.IGNORECASE,
)
_VALUE = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[ T](?P<time>\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?))?"
    r"(?P<offset>[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)?"
)


class PartitionKeyColumn(BaseModel):
    """One column of a partition key."""

    name: str | None = Field(description="The column; None when the key part is an expression.")
    type: str = Field(description="format_type of the column without typmod, or 'expression'.")


class PartitionChild(BaseModel):
    """One first-level child of a partitioned table."""

    schema_name: str
    name: str
    bound: str = Field(description="pg_get_expr(relpartbound), e.g. FOR VALUES FROM (...) TO (...)")
    is_default: bool
    rows_estimate: int = Field(description="pg_class.reltuples, rounded; -1: never analyzed.")
    size_bytes: int = Field(description="relpages * block_size (no lock taken; an estimate).")
    is_partitioned: bool = Field(description="The child is itself partitioned.")
    detach_pending: bool = Field(description="A DETACH ... CONCURRENTLY has not finished.")


class PartitionedTable(BaseModel):
    """A declaratively partitioned table as the catalog describes it."""

    schema_name: str
    table_name: str
    strategy: Strategy
    partition_key: str = Field(description="pg_get_partkeydef, e.g. RANGE (created_at)")
    key_columns: list[PartitionKeyColumn]
    children: list[PartitionChild]

    @property
    def key_column(self) -> str | None:
        """The key column of a single-column key (None for an expression or several columns)."""
        return self.key_columns[0].name if len(self.key_columns) == 1 else None

    @property
    def key_type(self) -> str:
        """The type of the first key column."""
        return self.key_columns[0].type

    @property
    def default(self) -> PartitionChild | None:
        return next((c for c in self.children if c.is_default), None)


def qualified_name(schema_name: str, table_name: str) -> str:
    """`"schema"."table"`, each part double-quoted (quotes doubled) as `to_regclass` reads it."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema_name, table_name))


# --------------------------------------------------------------------------- range partitions

_TABLE_QUERY: LiteralString = """
    select c.oid::bigint as oid, n.nspname as schema_name, c.relname as table_name,
           c.relkind::text as relkind, pt.partstrat::text as strategy,
           case when pt.partrelid is not null then pg_get_partkeydef(c.oid) end
               as partition_key,
           coalesce((
               select json_agg(json_build_object(
                          'name', a.attname,
                          'type', coalesce(format_type(a.atttypid, null), 'expression'))
                      order by k.ord)
               from unnest(pt.partattrs::int2[]) with ordinality as k(attnum, ord)
               left join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
           ), '[]'::json) as key_columns,
           coalesce((
               select json_agg(json_build_object(
                          'schema_name', chn.nspname,
                          'name', ch.relname,
                          'bound', pg_get_expr(ch.relpartbound, ch.oid),
                          'is_default', pg_get_expr(ch.relpartbound, ch.oid) = 'DEFAULT',
                          'rows_estimate', round(ch.reltuples)::bigint,
                          'size_bytes',
                              ch.relpages::bigint * current_setting('block_size')::bigint,
                          'is_partitioned', ch.relkind = 'p',
                          'detach_pending', i.inhdetachpending)
                      order by chn.nspname, ch.relname)
               from pg_inherits i
               join pg_class ch on ch.oid = i.inhrelid
               join pg_namespace chn on chn.oid = ch.relnamespace
               where i.inhparent = c.oid
           ), '[]'::json) as children
    from (select to_regclass(%(table)s) as oid) r
    left join pg_class c on c.oid = r.oid
    left join pg_namespace n on n.oid = c.relnamespace
    left join pg_partitioned_table pt on pt.partrelid = c.oid
"""


def _pin_output(conn: psycopg.Connection[Any]) -> None:
    """ISO dates and UTC offsets in every value printed by this transaction."""
    conn.execute(
        "select set_config('DateStyle', 'ISO, YMD', true), set_config('TimeZone', 'UTC', true)"
    )


def _resolve(conn: psycopg.Connection[Any], query: LiteralString, table: str) -> dict[str, Any]:
    """The row of `query` for `table` (resolved with to_regclass), or ConfigurationError."""
    try:
        row = conn.execute(query, {"table": table}).fetchone()
    except pg_errors.InvalidName as exc:
        raise ConfigurationError(
            f"{table!r} is not a valid table name ({exc.diag.message_primary}): give it "
            "schema-qualified, double-quoting parts with capitals, spaces or quotes, e.g. "
            '"My Schema"."AuditLogs" (see qualified_name)'
        ) from None
    if row is None or row["oid"] is None:
        raise ConfigurationError(
            f"table {table} does not exist (to_regclass found no relation): check the schema "
            "and name; unquoted names fold to lower case"
        )
    return dict(row)


def _check_partitioned(table: str, row: dict[str, Any]) -> Strategy:
    if row["strategy"] is None:
        what = "table" if row["relkind"] == "r" else f"relation (relkind {row['relkind']!r})"
        raise ConfigurationError(
            f"{table} is not partitioned (a plain {what}): perfops only rotates declaratively "
            "partitioned tables"
        )
    return _STRATEGIES[row["strategy"]]


@task(name="fetch_partitioned_table", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def fetch_partitioned_table(
    target: PostgresTarget, table: str, *, statement_timeout_ms: int = CATALOG_TIMEOUT_MS
) -> PartitionedTable:
    """A partitioned table's strategy, key and first-level children, in one catalog query.

    Raises `ConfigurationError` when `table` does not exist, is not partitioned, or is
    range-partitioned by anything but one timestamp, timestamptz or date column.
    """
    with connect(target, statement_timeout_ms=statement_timeout_ms) as conn:
        conn.read_only = True
        _pin_output(conn)
        row = _resolve(conn, _TABLE_QUERY, table)
    strategy = _check_partitioned(table, row)
    result = PartitionedTable(
        schema_name=row["schema_name"],
        table_name=row["table_name"],
        strategy=strategy,
        partition_key=row["partition_key"],
        key_columns=row["key_columns"],
        children=row["children"],
    )
    if strategy == "range":
        keys = result.key_columns
        if len(keys) != 1:
            raise ConfigurationError(
                f"{table} is range-partitioned by {len(keys)} columns ({result.partition_key}): "
                "perfops only rotates tables partitioned by one time column"
            )
        if keys[0].name is None:
            raise ConfigurationError(
                f"{table} is partitioned by an expression ({result.partition_key}): perfops only "
                "rotates tables partitioned by a plain timestamp, timestamptz or date column"
            )
        if keys[0].type not in TIME_KEY_TYPES:
            raise ConfigurationError(
                f"{table} is partitioned by a non-time column {keys[0].name} ({keys[0].type}): "
                "perfops only rotates tables range-partitioned by a timestamp, timestamptz or "
                "date column"
            )
    return result


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {tz!r}: use an IANA name such as UTC or Europe/Berlin"
        ) from None


def _parse_value(text: str, key_type: str, zone: ZoneInfo, bound_text: str) -> datetime | None:
    value = text.strip()
    if value.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    if len(value) >= 2 and value[0] == value[-1] == "'":
        value = value[1:-1]
    if value in ("infinity", "-infinity"):
        return None  # unbounded in practice: the planner treats it like MINVALUE/MAXVALUE
    match = _VALUE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"cannot read the bound value {text.strip()!r} in {bound_text!r}: expected an ISO "
            "date or timestamp (years 1-9999, not BC), MINVALUE or MAXVALUE"
        )
    iso = match["date"] + (" " + match["time"] if match["time"] else "")
    offset = match["offset"]
    if key_type == "timestamp with time zone":
        if offset is None:
            raise ValueError(f"timestamptz bound {value!r} in {bound_text!r} has no UTC offset")
        digits = offset[1:].replace(":", "")
        iso += offset[0] + ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
        if len(digits) == 2:
            iso += ":00"
        return datetime.fromisoformat(iso).astimezone(UTC)
    if key_type in ("timestamp without time zone", "date"):
        if offset is not None:
            raise ValueError(f"{key_type} bound {value!r} in {bound_text!r} has a UTC offset")
        return datetime.fromisoformat(iso).replace(tzinfo=zone).astimezone(UTC)
    raise ValueError(f"key type {key_type!r} is not one of {', '.join(TIME_KEY_TYPES)}")


def parse_range_bound(
    bound_text: str, key_type: str, tz: str
) -> tuple[datetime | None, datetime | None]:
    """`FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')` -> (lower,
    upper) as aware UTC datetimes; MINVALUE, MAXVALUE and +-infinity -> None.

    timestamptz bounds carry their offset; `date` and `timestamp without time zone` bounds are
    wall times in `tz` (the policy's zone). Expects ISO text (what `fetch_partitioned_table`
    reads); raises ValueError for anything else, naming the bound.
    """
    zone = _zone(tz)
    match = _RANGE.fullmatch(bound_text)
    if match is None:
        raise ValueError(f"{bound_text!r} is not a range bound (FOR VALUES FROM (...) TO (...))")
    return (
        _parse_value(match["lower"], key_type, zone, bound_text),
        _parse_value(match["upper"], key_type, zone, bound_text),
    )


def to_existing(
    children: Iterable[PartitionChild], key_type: str, tz: str, parent_schema: str | None = None
) -> list[ExistingPartition]:
    """The children as the planner sees them (`plan_rotation`'s `existing`). A child in
    `parent_schema` (the parent's schema) has `schema_name` None; a child elsewhere keeps its
    own schema, so every later step names it by both (with `parent_schema` None, every child
    keeps its schema)."""
    existing = []
    for child in children:
        if child.is_default:
            lower = upper = None
        else:
            lower, upper = parse_range_bound(child.bound, key_type, tz)
        existing.append(
            ExistingPartition(
                name=child.name,
                schema_name=None if child.schema_name == parent_schema else child.schema_name,
                lower=lower,
                upper=upper,
                is_default=child.is_default,
                rows_estimate=max(child.rows_estimate, -1),
            )
        )
    return existing


# --------------------------------------------------------------------------- default partition

_DEFAULT_QUERY: LiteralString = """
    select chn.nspname as schema_name,
           ch.relname as name, format_type(a.atttypid, null) as key_type
    from pg_inherits i
    join pg_class ch on ch.oid = i.inhrelid
    join pg_namespace chn on chn.oid = ch.relnamespace
    left join pg_attribute a
           on a.attrelid = ch.oid and a.attname = %(key)s and not a.attisdropped
    where i.inhparent = %(oid)s::bigint::oid
      and pg_get_expr(ch.relpartbound, ch.oid) = 'DEFAULT'
"""


@task(name="fetch_default_rows", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def fetch_default_rows(
    target: PostgresTarget,
    table: str,
    key_column: str,
    interval: Interval,
    tz: str,
    *,
    statement_timeout_ms: int = DEFAULT_ROWS_TIMEOUT_MS,
) -> list[DefaultRows]:
    """Rows of `table`'s default partition per `interval` bucket aligned in `tz` (weeks start on
    Monday), as aware UTC bucket starts in time order; [] when there is no default partition.

    timestamptz keys are truncated with `date_trunc(unit, key, tz)`; date and timestamp keys are
    wall times in `tz`. Rows whose key is NULL or +-infinity cannot be rescued and are not
    counted. Reads the whole default partition under `statement_timeout_ms`.
    """
    if interval not in get_args(Interval):
        raise ConfigurationError(
            f"interval {interval!r} is not one of {', '.join(get_args(Interval))}"
        )
    _zone(tz)
    with connect(target, statement_timeout_ms=statement_timeout_ms) as conn:
        conn.read_only = True
        _pin_output(conn)
        row = _resolve(conn, _TABLE_QUERY, table)
        _check_partitioned(table, row)
        default = conn.execute(_DEFAULT_QUERY, {"oid": row["oid"], "key": key_column}).fetchone()
        if default is None:
            return []
        key_type = default["key_type"]
        if key_type is None:
            raise ConfigurationError(
                f"{table} has no column {key_column!r} (its key is {row['partition_key']})"
            )
        key = sql.Identifier(key_column)
        if key_type == "timestamp with time zone":
            bucket = sql.SQL("date_trunc(%(unit)s, {key}, %(tz)s)").format(key=key)
        elif key_type in ("timestamp without time zone", "date"):
            bucket = sql.SQL("date_trunc(%(unit)s, {key}::timestamp) at time zone %(tz)s").format(
                key=key
            )
        else:
            raise ConfigurationError(
                f"{table} column {key_column} is {key_type}, not a time column: "
                f"{', '.join(TIME_KEY_TYPES)}"
            )
        query = sql.SQL(
            "select {bucket} as bucket_start, count(*) as n from {schema}.{name} "
            "where isfinite({key}) group by 1 order by 1"
        ).format(
            bucket=bucket,
            schema=sql.Identifier(default["schema_name"]),
            name=sql.Identifier(default["name"]),
            key=key,
        )
        rows = conn.execute(query, {"unit": interval, "tz": tz}).fetchall()
    return [DefaultRows(bucket_start=r["bucket_start"].astimezone(UTC), rows=r["n"]) for r in rows]


# --------------------------------------------------------------------------- hash partitions

_HASH_QUERY: LiteralString = """
    select c.oid::bigint as oid, c.relkind::text as relkind, pt.partstrat::text as strategy,
           array(
               select pg_get_expr(ch.relpartbound, ch.oid)
               from pg_inherits i join pg_class ch on ch.oid = i.inhrelid
               where i.inhparent = c.oid
               order by 1
           ) as bounds
    from (select to_regclass(%(table)s) as oid) r
    left join pg_class c on c.oid = r.oid
    left join pg_partitioned_table pt on pt.partrelid = c.oid
"""


def parse_hash_bound(bound_text: str) -> tuple[int, int]:
    """`FOR VALUES WITH (modulus 32, remainder 7)` -> (32, 7)."""
    match = _HASH.fullmatch(bound_text)
    if match is None:
        raise ValueError(
            f"{bound_text!r} is not a hash bound (FOR VALUES WITH (modulus, remainder))"
        )
    return int(match["modulus"]), int(match["remainder"])


@task(name="fetch_hash_children", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def fetch_hash_children(
    target: PostgresTarget, table: str, *, statement_timeout_ms: int = CATALOG_TIMEOUT_MS
) -> tuple[int | None, list[int]]:
    """The modulus of a hash-partitioned table's children (None: no children yet) and their
    remainders, sorted (`plan_hash`'s `existing_modulus` and `existing_remainders`).

    Raises `ConfigurationError` when the table does not exist, is not hash-partitioned, or its
    children use several moduli (a mixed layout plan_hash cannot compare).
    """
    with connect(target, statement_timeout_ms=statement_timeout_ms) as conn:
        conn.read_only = True
        row = _resolve(conn, _HASH_QUERY, table)
    strategy = _check_partitioned(table, row)
    if strategy != "hash":
        raise ConfigurationError(
            f"{table} is {strategy}-partitioned, not hash-partitioned: use the range rotation "
            "(fetch_partitioned_table) for it"
        )
    parsed = [parse_hash_bound(b) for b in row["bounds"]]
    moduli = sorted({m for m, _ in parsed})
    if len(moduli) > 1:
        raise ConfigurationError(
            f"{table}'s hash partitions use several moduli ({', '.join(map(str, moduli))}): "
            "perfops only plans tables whose partitions share one modulus"
        )
    return (moduli[0] if moduli else None), sorted(r for _, r in parsed)
