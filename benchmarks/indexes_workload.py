"""A harder workload for the index advisor: joins, multi-column predicates, ORDER BY ... LIMIT,
range scans, and a low-selectivity column that must NOT get an index.

Schema (no secondary indexes): customers 200k (region: 10 values; tier: 2 values, the
low-selectivity column), orders 600k, order_items 1.2M, products 10k. The workload (below,
`WORKLOAD`) runs once to fill pg_stat_statements and as the "before" time; then
`perfops indexes suggest --apply` (a whole command against a Prefect server); then the same
workload again as the "after" time.

Goals: at least 5x less total workload time; no index that no query uses (idx_scan > 0 for every
index perfops built, after the second run); no index on customers.tier.
Run: `python -m benchmarks.indexes_workload` (about 2 minutes). Exits 1 when a goal is missed.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import psycopg

from benchmarks._support import (
    BIN,
    drop_database,
    prefect_server,
    print_table,
    recreate_database,
    run,
)

DB = "perfops_bench_workload"
NOW = datetime(2026, 11, 1, tzinfo=UTC)
REPEAT = 25

SCHEMA: list[LiteralString] = [
    "create extension if not exists pg_stat_statements",
    "create extension if not exists hypopg",
    """create table customers as
       select g as id, 'region-' || (g % 10) as region,
              case when g % 2 = 0 then 'free' else 'paid' end as tier,
              timestamptz '2026-11-01' - (g || ' minutes')::interval as created_at
       from generate_series(1, 200000) g""",
    "alter table customers add primary key (id)",
    """create table products as
       select g as id, 'category-' || (g % 50) as category, (g % 500 + 1)::numeric as price
       from generate_series(1, 10000) g""",
    "alter table products add primary key (id)",
    """create table orders as
       select g as id, 1 + (g::bigint * 7919) % 200000 as customer_id,
              (array['new','paid','shipped','delivered','cancelled'])[1 + (g % 97) % 5] as status,
              timestamptz '2026-11-01' - ((g::bigint * 37) % 525600 || ' minutes')::interval
                  as created_at,
              (g % 2000)::numeric / 10 as total
       from generate_series(1, 600000) g""",
    "alter table orders add primary key (id)",
    """create table order_items as
       select g as id, 1 + (g::bigint * 104729) % 600000 as order_id, 1 + g % 10000 as product_id,
              1 + g % 5 as qty
       from generate_series(1, 1200000) g""",
    "alter table order_items add primary key (id)",
    "analyze",
]


def _two_hours(rng: random.Random) -> tuple[datetime, datetime]:
    start = NOW - timedelta(hours=rng.randint(2, 8000))
    return start, start + timedelta(hours=2)


WORKLOAD: list[tuple[str, LiteralString, Callable[[random.Random], tuple[Any, ...]]]] = [
    (
        "join + filter + sort/limit",
        "select o.id, o.total from orders o join customers c on c.id = o.customer_id "
        "where o.customer_id = %s and c.region = %s order by o.created_at desc limit 20",
        lambda r: (r.randint(1, 200000), f"region-{r.randint(0, 9)}"),
    ),
    (
        "multi-column predicate",
        "select count(*) from orders where customer_id = %s and status = %s",
        lambda r: (r.randint(1, 200000), r.choice(["new", "paid", "shipped"])),
    ),
    (
        "order by ... limit",
        "select id, status, total from orders where customer_id = %s "
        "order by created_at desc limit 5",
        lambda r: (r.randint(1, 200000),),
    ),
    (
        "range scan",
        "select sum(total) from orders where created_at >= %s and created_at < %s",
        lambda r: _two_hours(r),
    ),
    (
        "join through items",
        "select sum(i.qty * p.price) from order_items i join products p on p.id = i.product_id "
        "where i.order_id = %s",
        lambda r: (r.randint(1, 600000),),
    ),
    (
        "low-selectivity column",
        "select count(*) from customers where tier = %s",
        lambda r: (r.choice(["free", "paid"]),),
    ),
]


def run_workload(dsn: str, seed: int) -> dict[str, float]:
    """Run every statement REPEAT times; seconds per statement kind."""
    rng = random.Random(seed)
    times: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for label, query, params in WORKLOAD:
            started = time.perf_counter()
            for _ in range(REPEAT):
                conn.execute(query, params(rng)).fetchall()
            times[label] = time.perf_counter() - started
    return times


def main() -> int:
    print("creating the schema and data (no secondary indexes)...", flush=True)
    dsn = recreate_database(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute(
            "select pg_stat_statements_reset(0, (select oid from pg_database "
            "where datname = current_database()), 0)"
        )
    print("running the workload before...", flush=True)
    before = run_workload(dsn, seed=1)

    with prefect_server() as api:
        wall, result = run(
            [
                str(BIN / "perfops"),
                "indexes",
                "suggest",
                "--apply",
                "--min-calls",
                "10",
                "--json",
            ],
            env={"PREFECT_API_URL": api, "PERFOPS_DSN": dsn},
        )
    report = json.loads(result.stdout)

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_stat_reset()")
    print("running the workload after...", flush=True)
    after = run_workload(dsn, seed=2)
    time.sleep(1)  # let the statistics collector publish idx_scan
    with psycopg.connect(dsn) as conn:
        conn.execute("select pg_stat_force_next_flush()")
        built = conn.execute(
            "select s.relname, s.indexrelname, s.idx_scan, pg_get_indexdef(s.indexrelid) "
            "from pg_stat_user_indexes s where s.indexrelname like 'perfops_idx_%' "
            "order by 1, 2"
        ).fetchall()

    rows = [
        [
            label,
            f"{before[label] * 1000:,.0f}",
            f"{after[label] * 1000:,.0f}",
            f"{before[label] / max(after[label], 1e-9):,.1f}x",
        ]
        for label, _, _ in WORKLOAD
    ]
    total_before, total_after = sum(before.values()), sum(after.values())
    rows.append(
        [
            "TOTAL",
            f"{total_before * 1000:,.0f}",
            f"{total_after * 1000:,.0f}",
            f"{total_before / total_after:,.1f}x",
        ]
    )
    print()
    print_table([f"statement ({REPEAT} runs each)", "before ms", "after ms", "speed-up"], rows)
    print()
    print_table(
        ["table", "index built by perfops", "scans after", "definition"],
        [[r[0], r[1], r[2], r[3]] for r in built],
    )
    print()
    print(
        f"rejected candidates: {len(report['rejected'])}; "
        f"whole command: {wall:.1f} s; skipped statements: {len(report['skipped'])}"
    )
    unused = [r[1] for r in built if r[2] == 0]
    on_tier = [r[1] for r in built if r[0] == "customers" and "tier" in r[3]]
    speedup = total_before / total_after
    drop_database(DB)
    ok = speedup >= 5 and not unused and not on_tier and bool(built)
    print()
    print(
        f"summary: {'PASS' if ok else 'FAIL'}: workload {speedup:.1f}x faster (goal >= 5x) with "
        f"{len(built)} index(es) built; unused: {unused or 'none'}; on the low-selectivity "
        f"column: {on_tier or 'none'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
