"""The demo workload: a small copy of the platform's schema (agents, workflows, their runs and
executions), realistic data, and the queries the API runs, so pg_stat_statements, the index
advisor and the health checks have something real to look at.

Loading is idempotent: a marker table records the workload version; a second run only checks it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import psycopg
from psycopg import sql

WORKLOAD_VERSION = 1
SCHEMA = "public"

DDL: list[LiteralString] = [
    """create table if not exists agents (
        id bigint generated always as identity primary key,
        name text not null,
        team text not null,
        status text not null,
        created_at timestamptz not null default now())""",
    """create table if not exists workflows (
        id bigint generated always as identity primary key,
        name text not null,
        owner_team text not null,
        created_at timestamptz not null default now())""",
    """create table if not exists agent_executions (
        id bigint generated always as identity primary key,
        agent_id bigint not null references agents (id),
        workflow_id bigint not null references workflows (id),
        status text not null,
        started_at timestamptz not null,
        duration_ms integer not null,
        error_code text)""",
    """create table if not exists workflow_runs (
        id bigint generated always as identity primary key,
        workflow_id bigint not null references workflows (id),
        status text not null,
        started_at timestamptz not null,
        finished_at timestamptz)""",
    # Two indexes on agents(name...): one covers the other (the index health check's example).
    "create index if not exists agents_name_idx on agents (name)",
    "create index if not exists agents_name_team_idx on agents (name, team)",
    """create table if not exists perfops_demo_meta (
        version integer primary key,
        loaded_at timestamptz not null)""",
]

# (table, rows, insert ... select from generate_series(1, %(n)s))
DATA: list[tuple[str, int, LiteralString]] = [
    (
        "agents",
        2_000,
        """insert into agents (name, team, status, created_at)
        select 'agent-' || g, (array['search','billing','ingest','ml','platform'])[1 + mod(g, 5)],
               case when mod(g, 20) = 0 then 'disabled' else 'active' end,
               now() - (g || ' minutes')::interval
        from generate_series(1, %(n)s) g""",
    ),
    (
        "workflows",
        500,
        """insert into workflows (name, owner_team, created_at)
        select 'workflow-' || g,
               (array['search','billing','ingest','ml','platform'])[1 + mod(g, 5)],
               now() - (g || ' hours')::interval
        from generate_series(1, %(n)s) g""",
    ),
    (
        "agent_executions",
        300_000,
        """insert into agent_executions
            (agent_id, workflow_id, status, started_at, duration_ms, error_code)
        select 1 + (random() * 1999)::int, 1 + (random() * 499)::int,
               case when random() < 0.02 then 'failed' when random() < 0.05 then 'running'
                    else 'succeeded' end,
               now() - random() * interval '30 days',
               (50 + random() * random() * 4000)::int,
               case when random() < 0.02 then 'E' || (random() * 20)::int end
        from generate_series(1, %(n)s) g""",
    ),
    (
        "workflow_runs",
        100_000,
        """insert into workflow_runs
            (workflow_id, status, started_at, finished_at)
        select 1 + (random() * 499)::int,
               case when random() < 0.03 then 'failed' else 'completed' end,
               s, s + random() * interval '20 minutes'
        from (select g, now() - random() * interval '30 days' as s
              from generate_series(1, %(n)s) g) t""",
    ),
]

# The API's statements, parameterised as the application sends them.
QUERIES: list[tuple[LiteralString, Callable[[random.Random], tuple[Any, ...]], int]] = [
    (
        "select id, status, started_at, duration_ms from agent_executions "
        "where agent_id = %s order by started_at desc limit 20",
        lambda r: (r.randint(1, 2000),),
        120,
    ),
    (
        "select count(*) from agent_executions where status = %s and started_at >= %s",
        lambda r: (
            r.choice(["failed", "running"]),
            datetime.now(UTC) - timedelta(hours=r.randint(1, 48)),
        ),
        40,
    ),
    (
        "select w.name, count(*) from workflow_runs r join workflows w on w.id = r.workflow_id "
        "where r.status = %s and r.started_at >= %s group by w.name order by 2 desc limit 10",
        lambda r: ("failed", datetime.now(UTC) - timedelta(days=r.randint(1, 7))),
        20,
    ),
    (
        "select * from workflow_runs where workflow_id = %s and started_at > %s "
        "order by started_at",
        lambda r: (r.randint(1, 500), datetime.now(UTC) - timedelta(days=1)),
        80,
    ),
    ("select * from agents where name = %s", lambda r: (f"agent-{r.randint(1, 2000)}",), 200),
    (
        "select a.team, avg(e.duration_ms) from agent_executions e "
        "join agents a on a.id = e.agent_id "
        "where e.started_at >= %s group by a.team",
        lambda r: (datetime.now(UTC) - timedelta(hours=6),),
        10,
    ),
]


@dataclass
class WorkloadResult:
    loaded: bool
    rows: dict[str, int]
    statements_run: int


def load_workload(
    conn: psycopg.Connection[Any],
    progress: Callable[[str, int, int], None] | None = None,
    *,
    seed: int = 42,
) -> WorkloadResult:
    """Create the schema and data once, then run the query mix; returns what it did."""
    report = progress or (lambda _label, _done, _total: None)
    for statement in DDL:
        conn.execute(statement)
    conn.commit()
    done = conn.execute(
        "select 1 from perfops_demo_meta where version = %s", (WORKLOAD_VERSION,)
    ).fetchone()
    statements = 0
    if not done:
        for i, (table, n, insert) in enumerate(DATA, start=1):
            report(f"loading {table} ({n:,} rows)", i - 1, len(DATA))
            conn.execute(
                sql.SQL("truncate {} restart identity cascade").format(
                    sql.Identifier(SCHEMA, table)
                )
            )
            conn.execute(insert, {"n": n})
            conn.commit()
        report("analysing tables", len(DATA), len(DATA))
        conn.execute("analyze")
        statements = run_queries(conn, report, seed=seed)
        conn.execute(
            "insert into perfops_demo_meta (version, loaded_at) values (%s, now())",
            (WORKLOAD_VERSION,),
        )
        conn.commit()
    elif not workload_recorded(conn):
        # pg_stat_statements was reset, or evicted the entries (it keeps pg_stat_statements.max)
        statements = run_queries(conn, report, seed=seed)
    rows = {}
    for table, _, _ in DATA:
        row = conn.execute(
            sql.SQL("select count(*) from {}").format(sql.Identifier(SCHEMA, table))
        ).fetchone()
        rows[table] = int(next(iter(row.values())) if isinstance(row, dict) else row[0])  # type: ignore[index]
    conn.commit()
    return WorkloadResult(loaded=not done, rows=rows, statements_run=statements)


def workload_recorded(conn: psycopg.Connection[Any]) -> bool:
    """Does pg_stat_statements still count each of the API's queries in this database?

    Compared by the text before the first parameter: pg_stat_statements turns the parameters
    and any constants after them into `$n`.
    """
    prefixes = [query.split("%s")[0] for query, _, _ in QUERIES]
    row = conn.execute(
        "select count(distinct p) from unnest(%s::text[]) p where exists ("
        "  select 1 from pg_stat_statements s"
        "  join pg_database d on d.oid = s.dbid and d.datname = current_database()"
        "  where starts_with(s.query, p))",
        (prefixes,),
    ).fetchone()
    conn.commit()
    count = next(iter(row.values())) if isinstance(row, dict) else row[0]  # type: ignore[index]
    return int(count) == len(set(prefixes))


def run_queries(
    conn: psycopg.Connection[Any],
    progress: Callable[[str, int, int], None] | None = None,
    *,
    seed: int = 42,
) -> int:
    """Run the API's query mix (server-side parameters, so pg_stat_statements groups them)."""
    report = progress or (lambda _label, _done, _total: None)
    rng = random.Random(seed)
    total = sum(times for _, _, times in QUERIES)
    done = 0
    for query, params, times in QUERIES:
        for _ in range(times):
            conn.execute(query, params(rng)).fetchall()
            done += 1
            if done % 20 == 0:
                report("running the API's queries", done, total)
        conn.commit()
    report("running the API's queries", total, total)
    return done
