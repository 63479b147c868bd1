"""The only writer of the index advisor: `CREATE INDEX CONCURRENTLY`, safely.

For each index: refuse on a replica; take a per-table advisory lock; re-check inside the lock
that no valid index with the same leading columns exists (another run, or a person, may have
built one) and that the index's name is free (a relation of that name is reported, never built
over or dropped); build `CONCURRENTLY` under `lock_timeout` and a build-sized
`statement_timeout`; on failure drop the INVALID index the build left behind, and only that: an
index of the name, INVALID, on the candidate's table, which did not exist before the build;
afterwards verify the index is valid and re-plan the statements it was meant to help, reporting
the real cost change. Leftover INVALID `perfops_idx_*` indexes of a killed run on the same table
are dropped first, so a rerun completes cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, LiteralString

import psycopg
from prefect import task
from psycopg import sql
from pydantic import BaseModel

from blocks import PostgresTarget
from decisions.index_health import build_comment
from decisions.index_suggestions import BuildResult, Measurement
from decisions.indexing import Candidate, column_names, index_name, same_keys, same_predicate
from perfops.errors import LockBusy
from perfops.redaction import one_line
from tasks.postgres.server import advisory_lock, connect, ensure_primary, set_timeouts
from tasks.postgres.statements import explain_generic, plan_cost, plan_index_names

NAME_PREFIX = "perfops_idx_"
CLEANUP_TIMEOUT_MS = 60_000


class BuildRequest(BaseModel):
    candidate: Candidate
    queries: dict[int, str]  # the statements it should help, to verify afterwards
    expected_costs: dict[int, float]  # queryid -> cost before the build
    # queryid -> (label, statement with every value bound): run before and after the build
    measure: dict[int, list[tuple[str, str]]] = {}


# One measured run of a statement (EXPLAIN ANALYZE, rolled back) may take this long.
MEASURE_TIMEOUT_MS = 5_000


def _execution_ms(conn: psycopg.Connection[Any], query: str) -> float:
    """Run `query` once under EXPLAIN ANALYZE in a read-only transaction that is rolled back,
    bounded by MEASURE_TIMEOUT_MS; its execution time in ms."""
    with conn.transaction(force_rollback=True):
        conn.execute("set local transaction_read_only = on")
        conn.execute(
            sql.SQL("set local statement_timeout = {}").format(sql.Literal(MEASURE_TIMEOUT_MS))
        )
        # The text is the server's own normalised statement with representative values from
        # pg_stats bound by the parser (decisions.index_costing.bind_parameter), not user input.
        row = conn.execute(sql.SQL("explain (analyze, format json) ") + sql.SQL(query)).fetchone()
    plan = next(iter(row.values())) if isinstance(row, dict) else row[0]  # type: ignore[index]
    return float(plan[0]["Execution Time"])


def _measure(
    conn: psycopg.Connection[Any],
    measure: dict[int, list[tuple[str, str]]],
    before: list[Measurement] | None = None,
) -> list[Measurement]:
    """Each statement's execution time now: the "before" side, or (given `before`) the after."""
    out = []
    sides = before or [
        Measurement(queryid=q, label=label) for q, runs in measure.items() for label, _ in runs
    ]
    texts = {(q, label): text for q, runs in measure.items() for label, text in runs}
    for m in sides:
        try:
            took = _execution_ms(conn, texts[(m.queryid, m.label)])
        except psycopg.Error as exc:
            out.append(m.model_copy(update={"error": m.error or one_line(exc)}))
            continue
        side = "after_ms" if before is not None else "before_ms"
        out.append(m.model_copy(update={side: round(took, 3)}))
    return out


def include_sql(candidate: Candidate) -> sql.Composable:
    """` INCLUDE (columns)` of a covering candidate, else nothing."""
    if not candidate.include:
        return sql.SQL("")
    return sql.SQL(" INCLUDE ({})").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in candidate.include)
    )


_TESTS: dict[str, sql.SQL] = {
    "IS NULL": sql.SQL(" IS NULL"),
    "IS NOT NULL": sql.SQL(" IS NOT NULL"),
    "IS TRUE": sql.SQL(" IS TRUE"),
    "IS FALSE": sql.SQL(" IS FALSE"),
    "TRUE": sql.SQL(""),
}


