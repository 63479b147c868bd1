"""Partition rotation: perfops `rotate_partitions --apply` against pg_partman `run_maintenance()`.

    python -m benchmarks.partitions [--rows 2000000] [--keep] [--prefect-api-url URL]

Builds its own database (default `perfops_bench_partitions` on 127.0.0.1:5432 as postgres;
another server with PERFOPS_BENCH_ADMIN_DSN) with two identical tables, `audit_logs` (perfops)
and `audit_logs_partman` (pg_partman 4.7 `create_parent(p_type => 'native')`, Debian's version):
monthly range partitions on a timestamptz, a DEFAULT partition, an index, and ROWS rows with a
jsonb payload spread evenly over the 24 months before the current one. Both are rotated once with
premake 3 and retention 12 months, so 12 months (half the rows) expire:

* pg_partman: `run_maintenance(p_parent_table)` with `retention_keep_table = false` (it drops,
  it never archives);
* perfops: the flow `rotate_partitions` with `apply=True`, archiving to S3 (a moto server in its
  own process): plan, create, detach, COPY into Parquet, upload with SHA-256 and manifest,
  re-read and verify, drop.

During each run a second process inserts one row at a time (autocommit) into the table being
rotated; its worst insert latency is measured before (quiet) and during each run. It starts its
own Prefect server (temporary PREFECT_HOME) unless --prefect-api-url is given; the server's start
is not timed, the flow run is, including Prefect's overhead.

Goals: archive throughput >= 200k rows/s (archived rows over the time spent dumping, uploading
and verifying), the writer's worst latency during perfops' run no worse than during pg_partman's,
and perfops' whole run under 15 s. Prints a table, then one summary line last; exits 1 when a
goal is missed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

import boto3
import httpx
import psycopg
from psycopg import sql

from benchmarks._support import (
    BIN,
    drop_database,
    free_port,
    prefect_server,
    print_table,
    recreate_database,
)

T = TypeVar("T")
DATABASE = "perfops_bench_partitions"
BUCKET = "perfops-bench-archive"
GOAL_ROWS_PER_S = 200_000
GOAL_RUN_S = 15.0
MONTHS = 24
WRITER_PAUSE_S = 0.005


def month_start(d: datetime, back: int) -> datetime:
    months = d.year * 12 + d.month - 1 - back
    return datetime(months // 12, months % 12 + 1, 1, tzinfo=UTC)


def build(dsn: str, rows: int, now: datetime) -> None:
    first = month_start(now, MONTHS)
    current = month_start(now, 0)
    span = f"{(current - first).total_seconds()} seconds"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create schema partman")
        conn.execute("create extension pg_partman schema partman")
        for table in ("audit_logs", "audit_logs_partman"):
            conn.execute(
                sql.SQL(
                    "create table {} (id bigint not null, created_at timestamptz not null, "
                    "actor text, action text, payload jsonb) partition by range (created_at)"
                ).format(sql.Identifier(table))
            )
            conn.execute(sql.SQL("create index on {} (created_at)").format(sql.Identifier(table)))
        # perfops' table: the 24 data months, the current and the next one (what create_parent
        # with premake 1 makes for pg_partman's), a default partition.
        for back in range(MONTHS, -2, -1):
            lo, hi = month_start(now, back), month_start(now, back - 1)
            conn.execute(
                sql.SQL(
                    "create table {} partition of audit_logs for values from ({}) to ({})"
                ).format(
                    sql.Identifier(f"audit_logs_p{lo:%Y_%m}"), sql.Literal(lo), sql.Literal(hi)
                )
            )
        conn.execute("create table audit_logs_default partition of audit_logs default")
        # pg_partman's: the same months from its own create_parent (with its default partition).
        conn.execute(
            "select partman.create_parent(p_parent_table => 'public.audit_logs_partman', "
            "p_control => 'created_at', p_type => 'native', p_interval => 'monthly', "
            "p_premake => 1, p_start_partition => %s)",
            (first.strftime("%Y-%m-%d %H:%M:%S+00"),),
        )
        conn.execute(
            "update partman.part_config set premake = 3, retention = '12 months', "
            "retention_keep_table = false, infinite_time_partitions = true "
            "where parent_table = 'public.audit_logs_partman'"
        )
        for table in ("audit_logs", "audit_logs_partman"):
            print(f"loading {rows:,} rows into {table}...", file=sys.stderr, flush=True)
            conn.execute(
                sql.SQL(
                    "insert into {} select g, {}::timestamptz + ((g - 1)::float8 / {}) * "
                    "interval {}, 'user' || (g % 5000), (array['login','read','write','delete'])"
                    "[1 + g % 4], jsonb_build_object('request', g, 'ip', '10.0.' || (g % 250) || "
                    "'.' || (g % 199), 'ok', g % 3 <> 0) from generate_series(1, {}) g"
                ).format(
                    sql.Identifier(table),
                    sql.Literal(first),
                    sql.Literal(rows),
                    sql.Literal(span),
                    sql.Literal(rows),
                )
            )
            conn.execute(sql.SQL("vacuum analyze {}").format(sql.Identifier(table)))


def writer(dsn: str, table: str, out: str, stop: mp.synchronize.Event) -> None:
    """Insert one row at a time into `table`; append 'unix_time latency_s' lines to `out`."""
    lines = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set lock_timeout = '30s'")
        statement = sql.SQL(
            "insert into {} (id, created_at, actor, action, payload) "
            "values (-1, now(), 'writer', 'write', '{{}}')"
        ).format(sql.Identifier(table))
        while not stop.is_set():
            started = time.perf_counter()
            conn.execute(statement)
            lines.append(f"{time.time()} {time.perf_counter() - started}\n")
            time.sleep(WRITER_PAUSE_S)
    Path(out).write_text("".join(lines))


def worst(path: Path, start: float, end: float) -> float:
    """The writer's worst latency of the inserts it began between `start` and `end` (unix times);
    also prints when they happened and the slowest few, so a spike can be told from a lock
    wait."""
    samples = [
        (float(lat), float(t))
        for t, lat in (line.split() for line in path.read_text().splitlines())
        if start <= float(t) - float(lat) <= end
    ]
    if not samples:
        return float("nan")
    slowest = sorted(samples, reverse=True)[:3]
    print(
        f"  {path.stem} [{start:.1f}, {end:.1f}]: {len(samples)} inserts, slowest "
        + ", ".join(f"{lat * 1000:.0f} ms at +{t - lat - start:.2f} s" for lat, t in slowest),
        file=sys.stderr,
    )
    return slowest[0][0]


def with_writer(dsn: str, table: str, tmp: Path, action: Callable[[], T]) -> tuple[float, float, T]:
    """(worst latency quiet, worst latency during, result of action())."""
    log = tmp / f"writer-{table}.log"
    stop = mp.Event()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("checkpoint")  # both runs start from a clean checkpoint
    proc = mp.Process(target=writer, args=(dsn, table, str(log), stop))
    proc.start()
    time.sleep(2.0)
    quiet_end = time.time()
    started = time.time()
    result = action()
    ended = time.time()
    time.sleep(0.3)
    stop.set()
    proc.join(30)
    return worst(log, quiet_end - 1.8, quiet_end), worst(log, started, ended), result


@dataclass
class Round:
    """One round: both tools on freshly built, identical tables."""

    pm_seconds: float
    pm_quiet: float
    pm_worst: float
    po_seconds: float
    po_quiet: float
    po_worst: float
    archived: int
    rate: float
    dropped: int
    objects: int
    before: dict[str, int]
    after: dict[str, int]
    children: dict[str, int]
    problems: list[str]


def count(dsn: str, query: sql.Composed) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def one_round(
    dsn: str, endpoint: str, rows: int, tmp: Path, prefix: str, rotate: Any, settings: Any
) -> Round:
    """Build both tables, run pg_partman's maintenance then perfops' rotation, each beside the
    writer; check rows and archives."""
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists partman cascade")
        for table in ("audit_logs", "audit_logs_partman"):
            conn.execute(sql.SQL("drop table if exists {} cascade").format(sql.Identifier(table)))
        for leftover in conn.execute(
            "select relname from pg_class where relname ~ '^audit_logs' and relkind = 'r'"
        ).fetchall():
            conn.execute(sql.SQL("drop table {}").format(sql.Identifier(leftover[0])))
    build(dsn, rows, now)
    tables = ("audit_logs", "audit_logs_partman")
    before = {
        t: count(dsn, sql.SQL("select count(*) from {}").format(sql.Identifier(t))) for t in tables
    }

    # pg_partman first (it holds no state perfops reads).
    def partman() -> float:
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select partman.run_maintenance('public.audit_logs_partman')")
        return time.perf_counter() - started

    pm_quiet, pm_worst, pm_seconds = with_writer(dsn, "audit_logs_partman", tmp, partman)

    def perfops() -> tuple[float, Any]:
        started = time.perf_counter()
        report = rotate(prefix, apply=True, settings=settings)
        return time.perf_counter() - started, report

    po_quiet, po_worst, (po_seconds, report) = with_writer(dsn, "audit_logs", tmp, perfops)
    [table] = report.tables
    archived = sum(e.rows or 0 for e in table.expired if e.uri)
    archive_s = table.retire_seconds or 0.0  # wall time of archive + verify + drop
    after = {
        t: count(dsn, sql.SQL("select count(*) from {} where id > 0").format(sql.Identifier(t)))
        for t in tables
    }
    children = {
        t: count(
            dsn,
            sql.SQL("select count(*) from pg_inherits where inhparent = {}::regclass").format(
                sql.Literal(t)
            ),
        )
        for t in tables
    }
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/").get("KeyCount", 0)
    return Round(
        pm_seconds=pm_seconds,
        pm_quiet=pm_quiet,
        pm_worst=pm_worst,
        po_seconds=po_seconds,
        po_quiet=po_quiet,
        po_worst=po_worst,
        archived=archived,
        rate=archived / archive_s if archive_s else 0.0,
        dropped=sum(e.status == "dropped" for e in table.expired),
        objects=objects,
        before=before,
        after=after,
        children=children,
        problems=[
            f"{e.partition}: {e.status} {e.detail}" for e in table.expired if e.status != "dropped"
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds on freshly built tables; goals are judged on the medians (default 3)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--parallel", type=int, default=None, help="archive_parallelism (default: the flow's)"
    )
    parser.add_argument("--prefect-api-url", default=None)
    args = parser.parse_args(argv)
    dsn = recreate_database(DATABASE)
    tmp = Path(f"/tmp/perfops-bench-partitions-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    port = free_port()
    moto = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        for key, value in (
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            os.environ.setdefault(key, value)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET
        )
        rounds: list[Round] = []
        with prefect_server(args.prefect_api_url) as api:
            os.environ["PREFECT_API_URL"] = api
            os.environ["PERFOPS_DSN"] = dsn
            os.environ["PERFOPS_S3_ENDPOINT_URL"] = endpoint
            os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
            from cli.support import run_flow
            from decisions.partition_rotation import RotationSettings
            from decisions.partitioning import PartitionPolicy
            from flows.rotate_partitions import rotate_partitions

            def rotate(prefix: str, **parameters: object) -> object:
                policy = PartitionPolicy(
                    table="public.audit_logs",
                    interval="month",
                    premake=3,
                    retention="12 months",
                    archive=f"s3://{BUCKET}/{prefix}",
                )
                # As `perfops partitions rotate` runs it (no heartbeat thread to join at the end).
                return run_flow(
                    lambda: rotate_partitions,
                    {"policies": [policy], **parameters},
                    verbose=False,
                    label="rotate",
                    show_progress=False,
                )

            settings = (
                RotationSettings(archive_parallelism=args.parallel)
                if args.parallel
                else RotationSettings()
            )
            warmed = False
            for n in range(1, args.rounds + 1):
                print(f"round {n} of {args.rounds}...", file=sys.stderr, flush=True)
                if not warmed:
                    build(dsn, 1000, datetime.now(UTC))
                    rotate("warm-up")  # a dry run: imports, the server's first requests
                    warmed = True
                rounds.append(
                    one_round(dsn, endpoint, args.rows, tmp, f"round{n}", rotate, settings)
                )
        return report(rounds)
    finally:
        os.killpg(moto.pid, signal.SIGTERM)
        moto.wait(10)
        if not args.keep:
            drop_database(DATABASE)


def report(rounds: list[Round]) -> int:
    """Print every round and the medians; the goals are judged on the medians."""

    def ms(x: float) -> str:
        return f"{x * 1000:.0f}"

    def each(values: list[str]) -> str:
        return " / ".join(values)

    pm_seconds = median(r.pm_seconds for r in rounds)
    po_seconds = median(r.po_seconds for r in rounds)
    pm_worst = median(r.pm_worst for r in rounds)
    po_worst = median(r.po_worst for r in rounds)
    rate = median(r.rate for r in rounds)
    print_table(
        [
            f"median of {len(rounds)} rounds (each round)",
            "pg_partman 4.7 run_maintenance",
            "perfops rotate_partitions --apply",
        ],
        [
            [
                "run time (s)",
                f"{pm_seconds:.2f} ({each([f'{r.pm_seconds:.2f}' for r in rounds])})",
                f"{po_seconds:.2f} ({each([f'{r.po_seconds:.2f}' for r in rounds])})",
            ],
            [
                "rows before",
                f"{rounds[0].before['audit_logs_partman']:,}",
                f"{rounds[0].before['audit_logs']:,}",
            ],
            [
                "rows after (without writer's)",
                each([f"{r.after['audit_logs_partman']:,}" for r in rounds]),
                each([f"{r.after['audit_logs']:,}" for r in rounds]),
            ],
            [
                "children after",
                each([str(r.children["audit_logs_partman"]) for r in rounds]),
                each([str(r.children["audit_logs"]) for r in rounds]),
            ],
            [
                "partitions dropped",
                "12 (no archive)",
                each([str(r.dropped) for r in rounds]) + " (archived first)",
            ],
            [
                "rows archived",
                "0",
                each([f"{r.archived:,} in {r.objects} objects" for r in rounds]),
            ],
            [
                "archive rows/s (wall: dump+upload+verify+drop)",
                "-",
                f"{rate:,.0f} ({each([f'{r.rate:,.0f}' for r in rounds])})",
            ],
            [
                "writer worst latency quiet (ms)",
                each([ms(r.pm_quiet) for r in rounds]),
                each([ms(r.po_quiet) for r in rounds]),
            ],
            [
                "writer worst latency during (ms)",
                f"{ms(pm_worst)} ({each([ms(r.pm_worst) for r in rounds])})",
                f"{ms(po_worst)} ({each([ms(r.po_worst) for r in rounds])})",
            ],
        ],
    )
    misses = []
    for n, r in enumerate(rounds, 1):
        for problem in r.problems:
            print(f"  round {n}: {problem}")
        if r.dropped != 12:
            misses.append(f"round {n} dropped {r.dropped} partitions, expected 12")
        if r.after["audit_logs"] + r.archived != r.before["audit_logs"]:
            misses.append(
                f"round {n} rows: {r.after['audit_logs']:,} left + {r.archived:,} archived != "
                f"{r.before['audit_logs']:,} before"
            )
    if rate < GOAL_ROWS_PER_S:
        misses.append(f"archive {rate:,.0f} rows/s < {GOAL_ROWS_PER_S:,}")
    if po_worst > pm_worst:
        misses.append(
            f"writer worst {po_worst * 1000:.1f} ms during perfops > "
            f"{pm_worst * 1000:.1f} ms during pg_partman"
        )
    if po_seconds >= GOAL_RUN_S:
        misses.append(f"run {po_seconds:.1f} s >= {GOAL_RUN_S:.0f} s")
    print(
        f"partitions (medians of {len(rounds)} rounds): perfops archived "
        f"{rounds[0].archived:,} rows at {rate:,.0f} rows/s and rotated in {po_seconds:.1f} s "
        f"(goal < {GOAL_RUN_S:.0f} s); writer worst {po_worst * 1000:.0f} ms vs pg_partman's "
        f"{pm_worst * 1000:.0f} ms ({pm_seconds:.2f} s, no archive): "
        + ("all goals met" if not misses else "MISSED: " + "; ".join(misses))
    )
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
