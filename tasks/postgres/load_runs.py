"""Load test history in PostgreSQL: tables perfops owns in schema `perfops`, created by an
idempotent migration, one row per run and one per baseline established.

- `perfops.load_test_runs`: run id, test, start, target (base URL), passed / aborted / regressed,
  asked and achieved rps, and the record (per endpoint p50/p95/p99/max, error rate, rps and the
  per-second p95s the baseline comparison tests) as jsonb.
- `perfops.load_test_baselines`: the baseline of a test against a target (base URL) as
  established at a time; the newest of that test and target is the one its runs compare with.
  Both tables are read by (test, target): a run against one system is never compared with a
  baseline of another. Baselines kept before the target was (schema 1) get the target their
  runs all sent to; one whose runs sent to several targets keeps '' and is never used (run
  with --baseline again).

The migration runs in one transaction under a transaction-level advisory lock (two runs starting
together wait for each other instead of racing on CREATE), each statement under lock_timeout and
statement_timeout; rerunning it changes nothing.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg.types.json import Jsonb

from blocks import PostgresTarget
from decisions.load_baseline import Baseline, LoadRunRecord
from tasks.postgres.server import connect, lock_key, set_timeouts
from tasks.transient_errors import RETRY_DEFAULTS

SCHEMA_VERSION = 2
_MIGRATION = (
    "create schema if not exists perfops",
    """create table if not exists perfops.load_test_runs (
        run_id text primary key,
        test text not null,
        started_at timestamptz not null,
        target text not null,
        passed boolean not null,
        aborted boolean not null,
        regressed boolean not null,
        asked_rps double precision not null,
        achieved_rps double precision not null,
        record jsonb not null
    )""",
    "create index if not exists load_test_runs_test_started "
    "on perfops.load_test_runs (test, started_at desc)",
    """create table if not exists perfops.load_test_baselines (
        test text not null,
        established_at timestamptz not null,
        baseline jsonb not null,
        primary key (test, established_at)
    )""",
    # schema 2: runs and baselines are read by (test, target)
    "create index if not exists load_test_runs_test_target_started "
    "on perfops.load_test_runs (test, target, started_at desc)",
    "alter table perfops.load_test_baselines add column if not exists target text not null "
    "default ''",
    """do $$ begin
        if (select array_length(i.indkey::int2[], 1) from pg_index i
            where i.indexrelid = 'perfops.load_test_baselines_pkey'::regclass) = 2 then
            alter table perfops.load_test_baselines drop constraint load_test_baselines_pkey;
            alter table perfops.load_test_baselines
                add primary key (test, target, established_at);
        end if;
    end $$""",
    # a schema-1 baseline: the target its runs all sent to ('' when they sent to several)
    """update perfops.load_test_baselines b set target = r.target
       from (select b2.test, b2.established_at, min(runs.target) as target
             from perfops.load_test_baselines b2
             join perfops.load_test_runs runs
               on runs.run_id in (select jsonb_array_elements_text(b2.baseline->'run_ids'))
             where b2.target = ''
             group by b2.test, b2.established_at
             having count(distinct runs.target) = 1) r
       where b.target = '' and b.test = r.test and b.established_at = r.established_at""",
)
LOCK_TIMEOUT_MS = 5_000
STATEMENT_TIMEOUT_MS = 30_000


@task(name="migrate_load_history", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def migrate_load_history(target: PostgresTarget) -> int:
    """Create perfops' load history tables if missing (idempotent); returns the schema version."""
    with connect(target) as conn:
        set_timeouts(
            conn, lock_timeout_ms=LOCK_TIMEOUT_MS, statement_timeout_ms=STATEMENT_TIMEOUT_MS
        )
        conn.execute("select pg_advisory_xact_lock(%s)", (lock_key("load-history-migration"),))
        for statement in _MIGRATION:
            conn.execute(statement)
        conn.commit()
    return SCHEMA_VERSION


@task(name="record_load_run", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def record_load_run(target: PostgresTarget, record: LoadRunRecord) -> None:
    """Insert one run (an insert of the same run id again changes nothing: safe to retry)."""
    with connect(target) as conn:
        set_timeouts(
            conn, lock_timeout_ms=LOCK_TIMEOUT_MS, statement_timeout_ms=STATEMENT_TIMEOUT_MS
        )
        conn.execute(
            """insert into perfops.load_test_runs (run_id, test, started_at, target, passed,
                   aborted, regressed, asked_rps, achieved_rps, record)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               on conflict (run_id) do nothing""",
            (
                record.run_id,
                record.test,
                record.started_at,
                record.target,
                record.passed,
                record.aborted,
                record.regressed,
                record.asked_rps,
                record.achieved_rps,
                Jsonb(record.model_dump(mode="json")),
            ),
        )
        conn.commit()


@task(name="read_load_runs", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def read_load_runs(
    target: PostgresTarget,
    test: str | None = None,
    limit: int = 20,
    load_target: str | None = None,
) -> list[LoadRunRecord]:
    """The newest `limit` runs (of one test, or of all; against one target base URL, or any),
    newest first."""
    with connect(target) as conn:
        set_timeouts(
            conn, lock_timeout_ms=LOCK_TIMEOUT_MS, statement_timeout_ms=STATEMENT_TIMEOUT_MS
        )
        rows = conn.execute(
            """select record from perfops.load_test_runs
               where (%(test)s::text is null or test = %(test)s)
                 and (%(target)s::text is null or target = %(target)s)
               order by started_at desc limit %(limit)s""",
            {"test": test, "target": load_target, "limit": limit},
        ).fetchall()
    return [LoadRunRecord.model_validate(r["record"]) for r in rows]


@task(name="save_load_baseline", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def save_load_baseline(target: PostgresTarget, baseline: Baseline) -> None:
    with connect(target) as conn:
        set_timeouts(
            conn, lock_timeout_ms=LOCK_TIMEOUT_MS, statement_timeout_ms=STATEMENT_TIMEOUT_MS
        )
        conn.execute(
            """insert into perfops.load_test_baselines (test, target, established_at, baseline)
               values (%s, %s, %s, %s) on conflict do nothing""",
            (
                baseline.test,
                baseline.target,
                baseline.established_at,
                Jsonb(baseline.model_dump(mode="json")),
            ),
        )
        conn.commit()


@task(name="read_load_baseline", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def read_load_baseline(target: PostgresTarget, test: str, load_target: str) -> Baseline | None:
    """The newest baseline of `test` against `load_target` (a base URL), or None."""
    with connect(target) as conn:
        set_timeouts(
            conn, lock_timeout_ms=LOCK_TIMEOUT_MS, statement_timeout_ms=STATEMENT_TIMEOUT_MS
        )
        row = conn.execute(
            """select baseline || jsonb_build_object('target', target) as baseline
               from perfops.load_test_baselines where test = %s and target = %s
               order by established_at desc limit 1""",
            (test, load_target),
        ).fetchone()
    return Baseline.model_validate(row["baseline"]) if row else None