def predicate_sql(candidate: Candidate) -> sql.Composable:
    """` WHERE predicate` of a partial candidate, else nothing: the column through
    `sql.Identifier`, the literal through `sql.Literal` (a number as a number, a string quoted)."""
    predicate = candidate.predicate
    if predicate is None:
        return sql.SQL("")
    column = sql.Identifier(predicate.column)
    if predicate.test == "NOT":
        return sql.SQL(" WHERE NOT ") + column
    if predicate.test == "=":
        value = predicate.value or ""
        literal: sql.Composable
        if predicate.literal == "boolean":
            literal = sql.Literal(value == "true")
        elif predicate.literal == "number":
            literal = sql.Literal(Decimal(value))  # InvalidOperation for anything else
        else:
            literal = sql.Literal(value)
        return sql.SQL(" WHERE ") + column + sql.SQL(" = ") + literal
    if predicate.test not in _TESTS:
        raise ValueError(f"unknown predicate test {predicate.test!r}")
    return sql.SQL(" WHERE ") + column + _TESTS[predicate.test]


def create_index_sql(
    candidate: Candidate,
    *,
    name: str | None = None,
    on: tuple[str, str] | None = None,
    only: bool = False,
) -> sql.Composed:
    """`CREATE INDEX CONCURRENTLY name ON schema.table USING btree (columns) [INCLUDE (...)]
    [WHERE predicate]`. `name`/`on`: the same index under another name on another table (one
    partition of the candidate's table); `only`: `CREATE INDEX name ON ONLY table` (a
    partitioned table's own index, invalid until every partition's index is attached)."""
    head = (
        "CREATE INDEX {} ON ONLY {} USING btree ({}){}{}"
        if only
        else ("CREATE INDEX CONCURRENTLY {} ON {} USING btree ({}){}{}")
    )
    return sql.SQL(head).format(
        sql.Identifier(name or index_name(candidate)),
        sql.Identifier(*(on or (candidate.schema_name, candidate.table_name))),
        sql.SQL(", ").join(
            sql.Identifier(c) + sql.SQL(" DESC" if c in candidate.descending else "")
            for c in candidate.columns
        ),
        include_sql(candidate),
        predicate_sql(candidate),
    )


def create_index_ddl(candidate: Candidate) -> str:
    """`create_index_sql` as the text a person reads (identifiers quoted): the suggestion's DDL."""
    return create_index_sql(candidate).as_string(None) + ";"


def partitioned_index_ddl(candidate: Candidate) -> str:
    """The suggestion's DDL on a partitioned table, where `CREATE INDEX CONCURRENTLY` fails:
    the steps `--apply` takes (`_build_partitioned`), as a person would run them."""
    name = index_name(candidate)
    table = sql.Identifier(candidate.schema_name, candidate.table_name).as_string(None)
    each = create_index_sql(candidate, name=f"{name[:50]}_p<oid>", on=("<schema>", "<partition>"))
    return "\n".join(
        [
            f"-- {table} is partitioned: CREATE INDEX CONCURRENTLY cannot build on it; "
            "--apply builds it as",
            create_index_sql(candidate, only=True).as_string(None) + ";",
            "-- then for each partition (a sub-partitioned one: ON ONLY and the same again):",
            "-- " + each.as_string(None) + ";",
            "-- "
            + sql.SQL("ALTER INDEX {} ATTACH PARTITION {}")
            .format(
                sql.Identifier(candidate.schema_name, name),
                sql.Identifier("<schema>", f"{name[:50]}_p<oid>"),
            )
            .as_string(None)
            + ";",
        ]
    )


def _invalid_leftovers(conn: psycopg.Connection[Any], schema: str, table: str) -> list[str]:
    rows = conn.execute(
        """
        select i.relname as name
        from pg_index x join pg_class i on i.oid = x.indexrelid
        join pg_class t on t.oid = x.indrelid join pg_namespace n on n.oid = t.relnamespace
        where n.nspname = %s and t.relname = %s and not x.indisvalid and i.relname like %s
        """,
        (schema, table, NAME_PREFIX.replace("_", r"\_") + "%"),
    ).fetchall()
    return [r["name"] for r in rows]


def _existing_cover(conn: psycopg.Connection[Any], candidate: Candidate) -> str | None:
    rows = conn.execute(
        """
        select i.relname as name,
               array(select pg_get_indexdef(x.indexrelid, k.n, true)
                     from generate_series(1, x.indnkeyatts) k(n) order by k.n) as columns,
               array(select pg_get_indexdef(x.indexrelid, k.n, true)
                     from generate_series(1, x.indnatts) k(n) order by k.n) as all_columns,
               pg_get_expr(x.indpred, x.indrelid, true) as predicate
        from pg_index x join pg_class i on i.oid = x.indexrelid
        join pg_class t on t.oid = x.indrelid join pg_namespace n on n.oid = t.relnamespace
        join pg_am am on am.oid = i.relam
        where n.nspname = %s and t.relname = %s and x.indisvalid and am.amname = 'btree'
        """,
        (candidate.schema_name, candidate.table_name),
    ).fetchall()
    for row in rows:
        if (
            same_predicate(row["predicate"], candidate.predicate)
            and same_keys(row["columns"][: len(candidate.columns)], candidate.key_labels)
            and set(candidate.include) <= column_names(row["all_columns"])
        ):
            return str(row["name"])
    return None


