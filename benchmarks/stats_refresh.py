"""Statistics refresh at scale: `perfops stats refresh` against `vacuumdb --analyze-only -j 2`.

    python -m benchmarks.stats_refresh [--tables 2000] [--rows 10000] [--stale 100]
                                       [--rounds 1] [--keep] [--prefect-api-url URL]

Builds its own database (default `perfops_bench_stats` on 127.0.0.1:5432 as postgres; another
server with PERFOPS_BENCH_ADMIN_DSN): TABLES tables of ROWS rows shaped like the platform's
`agent_executions` (bigint primary key, two ids, status, timestamp, duration, nullable error
code), all analyzed so they start fresh, then 12% of the rows updated in STALE of them (spread
over the name order). Starts its own Prefect server (temporary PREFECT_HOME, stopped by its
process group at the end) and sets PREFECT_API_URL for the timed commands, so Prefect's own
overhead is part of what is measured. Then, timing each as a whole command:

1. `perfops stats refresh --dry-run --json`, not scored: it must list exactly the stale tables;
2. per round: `vacuumdb --analyze-only -j 2` (it analyzes every table), then the same 12% change
   applied again to the same tables, then `perfops stats refresh --parallel 2`: both start from
   the same stale set.

For every command it counts, from pg_stat_user_tables.analyze_count before and after, the
tables analyzed, the stale ones among them and the fresh ones touched. The goal: every stale
table analyzed, no fresh table touched, and perfops at least 4x faster than vacuumdb (medians
over the rounds). It prints a table, then one summary line last, and exits 1 when the goal is
missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from benchmarks._support import BIN, ROOT, drop_database, prefect_server, recreate_database

SCHEMA = "bench"
GOAL_SPEEDUP = 4.0
CHANGE = 0.12
TABLES_PER_TRANSACTION = 100

# One table of the benchmark, shaped like the platform's agent_executions.
CREATE_TABLE = """
create table {table} with (autovacuum_enabled = false) as
select g::bigint as id,
       1 + mod(g * 7, 2000)::bigint as agent_id,
       1 + mod(g * 13, 500)::bigint as workflow_id,
       (array['succeeded', 'failed', 'running', 'queued'])[1 + mod(g, 4)] as status,
       timestamptz '2026-01-01' + make_interval(secs => g * 37) as started_at,
       mod(g * 7919, 60000)::int as duration_ms,
       case when mod(g, 4) = 1 then 'E' || mod(g, 17) end as error_code
from generate_series(1, {rows}) g
"""


@dataclass
class Measurement:
    tool: str
    command: str
    seconds: float
    analyzed: int
    stale_analyzed: int
    fresh_touched: int
    note: str = ""


def log(message: str) -> None:
    print(f"[stats_refresh] {message}", file=sys.stderr, flush=True)


def table_name(i: int) -> str:
    return f"t{i:04d}"


def stale_indexes(tables: int, stale: int) -> list[int]:
    """`stale` table numbers spread evenly over `tables`."""
    step = tables / stale
    return sorted({int(k * step) for k in range(stale)})


# --- the database -------------------------------------------------------------------------------


def in_threads(dsn: str, numbers: Sequence[int], job: str, rows: int, threads: int = 2) -> None:
    """Run `job` (create, analyze, change) on the tables `numbers`, split over `threads`
    connections, 100 tables per transaction. Each connection then flushes its table counters
    (pg_stat_force_next_flush, PostgreSQL 15+) so other sessions see them."""

    def run(chunk: Sequence[int]) -> None:
        with psycopg.connect(dsn) as conn:
            for start in range(0, len(chunk), TABLES_PER_TRANSACTION):
                for i in chunk[start : start + TABLES_PER_TRANSACTION]:
                    table = sql.Identifier(SCHEMA, table_name(i))
                    if job == "create":
                        conn.execute(
                            sql.SQL(CREATE_TABLE).format(table=table, rows=sql.Literal(rows))
                        )
                        conn.execute(sql.SQL("alter table {} add primary key (id)").format(table))
                    elif job == "change":
                        conn.execute(
                            sql.SQL(
                                "update {} set duration_ms = duration_ms + 1 where id <= {}"
                            ).format(table, sql.Literal(round(rows * CHANGE)))
                        )
                    else:
                        conn.execute(sql.SQL("analyze {}").format(table))
                conn.commit()
            conn.execute("select pg_stat_force_next_flush()")
            conn.commit()  # the flush happens as the session goes idle after this

    chunks = [list(numbers[k::threads]) for k in range(threads)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(run, c) for c in chunks if c]:
            future.result()


def counters(dsn: str) -> dict[str, tuple[int, int]]:
    """Per table: (analyze_count, n_mod_since_analyze)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select relname, analyze_count, n_mod_since_analyze from pg_stat_user_tables "
            "where schemaname = %s",
            (SCHEMA,),
        ).fetchall()
    return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}


