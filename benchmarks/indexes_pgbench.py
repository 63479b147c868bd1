"""pgbench without primary keys: does `perfops indexes suggest --apply` recover the TPS that
pgbench's own primary keys give?

Set-up: two databases from `pgbench -i -s 20`, one without keys (`-I dtgv`), one with them
(`-I dtgvp`). The standard workload runs on the keyless one to fill pg_stat_statements; then
`perfops indexes suggest` (timed by its flow run) and `perfops indexes suggest --apply` run on it,
as whole commands against a Prefect server. Then select-only and tpcb-like TPS, interleaved
between the two databases, median of several runs.

Goal: at least 0.9x the primary-key TPS in both modes; suggestions in under 2 s of flow time.
Run: `python -m benchmarks.indexes_pgbench` (about 4 minutes). Exits 1 when a goal is missed.
`PERFOPS_BENCH_DB_PREFIX` renames its two databases (default `perfops_bench_pgbench`).
"""

from __future__ import annotations

import json
import os
import re
import sys

from benchmarks._support import (
    BIN,
    drop_database,
    dsn_for,
    flow_seconds,
    median,
    prefect_server,
    print_table,
    recreate_database,
    run,
)

SCALE = 20
DB_KEYLESS = os.environ.get("PERFOPS_BENCH_DB_PREFIX", "perfops_bench_pgbench")
DB_KEYS = f"{DB_KEYLESS}_pk"
ROUNDS = 3
SECONDS = 8
CLIENTS = "2"
TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def pgbench(*args: str, db: str) -> tuple[float, str]:
    elapsed, result = run(["pgbench", "-h", "127.0.0.1", "-U", "postgres", *args, db])
    return elapsed, result.stdout + result.stderr


def tps(mode: str, db: str, seconds: int = SECONDS) -> float:
    flags = ["-S"] if mode == "select-only" else []
    _, output = pgbench("-n", *flags, "-T", str(seconds), "-c", CLIENTS, "-j", CLIENTS, db=db)
    match = TPS.search(output)
    if not match:
        raise RuntimeError(f"no TPS in pgbench output:\n{output[-1000:]}")
    return float(match.group(1))


def main() -> int:
    print(f"setting up pgbench scale {SCALE} twice (without and with primary keys)...", flush=True)
    recreate_database(DB_KEYLESS)
    recreate_database(DB_KEYS)
    pgbench("-i", "-q", "-s", str(SCALE), "-I", "dtgv", db=DB_KEYLESS)
    pgbench("-i", "-q", "-s", str(SCALE), "-I", "dtgvp", db=DB_KEYS)
    keyless = dsn_for(DB_KEYLESS)
    run(
        [
            sys.executable,
            "-c",
            f"import psycopg; c = psycopg.connect({keyless!r}, autocommit=True); "
            "c.execute('create extension if not exists pg_stat_statements'); "
            "c.execute('create extension if not exists hypopg'); "
            'c.execute("select pg_stat_statements_reset(0, (select oid from pg_database where '
            'datname = current_database()), 0)")',
        ]
    )

    print("filling pg_stat_statements with the standard workload (no keys: slow)...", flush=True)
    before = {mode: tps(mode, DB_KEYLESS, seconds=10) for mode in ("select-only", "tpcb-like")}

    with prefect_server() as api:
        env = {"PREFECT_API_URL": api, "PERFOPS_DSN": keyless}
        suggest_wall, suggested = run(
            [str(BIN / "perfops"), "indexes", "suggest", "--json"], env=env
        )
        suggest_flow = flow_seconds(api, "suggest_indexes")
        report = json.loads(suggested.stdout)
        apply_wall, applied = run(
            [str(BIN / "perfops"), "indexes", "suggest", "--apply", "--json"], env=env
        )
        apply_flow = flow_seconds(api, "suggest_indexes")
        built = json.loads(applied.stdout)["builds"]

    print("measuring TPS, interleaved between the two databases...", flush=True)
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(ROUNDS):
        for mode in ("select-only", "tpcb-like"):
            for label, db in (("perfops", DB_KEYLESS), ("primary keys", DB_KEYS)):
                samples.setdefault((mode, label), []).append(tps(mode, db))

    rows = []
    ratios = {}
    for mode in ("select-only", "tpcb-like"):
        ours = median(samples[(mode, "perfops")])
        keys = median(samples[(mode, "primary keys")])
        ratios[mode] = ours / keys
        rows.append(
            [mode, f"{before[mode]:.0f}", f"{ours:.0f}", f"{keys:.0f}", f"{ratios[mode]:.2f}x"]
        )
    print()
    print("suggestions:")
    for s in report["suggestions"]:
        print(f"  {s['ddl']}")
    print("builds:")
    for b in built:
        print(f"  {b['index_name']}: {b['status']} in {b['seconds']:.1f} s ({b['detail']})")
    print()
    print_table(
        [
            "workload",
            "TPS no keys",
            f"TPS perfops (median of {ROUNDS})",
            f"TPS primary keys (median of {ROUNDS})",
            "perfops / keys",
        ],
        rows,
    )
    print()
    print_table(
        ["step", "flow run time", "whole command"],
        [
            ["perfops indexes suggest", f"{suggest_flow:.2f} s", f"{suggest_wall:.1f} s"],
            ["perfops indexes suggest --apply", f"{apply_flow:.2f} s", f"{apply_wall:.1f} s"],
        ],
    )
    drop_database(DB_KEYLESS)
    drop_database(DB_KEYS)
    ok = all(r >= 0.9 for r in ratios.values()) and suggest_flow < 2.0
    print()
    print(
        f"summary: {'PASS' if ok else 'FAIL'}: perfops reaches "
        f"{ratios['select-only']:.2f}x (select-only) and {ratios['tpcb-like']:.2f}x (tpcb-like) of "
        f"primary-key TPS (goal >= 0.9x); suggestions took {suggest_flow:.2f} s of flow time "
        f"(goal < 2 s) with {len(report['suggestions'])} index(es) suggested"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