def _drop_concurrently(conn: psycopg.Connection[Any], schema: str, name: str) -> None:
    """Drop an index without blocking writes; a partitioned table's own index (which cannot be
    dropped CONCURRENTLY, and holds no data) with a plain DROP under the caller's lock_timeout:
    it drops its partitions' attached indexes with it."""
    found = _named(conn, schema, name)
    if found is not None and found["relkind"] == "I":
        conn.execute(sql.SQL("drop index if exists {}").format(sql.Identifier(schema, name)))
        return
    conn.execute(
        sql.SQL("drop index concurrently if exists {}").format(sql.Identifier(schema, name))
    )


_NAMED: LiteralString = """
    select c.oid::bigint as oid, c.relkind::text as relkind, x.indisvalid as valid,
           tn.nspname as table_schema, t.relname as table_name
    from pg_class c
    join pg_namespace n on n.oid = c.relnamespace
    left join pg_index x on x.indexrelid = c.oid
    left join pg_class t on t.oid = x.indrelid
    left join pg_namespace tn on tn.oid = t.relnamespace
    where n.nspname = %(schema)s and c.relname = %(name)s
"""


def _named(conn: psycopg.Connection[Any], schema: str, name: str) -> dict[str, Any] | None:
    """The relation `schema.name` (an index: its table and validity), or None."""
    row = conn.execute(_NAMED, {"schema": schema, "name": name}).fetchone()
    return dict(row) if row else None


def _name_taken(found: dict[str, Any], schema: str, name: str) -> str:
    what = (
        f"an index on {found['table_schema']}.{found['table_name']}"
        if found["relkind"] in ("i", "I")
        else f"a relation (relkind {found['relkind']!r})"
    )
    return (
        f"not built: the name {schema}.{name} is taken by {what}; perfops never builds over "
        "or drops an index it did not build here: rename or drop that one, then run again"
    )


def _drop_own_leftover(conn: psycopg.Connection[Any], schema: str, table: str, name: str) -> str:
    """Drop the INVALID index this build left, and nothing else: only an index named `name`
    that is INVALID and on `schema.table` (the caller checked the name was free before the
    build). Returns what happened, for the build's detail."""
    found = _named(conn, schema, name)
    if found is None:
        return "the build left no index behind"
    if found["relkind"] not in ("i", "I") or (found["table_schema"], found["table_name"]) != (
        schema,
        table,
    ):
        return f"{schema}.{name} is not an index on {schema}.{table}: left alone"
    if found["valid"]:
        return f"{schema}.{name} is valid: left alone"
    _drop_concurrently(conn, schema, name)
    return "the INVALID index it left was dropped"


def _cleanup_timeouts(conn: psycopg.Connection[Any], lock_timeout_ms: int) -> None:
    """The session's timeouts for catalog work and cleanup (the build runs under its own)."""
    set_timeouts(
        conn, lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=CLEANUP_TIMEOUT_MS, local=False
    )


class _NotBuilt(Exception):
    """A partition's index could not be built or attached (the message says why)."""


def _partition_index_name(name: str, partition_oid: int) -> str:
    """The index of one partition under the partitioned index `name`: `name` cut to fit, then
    `_p<partition oid>`, so a rerun after a crash finds (and reuses) what the last one built."""
    suffix = f"_p{partition_oid}"
    return name[: 63 - len(suffix)] + suffix