def wait_for_counters(dsn: str, expect_mod: dict[str, int], timeout_s: float = 30.0) -> None:
    """Wait until every table's n_mod_since_analyze is what it should be."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = counters(dsn)
        wrong = [n for n, mod in expect_mod.items() if now.get(n, (0, -1))[1] != mod]
        if not wrong:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(wrong)} tables do not show the expected change counters "
                f"(e.g. {wrong[0]}: {now.get(wrong[0])}, expected {expect_mod[wrong[0]]})"
            )
        time.sleep(0.2)


def build(dsn: str, tables: int, rows: int) -> None:
    numbers = list(range(tables))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(SCHEMA)))
    started = time.monotonic()
    in_threads(dsn, numbers, "create", rows)
    wait_for_counters(dsn, {table_name(i): rows for i in numbers})
    log(f"created {tables} tables of {rows:,} rows in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    in_threads(dsn, numbers, "analyze", rows)
    wait_for_counters(dsn, {table_name(i): 0 for i in numbers})
    log(f"analyzed all of them (all fresh) in {time.monotonic() - started:.1f} s")


def make_stale(dsn: str, tables: int, rows: int, stale: Sequence[int]) -> None:
    """Update 12% of the rows of the `stale` tables and wait until the counters show exactly
    those tables changed."""
    in_threads(dsn, stale, "change", rows)
    changed = round(rows * CHANGE)
    chosen = set(stale)
    wait_for_counters(dsn, {table_name(i): (changed if i in chosen else 0) for i in range(tables)})


# --- the timed commands -------------------------------------------------------------------------


def measure(
    tool: str, cmd: Sequence[str], shown: str, env: dict[str, str], dsn: str, stale: set[str]
) -> tuple[Measurement, str]:
    """Time `cmd` as a whole command and count what it analyzed."""
    before = counters(dsn)
    started = time.perf_counter()
    result = subprocess.run(
        list(cmd), capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=3600
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{tool} exited {result.returncode}:\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
        )
    after = counters(dsn)
    analyzed = {n for n, (count, _) in after.items() if count > before.get(n, (0, 0))[0]}
    log(f"{tool}: {seconds:.2f} s, {len(analyzed)} tables analyzed")
    measurement = Measurement(
        tool=tool,
        command=shown,
        seconds=seconds,
        analyzed=len(analyzed),
        stale_analyzed=len(analyzed & stale),
        fresh_touched=len(analyzed - stale),
    )
    return measurement, result.stdout


def print_table(rows: list[Measurement], stale: int) -> None:
    headers = ["tool", "seconds", "tables analyzed", f"stale analyzed (of {stale})"]
    headers += ["fresh touched", "note"]
    cells = [headers] + [
        [
            m.tool,
            f"{m.seconds:.2f}",
            str(m.analyzed),
            str(m.stale_analyzed),
            str(m.fresh_touched),
            m.note,
        ]
        for m in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for command in dict.fromkeys(f"  {m.tool}: {m.command}" for m in rows):
        print(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tables", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--stale", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=2, help="vacuumdb -j and --parallel")
    parser.add_argument("--rounds", type=int, default=1, help="vacuumdb/perfops pairs (median)")
    parser.add_argument("--database", default="perfops_bench_stats")
    parser.add_argument("--prefect-api-url", help="Use this running server instead of one here.")
    parser.add_argument("--keep", action="store_true", help="Keep the database afterwards.")
    args = parser.parse_args(argv)
    if not 0 < args.stale <= args.tables or args.rounds < 1:
        parser.error("need 0 < --stale <= --tables and --rounds >= 1")

    stale = stale_indexes(args.tables, args.stale)
    stale_names = {table_name(i) for i in stale}
    rows: list[Measurement] = []
    vacuumdb_s: list[float] = []
    perfops_s: list[float] = []
    scored: list[Measurement] = []
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PERFOPS_", "PREFECT_"))}
    with prefect_server(args.prefect_api_url) as api_url:
        env = {**base, "PREFECT_API_URL": api_url}
        dsn = recreate_database(args.database)
        try:
            build(dsn, args.tables, args.rows)
            params = conninfo_to_dict(dsn)
            vacuumdb = ["vacuumdb", "--analyze-only", "-j", str(args.parallel)]
            vacuumdb += ["-h", str(params.get("host", "127.0.0.1"))]
            vacuumdb += ["-p", str(params.get("port", 5432))]
            vacuumdb += ["-U", str(params.get("user", "postgres")), "-d", args.database]
            perfops = [str(BIN / "perfops"), "stats", "refresh", "--dsn", dsn]
            perfops += ["--parallel", str(args.parallel)]
            shown = " ".join([*perfops[:-4], "--dsn", "DSN", "--parallel", perfops[-1]])

            make_stale(dsn, args.tables, args.rows, stale)
            dry, listing = measure(
                "perfops --dry-run",
                [*perfops, "--dry-run", "--json"],
                shown + " --dry-run --json",
                env,
                dsn,
                stale_names,
            )
            dry.note = "not scored: checks what a dry run lists"
            rows.append(dry)
            report = json.loads(listing)
            listed = {t["table_name"] for t in report["tables"] if t["result"].startswith("would")}
            dry_ok = listed == stale_names
            if not dry_ok:
                log(
                    f"dry run listed {len(listed)} tables: {len(listed & stale_names)} "
                    f"stale, {len(listed - stale_names)} fresh"
                )
            for n in range(args.rounds):
                if n:
                    make_stale(dsn, args.tables, args.rows, stale)
                vac, _ = measure("vacuumdb", vacuumdb, " ".join(vacuumdb), env, dsn, stale_names)
                vac.note = f"round {n + 1}"
                make_stale(dsn, args.tables, args.rows, stale)  # the same stale set again
                ours, output = measure("perfops", perfops, shown, env, dsn, stale_names)
                ours.note = f"round {n + 1}"
                rows += [vac, ours]
                scored.append(ours)
                vacuumdb_s.append(vac.seconds)
                perfops_s.append(ours.seconds)
        finally:
            if not args.keep:
                drop_database(args.database)

    print()
    print(
        f"{args.tables} tables of {args.rows:,} rows, {args.stale} with {CHANGE:.0%} of rows "
        f"changed; parallelism {args.parallel}; Prefect server {api_url}"
    )
    print_table(rows, args.stale)
    said = " / ".join(line.strip() for line in output.strip().splitlines()[:2])
    print(f"perfops said: {said or '(no output)'}")
    vac_s = statistics.median(vacuumdb_s)
    ours_s = statistics.median(perfops_s)
    speedup = vac_s / ours_s if ours_s else float("inf")
    complete = all(m.stale_analyzed == args.stale for m in scored)
    clean = all(m.fresh_touched == 0 for m in scored)
    passed = speedup >= GOAL_SPEEDUP and complete and clean and dry_ok
    median = " (medians)" if args.rounds > 1 else ""
    print(
        f"{'PASS' if passed else 'FAIL'}: perfops stats refresh {ours_s:.2f} s vs vacuumdb "
        f"--analyze-only -j {args.parallel} {vac_s:.2f} s{median} = {speedup:.1f}x faster "
        f"(goal >= {GOAL_SPEEDUP:g}x); every stale table analyzed: {'yes' if complete else 'no'}; "
        f"fresh tables touched: {max(m.fresh_touched for m in scored)}; dry run listed exactly "
        f"the stale tables: {'yes' if dry_ok else 'no'}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
