"""What-if costing with hypopg: the cost of each statement with each candidate index alone, and
with the chosen set together. Hypothetical indexes live only in this session's memory; nothing
is written to the database.

A statement's cost is its generic plan's, or, given its `CostingPlan`
(`decisions.index_costing`), the frequency-weighted mean of its generic plan and its custom
plans at representative values of a skewed parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from prefect import task
from psycopg import sql
from pydantic import BaseModel

from blocks import PostgresTarget
from decisions.index_costing import CostingPlan, weighted_cost
from decisions.indexing import Candidate, Catalog, Costing, TableRef
from perfops.errors import MissingPrerequisite
from perfops.redaction import one_line
from tasks.postgres.index_builds import include_sql, predicate_sql
from tasks.postgres.server import connect, extension_off_path
from tasks.postgres.statements import explain_generic, plan_cost, plan_index_names
from tasks.transient_errors import RETRY_DEFAULTS

HYPOPG_FIX = "apt-get install postgresql-{major}-hypopg, then CREATE EXTENSION hypopg;"


class CatalogSnapshot(BaseModel):
    """User tables with their columns, and the session's search_path."""

    tables: dict[str, list[str]]  # "schema.table" -> columns
    search_path: list[str]
    partitioned: list[str] = []  # "schema.table" of the partitioned ones

    def catalog(self) -> Catalog:
        out: Catalog = {}
        for key, columns in self.tables.items():
            schema, _, name = key.partition(".")
            out[TableRef(schema, name)] = columns
        return out


class PlannedQuery(BaseModel):
    queryid: int
    cost: float | None  # None when it could not be planned
    error: str | None = None
    indexes_used: list[str] = []
    hot_cost: float | None = None  # at the hottest parameter value, when skew-costed


class SetVerification(BaseModel):
    """Costs with every chosen hypothetical index present at once."""

    plans: dict[int, PlannedQuery]
    used: dict[str, list[int]]  # candidate key -> queryids whose plan uses it


def ensure_hypopg(conn: psycopg.Connection[Any]) -> None:
    """Create hypopg if it is available and the role may; otherwise say how to fix it."""
    row = conn.execute(
        "select installed_version, default_version from pg_available_extensions "
        "where name = 'hypopg'"
    ).fetchone()
    major = conn.info.server_version // 10_000
    if row is None:
        raise MissingPrerequisite(
            f"hypopg is not available on the server: {HYPOPG_FIX.format(major=major)}"
        )
    if row["installed_version"] is not None:
        off_path = extension_off_path(conn, "hypopg")
        if off_path:
            raise MissingPrerequisite(off_path)
    else:
        try:
            conn.execute("create extension if not exists hypopg")
            conn.commit()
        except psycopg.errors.InsufficientPrivilege:
            conn.rollback()
            raise MissingPrerequisite(
                f"hypopg is not installed in database {conn.info.dbname} and this role may not "
                "create it: run CREATE EXTENSION hypopg; as the database owner"
            ) from None
        except psycopg.errors.ReadOnlySqlTransaction:
            # A standby (or a read-only session) cannot create it; on the primary it replicates.
            conn.rollback()
            replica = conn.execute("select pg_is_in_recovery() as replica").fetchone()
            conn.rollback()
            why = (
                "the server is a replica (pg_is_in_recovery())"
                if replica and replica["replica"]
                else "this session is read-only (default_transaction_read_only)"
            )
            raise MissingPrerequisite(
                f"hypopg is not installed in database {conn.info.dbname} and {why}, so perfops "
                "cannot create it: run CREATE EXTENSION hypopg; on the primary as the database "
                "owner (it reaches the replicas by replication)"
            ) from None


@task(name="fetch_table_catalog", **RETRY_DEFAULTS)
def fetch_table_catalog(target: PostgresTarget) -> CatalogSnapshot:
    """User tables (not extension-owned), their columns, and the search_path."""
    with connect(target, statement_timeout_ms=30_000) as conn:
        rows = conn.execute(
            """
            select n.nspname as schema_name, c.relname as table_name,
                   array_agg(a.attname::text order by a.attnum) as columns,
                   c.relkind = 'p' as partitioned
            from pg_class c
            join pg_namespace n on n.oid = c.relnamespace
            join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
            where c.relkind in ('r', 'p', 'm')
              and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
              and n.nspname not like 'pg_temp%%'
              and not exists (
                  select 1 from pg_depend d
                  where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
            group by n.nspname, c.relname, c.relkind
            """
        ).fetchall()
        path = conn.execute("select current_schemas(false) as path").fetchone()
    return CatalogSnapshot(
        tables={f"{r['schema_name']}.{r['table_name']}": list(r["columns"]) for r in rows},
        search_path=list(path["path"]) if path else ["public"],
        partitioned=[f"{r['schema_name']}.{r['table_name']}" for r in rows if r["partitioned"]],
    )


def _hypothetical(conn: psycopg.Connection[Any], candidate: Candidate) -> tuple[int, str]:
    ddl = (
        sql.SQL("create index on {} using btree ({}){}{}")
        .format(
            sql.Identifier(candidate.schema_name, candidate.table_name),
            sql.SQL(", ").join(
                sql.Identifier(c) + sql.SQL(" DESC" if c in candidate.descending else "")
                for c in candidate.columns
            ),
            include_sql(candidate),
            predicate_sql(candidate),
        )
        .as_string(conn)
    )
    row = conn.execute(
        "select indexrelid, indexname from hypopg_create_index(%s)", (ddl,)
    ).fetchone()
    assert row is not None
    return int(row["indexrelid"]), str(row["indexname"])