def _partitions(conn: psycopg.Connection[Any], schema: str, table: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        """
        select n.nspname as schema, c.relname as name, c.oid::bigint as oid,
               c.relkind::text as relkind
        from pg_inherits i join pg_class c on c.oid = i.inhrelid
        join pg_namespace n on n.oid = c.relnamespace
        where i.inhparent = %s::regclass order by n.nspname, c.relname
        """,
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    return [dict(r) for r in rows]


def _attached(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    row = conn.execute(
        "select exists (select 1 from pg_inherits where inhrelid = %s::regclass) as attached",
        (sql.Identifier(schema, name).as_string(conn),),
    ).fetchone()
    return bool(row and row["attached"])


def _index_partitions(
    conn: psycopg.Connection[Any],
    candidate: Candidate,
    index: tuple[str, str],
    table: tuple[str, str],
    made: list[tuple[str, str]],
    *,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
) -> None:
    """Give every partition of `table` its copy of the candidate and attach it to `index` (the
    table's own index): a leaf's built CONCURRENTLY, a sub-partitioned one's ON ONLY and filled
    the same way. A copy a crashed run built under the same name is reused, an INVALID one
    dropped and built again; a name taken by anything else stops the build."""
    for part in _partitions(conn, *table):
        where = (part["schema"], part["name"])
        if part["relkind"] not in ("r", "p"):
            raise _NotBuilt(
                f"partition {where[0]}.{where[1]} (relkind {part['relkind']!r}) cannot have "
                "an index: build it by hand on the other partitions"
            )
        child = (part["schema"], _partition_index_name(index[1], int(part["oid"])))
        found = _named(conn, *child)
        if found is not None and (
            found["relkind"] not in ("i", "I")
            or (found["table_schema"], found["table_name"]) != where
        ):
            raise _NotBuilt(_name_taken(found, *child))
        if found is not None and found["relkind"] == "i" and not found["valid"]:
            _drop_concurrently(conn, *child)
            found = None
        if found is None:
            statement = create_index_sql(
                candidate, name=child[1], on=where, only=part["relkind"] == "p"
            )
            set_timeouts(conn, statement_timeout_ms=statement_timeout_ms, local=False)
            try:
                conn.execute(statement)
            finally:
                _cleanup_timeouts(conn, lock_timeout_ms)
            made.append(child)
        if part["relkind"] == "p":
            _index_partitions(
                conn,
                candidate,
                child,
                where,
                made,
                lock_timeout_ms=lock_timeout_ms,
                statement_timeout_ms=statement_timeout_ms,
            )
        if not _attached(conn, *child):
            conn.execute(
                sql.SQL("alter index {} attach partition {}").format(
                    sql.Identifier(*index), sql.Identifier(*child)
                )
            )


def _build_partitioned(
    conn: psycopg.Connection[Any],
    candidate: Candidate,
    name: str,
    *,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
) -> str | None:
    """CREATE INDEX CONCURRENTLY cannot build on a partitioned table, so build it the way
    PostgreSQL allows without blocking writes: the table's own index `ON ONLY` (catalog only,
    invalid until complete), each partition's copy CONCURRENTLY, each attached; the table's
    index turns valid once every partition's copy is attached. Returns None, or why it failed
    after dropping what it made (the table's index first: it drops the attached copies)."""
    schema, table = candidate.schema_name, candidate.table_name
    made: list[tuple[str, str]] = []
    try:
        if _named(conn, schema, name) is None:
            conn.execute(create_index_sql(candidate, only=True))
        made.insert(0, (schema, name))
        _index_partitions(
            conn,
            candidate,
            (schema, name),
            (schema, table),
            made,
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
        )
    except (psycopg.Error, _NotBuilt) as exc:
        why = f"build failed: {one_line(exc) if isinstance(exc, psycopg.Error) else exc}"
        try:
            _cleanup_timeouts(conn, lock_timeout_ms)
            for index in made:  # the table's index first: its attached copies go with it
                _drop_concurrently(conn, *index)
            why += f"; the {len(made)} indexes it made were dropped" if made else ""
        except psycopg.Error as drop_exc:
            why += (
                f"; dropping the indexes it made failed too: {one_line(drop_exc)} (the next "
                "run finishes this index, reusing the partitions' copies already built)"
            )
        return why
    return None


def _replan(
    conn: psycopg.Connection[Any], queries: dict[int, str]
) -> tuple[dict[int, float], dict[int, set[str]]]:
    costs: dict[int, float] = {}
    used: dict[int, set[str]] = {}
    for qid, query in queries.items():
        try:
            with conn.transaction(force_rollback=True):
                plan = explain_generic(conn, query)
        except psycopg.Error:
            continue  # a statement that no longer plans is reported by its missing cost
        costs[qid], used[qid] = plan_cost(plan), plan_index_names(plan)
    return costs, used


def build_one(
    conn: psycopg.Connection[Any],
    request: BuildRequest,
    *,
    lock_timeout_ms: int,
    statement_timeout_ms: int,
) -> BuildResult:
    """Build one index on an autocommit connection (see the module docstring for the steps)."""
    candidate = request.candidate
    name = index_name(candidate)
    result = BuildResult(
        key=candidate.key,
        index_name=name,
        status="failed",
        detail="",
        costs_before=request.expected_costs,
    )
    schema, table = candidate.schema_name, candidate.table_name
    try:
        with advisory_lock(conn, f"index-build:{schema}.{table}"):
            # catalog work and cleanup under ordinary timeouts; the build under its own
            _cleanup_timeouts(conn, lock_timeout_ms)
            table_row = _named(conn, schema, table)
            partitioned = table_row is not None and table_row["relkind"] == "p"
            for leftover in _invalid_leftovers(conn, schema, table):
                if not (partitioned and leftover == name):  # a crashed run's: resumed below
                    _drop_concurrently(conn, schema, leftover)
            cover = _existing_cover(conn, candidate)
            if cover is not None:
                result.status, result.detail = "already covered", f"{cover} already covers it"
                return result
            taken = _named(conn, schema, name)
            unfinished = (  # this index of a partitioned table, left INVALID by a crashed run
                partitioned
                and taken is not None
                and taken["relkind"] == "I"
                and (taken["table_schema"], taken["table_name"]) == (schema, table)
                and not taken["valid"]
            )
            if taken is not None and not unfinished:  # never build over, or drop, others'
                result.detail = _name_taken(taken, schema, name)
                return result
            measured = _measure(conn, request.measure) if request.measure else []
            started = time.monotonic()
            if partitioned:
                failed = _build_partitioned(
                    conn,
                    candidate,
                    name,
                    lock_timeout_ms=lock_timeout_ms,
                    statement_timeout_ms=statement_timeout_ms,
                )
                if failed is not None:
                    result.detail = failed
                    return result
            else:
                statement = create_index_sql(candidate)
                try:
                    set_timeouts(conn, statement_timeout_ms=statement_timeout_ms, local=False)
                    conn.execute(statement)
                except psycopg.Error as exc:
                    result.detail = f"build failed: {one_line(exc)}"
                    try:
                        _cleanup_timeouts(conn, lock_timeout_ms)
                        result.detail += "; " + _drop_own_leftover(conn, schema, table, name)
                    except psycopg.Error as drop_exc:
                        result.detail += (
                            f"; dropping the INVALID index failed too: {one_line(drop_exc)}"
                        )
                    return result
            result.seconds = time.monotonic() - started
            set_timeouts(conn, statement_timeout_ms=CLEANUP_TIMEOUT_MS, local=False)
            # a partitioned table's index holds no data: its size and names are its tree's
            row = conn.execute(
                "select x.indisvalid as valid, "
                "(select coalesce(sum(pg_relation_size(t.relid)), 0) "
                " from pg_partition_tree(x.indexrelid) t) as size, "
                "array(select c.relname::text from pg_partition_tree(x.indexrelid) t "
                " join pg_class c on c.oid = t.relid) as names "
                "from pg_index x where x.indexrelid = %s::regclass",
                (sql.Identifier(schema, name).as_string(conn),),
            ).fetchone()
            if not row or not row["valid"]:
                if partitioned:
                    _drop_concurrently(conn, schema, name)
                    dropped = "it and the copies attached to it were dropped"
                else:
                    dropped = _drop_own_leftover(conn, schema, table, name)
                result.detail = f"the build finished but the index is not valid; {dropped}"
                return result
            result.size_bytes = int(row["size"])
            # the build record check_index_health reads: a new index is not "unused" yet
            conn.execute(
                sql.SQL("comment on index {} is {}").format(
                    sql.Identifier(schema, name), sql.Literal(build_comment(datetime.now(UTC)))
                )
            )
            built = set(row["names"]) | {name}
            after, used = _replan(conn, request.queries)
            result.costs_after = after
            result.used_by = sorted(qid for qid, names in used.items() if names & built)
            result.status = "created"
            result.detail = (
                f"valid, {result.size_bytes:,} bytes, used by {len(result.used_by)} of "
                f"{len(request.queries)} statements"
            )
            if measured:
                result.measured = _measure(conn, request.measure, measured)
                result.detail += "; measured (EXPLAIN ANALYZE, rolled back): " + "; ".join(
                    m.describe() for m in result.measured
                )
    except LockBusy as exc:
        result.detail = str(exc)
    except psycopg.Error as exc:
        result.detail = one_line(exc)
    return result


@task(name="create_indexes")
def create_indexes(
    target: PostgresTarget,
    requests: Sequence[BuildRequest],
    *,
    lock_timeout_ms: int = 5_000,
    statement_timeout_ms: int = 3_600_000,
) -> list[BuildResult]:
    """Build each requested index in turn (one connection, autocommit: CONCURRENTLY needs it)."""
    with connect(target, autocommit=True) as conn:
        ensure_primary(conn, "create indexes")
        return [
            build_one(
                conn, r, lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=statement_timeout_ms
            )
            for r in requests
        ]
