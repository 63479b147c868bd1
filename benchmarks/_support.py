"""Shared pieces of the benchmarks: a scratch database, a Prefect server, timed commands."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get(
    "PERFOPS_BENCH_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
BIN = Path(sys.executable).parent


def dsn_for(database: str) -> str:
    return psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=database)


def recreate_database(name: str) -> str:
    """Drop and create `name`; return its DSN."""
    drop_database(name)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return dsn_for(name)


def drop_database(name: str) -> None:
    """Drop `name`, first forgetting its pg_stat_statements entries (they would outlive it and
    crowd out other databases' entries)."""
    try:
        with psycopg.connect(dsn_for(name), autocommit=True) as conn:
            if conn.execute(
                "select 1 from pg_extension where extname = 'pg_stat_statements'"
            ).fetchone():
                conn.execute(
                    "select pg_stat_statements_reset(0, (select oid from pg_database "
                    "where datname = current_database()), 0)"
                )
    except psycopg.OperationalError:
        pass  # it does not exist
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drain_prefect_queues() -> None:
    """Send the logs and events this process's flow runs queued before their server stops (else
    Prefect's exit handlers print "Error logging to API" for a server that is gone)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@contextmanager
def prefect_server(api_url: str | None = None) -> Iterator[str]:
    """Yield PREFECT_API_URL: `api_url` when given (a server already running), else a real Prefect
    server started here on a free port with a temporary SQLite home, stopped at the end."""
    if api_url:
        yield api_url
        return
    home = Path(tempfile.mkdtemp(prefix="perfops-bench-prefect-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Prefect server did not start")
            time.sleep(0.5)
        yield api
    finally:
        _drain_prefect_queues()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 1800,
    cwd: Path = ROOT,
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a whole command (from `cwd`, the repository by default); return (wall seconds,
    result)."""
    started = time.perf_counter()
    result = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:3])}... failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return elapsed, result


def flow_seconds(api: str, flow_name: str) -> float:
    """Run time of the newest run of `flow_name` as the Prefect server recorded it."""
    body = {"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_DESC", "limit": 1}
    [flow_run] = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).json()
    return float(flow_run["total_run_time"])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


@contextmanager
def private_postgres(root: Path, name: str) -> Iterator[str]:
    """A private PostgreSQL cluster for a benchmark: `initdb` (as the postgres user when run as
    root) under `root/name`, on a free port, with pg_stat_statements preloaded and fsync off (a
    benchmark's data is throwaway); yields its admin DSN and stops it at the end."""
    from demo.embedded_postgres import ensure_private_cluster, stop_private_cluster

    datadir = root / name
    try:
        dsn = ensure_private_cluster(datadir, free_port())
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("alter system set fsync = off")
            conn.execute("alter system set synchronous_commit = off")
            conn.execute("alter system set full_page_writes = off")
            conn.execute("select pg_reload_conf()")
        yield dsn
    finally:
        stop_private_cluster(datadir)