def _plan(conn: psycopg.Connection[Any], query: str) -> tuple[float, set[str]]:
    try:
        plan = explain_generic(conn, query)
    finally:
        conn.rollback()
    return plan_cost(plan), plan_index_names(plan)


def _cost(
    conn: psycopg.Connection[Any], query: str, plan: CostingPlan | None
) -> tuple[float, float | None, set[str]]:
    """(cost, cost at the hottest value, indexes used): the generic plan's, or the weighted mean
    over the plan's variants. A generic plan that fails raises (the statement cannot be planned);
    a custom variant that fails is left out of the weighting."""
    if plan is None or not plan.skewed:  # the generic plan (a LIMIT $n bound: `plan`'s text)
        cost, used = _plan(conn, plan.variants[0].query if plan is not None else query)
        return cost, None, used
    costs: list[float | None] = []
    indexes: set[str] = set()
    hot: float | None = None
    hottest = plan.hottest
    for variant in plan.variants:
        try:
            cost, used = _plan(conn, variant.query)
        except psycopg.Error:
            if variant.value is None:
                raise
            costs.append(None)
            continue
        costs.append(cost)
        if variant.weight > 0:
            indexes |= used
        if variant is hottest:
            hot = cost
    total = weighted_cost(plan.variants, costs)
    assert total is not None  # the generic variant was planned
    return total, hot, indexes


@task(name="cost_base_plans", **RETRY_DEFAULTS)
def cost_base_plans(
    target: PostgresTarget,
    queries: dict[int, str],
    plans: Mapping[int, CostingPlan] | None = None,
) -> dict[int, PlannedQuery]:
    """The cost of each statement as things are (generic, or weighted by its `plans` entry); a
    failure is recorded, not raised."""
    out: dict[int, PlannedQuery] = {}
    with connect(target, statement_timeout_ms=30_000) as conn:
        ensure_hypopg(conn)
        conn.execute("select hypopg_reset()")
        conn.commit()
        for qid, query in queries.items():
            try:
                cost, hot, used = _cost(conn, query, (plans or {}).get(qid))
                out[qid] = PlannedQuery(
                    queryid=qid, cost=cost, indexes_used=sorted(used), hot_cost=hot
                )
            except psycopg.Error as exc:
                message = one_line(exc)
                out[qid] = PlannedQuery(
                    queryid=qid, cost=None, error=f"cannot be planned: {message}"
                )
    return out


@task(name="cost_candidates", **RETRY_DEFAULTS)
def cost_candidates(
    target: PostgresTarget,
    queries: dict[int, str],
    tables_of: dict[int, list[str]],
    candidates: Sequence[Candidate],
    plans: Mapping[int, CostingPlan] | None = None,
    relevant: Mapping[str, set[int]] | None = None,
) -> list[Costing]:
    """For each candidate alone: its size estimate and the cost of every statement on its table
    (with `relevant`, by candidate key: only of those statements)."""
    costings: list[Costing] = []
    with connect(target, statement_timeout_ms=30_000) as conn:
        ensure_hypopg(conn)
        for candidate in candidates:
            conn.execute("select hypopg_reset()")
            try:
                oid, _ = _hypothetical(conn, candidate)
                size_row = conn.execute(
                    "select hypopg_relation_size(%s) as size", (oid,)
                ).fetchone()
                conn.commit()
            except psycopg.Error as exc:
                conn.rollback()
                costings.append(
                    Costing(candidate=candidate, size_bytes=0, costs={}, error=one_line(exc))
                )
                continue
            table = f"{candidate.schema_name}.{candidate.table_name}"
            costs: dict[int, float] = {}
            hot_costs: dict[int, float] = {}
            for qid, query in queries.items():
                if table not in tables_of.get(qid, []):
                    continue
                if relevant is not None and qid not in relevant.get(candidate.key, set()):
                    continue
                try:
                    costs[qid], hot, _ = _cost(conn, query, (plans or {}).get(qid))
                except psycopg.Error:
                    continue  # already reported by the base plan when it cannot be planned
                if hot is not None:
                    hot_costs[qid] = hot
            costings.append(
                Costing(
                    candidate=candidate,
                    size_bytes=int(size_row["size"]) if size_row else 0,
                    costs=costs,
                    hot_costs=hot_costs,
                )
            )
        conn.execute("select hypopg_reset()")
        conn.commit()
    return costings


@task(name="verify_index_set", **RETRY_DEFAULTS)
def verify_index_set(
    target: PostgresTarget,
    queries: dict[int, str],
    chosen: Sequence[Candidate],
    plans: Mapping[int, CostingPlan] | None = None,
) -> SetVerification:
    """Plan every statement with all chosen hypothetical indexes at once: which ones are used
    (at the generic plan or at any value a statement is costed at)."""
    planned: dict[int, PlannedQuery] = {}
    used: dict[str, list[int]] = {c.key: [] for c in chosen}
    with connect(target, statement_timeout_ms=30_000) as conn:
        ensure_hypopg(conn)
        conn.execute("select hypopg_reset()")
        names: dict[str, str] = {}
        for candidate in chosen:
            _, name = _hypothetical(conn, candidate)
            names[name] = candidate.key
        conn.commit()
        for qid, query in queries.items():
            try:
                cost, hot, indexes = _cost(conn, query, (plans or {}).get(qid))
            except psycopg.Error as exc:
                planned[qid] = PlannedQuery(queryid=qid, cost=None, error=one_line(exc))
                continue
            planned[qid] = PlannedQuery(
                queryid=qid, cost=cost, indexes_used=sorted(indexes), hot_cost=hot
            )
            for name in indexes:
                if name in names:
                    used[names[name]].append(qid)
        conn.execute("select hypopg_reset()")
        conn.commit()
    return SetVerification(plans=planned, used=used)
