"""perfops over a fleet of 100 databases, fanned out as subflows, with 1, 2 and 4 workers.

    python -m benchmarks.fleet [--databases 100] [--clusters 4] [--workers 1,2,4]
                               [--anchor-workers 2] [--anchor-targets 101] [--flows ...]

What it starts (all under one temporary folder, all stopped and removed at the end, also on a
failure or Ctrl-C):

- `--clusters` private PostgreSQL 15 clusters (`initdb`, free ports, pg_stat_statements
  preloaded) named `perfops_fleetbench_pg<N>`, holding `--databases` small databases
  `perfops_fleetbench_<NNN>` between them: three tables each (customers, orders, events; a few
  thousand rows, autovacuum off) and a dozen statements run a few times, so
  `refresh_stale_statistics` has tables to ANALYZE and `find_slow_queries` statements to rank
  and EXPLAIN. Before every round 20% of the rows of orders and events are updated again, so
  every round has the same work. The first database also has a monthly partitioned table
  `audit_log` and 300 more small tables (its stats refresh takes seconds, not a fraction of
  one) for the overlap check.
- One more private cluster holding the Prefect server's own database (PostgreSQL-backed, as
  tests/e2e and production run it: the SQLite server answers 503 under concurrent run creation).
- A Prefect server with `PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS=2`:
  a client denied a global concurrency slot retries after the server's Retry-After, which is
  the limit's average slot occupancy capped at this setting (default 30 s). Children hold their
  database's and cluster's slots for one to a few seconds, and a 30 s cap lets one stale average
  park a waiting child for up to ~39 s (30 s + Poisson jitter) after its slot freed; 2 s bounds
  the retry at ~2.6 s, so the "no wait over 5 s" goal measures perfops, not that default.
- A block `perfops-postgres-fleetbench-<NNN>` per database, one `perfops-postgres-fleetbench-down`
  on a closed port (the unreachable target), and a generated fleet file (targets `fb-<NNN>`
  and `fb-down`, clusters `fleetbench-pg<N>`, `max_parallel` 4, `max_parallel_per_cluster` 2),
  named to the workers through the work pool's environment (`PERFOPS_FLEET_FILE`, set by
  `perfops deploy --pool-env`).
- The deployments of prefect.yaml, deployed the project's way (`prefect block register`,
  `prefect work-pool create`, `perfops deploy`), and process workers started with
  `PREFECT_WORKER_QUERY_SECONDS=2` (default 10 s): a run created through the API waits up to
  one poll for a worker, and a 10 s poll would add up to 10 s to every measured wall time and
  to each of the anchor's 202 runs; 2 s keeps the worker's pick-up small and visible.

Each round (1, then 2, then 4 workers: workers are added between rounds) creates, through the
REST API in the same instant, one fleet run of each flow (`targets: all`, 101 targets) and waits
for both. With `--spread auto` (default 1, as the shipped fleet file) each parent splits its
targets into one share per online worker, runs the first itself and starts the others as runs of its
deployment, which the workers take (each started with `--limit 2`, `--worker-limit`: a process
worker without a limit takes every waiting run in one poll, so one worker would take every
share); a share no worker has taken when its parent is done with its own is taken back and run
by the parent. The "shares" column says how many shares workers ran, how many were taken back,
and which workers ran the parents and shares. It then reads every child run
(`parent_flow_run_id` of the two parents and of their shares), their logs and the
`prefect.concurrency-limit.acquired/released` events, and prints:

- wall: the first parent's creation to the last parent's end (server timestamps), seconds;
- child sum: the sum over all children of their own duration (end - start; when a child takes
  its slots itself, minus the wait it logged, "holding ... (waited N s for it)");
- bound: the goal for the wall time, 1.3 x child sum / workers + 30 s (checked at 2 and 4
  workers);
- runs/min: children finished per minute of wall time;
- idle slot wait: the longest wait for a slot while a worker was idle. Each slot lease (taken by
  the child itself or, just before it starts the child, by its parent's thread) is read from
  the `prefect.concurrency-limit.acquired/released` events: acquired at A by its holder, which
  logged waiting W for it, so it asked at R = A - W; its slots were free from F, the end of the
  last moment before A at which one of its limits (database, 1 slot; cluster,
  `max_parallel_per_cluster`) was held to capacity by other leases. Its idle wait is
  A - max(R, F): time the holder (a parent thread, so its worker) sat waiting although the
  slots were free. Waiting while another run held the slot is not idle: that is the exclusion
  working. Goal: no idle wait over 5 s;
- max wait: the longest plain wait for slots of any child (free or not), for reference;
- unreachable: both parents Failed with "1 of 101 targets failed: fb-down: ...", fb-down's
  children Failed and every other child Completed.

Each round ends with the overlap check: a `refresh_stale_statistics` (dry_run false) and a
`rotate_partitions` (apply, a monthly policy on audit_log: it creates partitions) fleet run over
the first target, created in the same instant. Both children hold the database's slot
`perfops-db-<host>:<port>:<dbname>`; the check reads, from the Prefect API, each child's task
runs (the steps that talk to the database) and their slot leases, and passes when neither the
task-run windows nor the leases overlap. It runs `--overlap-pairs` times (default 3) per worker
count; a pair counts as contended when the second child logged a wait for the slot (the two
really met; a pair whose runs started seconds apart proves nothing either way, and the table
says how many were contended).

The anchor (at `--anchor-workers`, default 2): what users did before fleets, one API run per
target and flow (101 + 101 runs of the deployments, `postgres_block` each), with the same
measures, on the deployments as prefect.yaml shipped them then (`concurrency_limit: 1` each, set
for the anchor and removed after it). There a run waits for its deployment's limit; its idle
wait is its start minus the later of its creation and the end of the deployment's run before it.

The last line is the summary; the exit code is 1 when a goal is missed (wall bound at 2 and 4
workers, idle wait > 5 s, an overlap, the unreachable target not failing alone). The machine's
load (os.getloadavg) is printed with each round: timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from benchmarks._support import ROOT, free_port, print_table, private_postgres
from tests.e2e.stack import POOL, command, spawn, stop, wait_healthy

PREFIX = "perfops_fleetbench_"
TARGET_PREFIX = "fb-"
DOWN = "fb-down"
BLOCK_PREFIX = "perfops-postgres-fleetbench-"
MAX_PARALLEL = 4
PER_CLUSTER = 2
GOAL_FACTOR = 1.3
GOAL_SLACK_S = 30.0
GOAL_IDLE_WAIT_S = 5.0
SLOT_WAIT_CAP_S = 2
WORKER_QUERY_S = 2
RUN_TIMEOUT_S = 1800.0
FLOWS = ("refresh_stale_statistics", "find_slow_queries")
SHARE = "-share-"  # in the name of a spread fleet run's share runs
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
HOLDING = re.compile(r"^holding (?P<names>.+) \(waited (?P<waited>[\d.]+) s for it\)")
# Tables of the first database only: its stats refresh in the overlap check has seconds of work
# (so a second run started with it finds the database's slot held).
WIDE_TABLES = 300
AUDIT_POLICY = {"table": "public.audit_log", "interval": "month", "premake": 2}

SCHEMA = """
create extension if not exists pg_stat_statements;
create table customers with (autovacuum_enabled = false) as
  select g::bigint as id, (array['eu', 'us', 'ap'])[1 + g % 3] as region,
         timestamptz '2026-01-01' + make_interval(mins => g) as created_at
  from generate_series(1, 2000) g;
alter table customers add primary key (id);
create table orders with (autovacuum_enabled = false) as
  select g::bigint as id, 1 + g % 2000 as customer_id,
         (array['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4] as status,
         (g % 500)::numeric + 0.99 as amount,
         timestamptz '2026-01-01' + make_interval(secs => g * 61) as created_at
  from generate_series(1, 8000) g;
alter table orders add primary key (id);
create table events with (autovacuum_enabled = false) as
  select g::bigint as id, 1 + g % 8000 as order_id,
         (array['view', 'click', 'buy'])[1 + g % 3] as kind,
         timestamptz '2026-01-01' + make_interval(secs => g * 17) as at
  from generate_series(1, 6000) g;
"""
# Statements each database runs (each a few times), so pg_stat_statements has work to rank.
WORKLOAD = (
    "select count(*) from orders where status = 'paid'",
    "select * from orders where customer_id = 42",
    "select c.region, sum(o.amount) from orders o join customers c on c.id = o.customer_id "
    "group by c.region",
    "select * from events where order_id = 7 order by at desc limit 10",
    "select kind, count(*) from events group by kind",
    "select o.id, count(e.*) from orders o left join events e on e.order_id = o.id "
    "where o.created_at > timestamptz '2026-01-02' group by o.id order by 2 desc limit 5",
    "select * from customers where region = 'eu' order by created_at limit 20",
    "select max(amount), min(amount), avg(amount) from orders",
    "select count(distinct customer_id) from orders where amount > 100",
    "update customers set region = region where id = 1",
)
STALE = (
    "update orders set amount = amount + 1 where id % 5 = 0",
    "update events set kind = kind where id % 5 = 0",
)


def log(message: str) -> None:
    print(f"[fleet] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def seconds(a: datetime | None, b: datetime | None) -> float:
    return (b - a).total_seconds() if a and b else 0.0


# --- the data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    target: str  # fleet target name
    cluster: str  # fleet cluster name
    dsn: str

    @property
    def block(self) -> str:
        return f"{BLOCK_PREFIX}{self.target.removeprefix(TARGET_PREFIX)}"


def build_databases(admin_dsns: list[str], count: int) -> list[Database]:
    """`count` databases spread over the clusters (round robin), built from one template per
    cluster, each running WORKLOAD; the first also gets the partitioned audit_log."""
    databases = [
        Database(
            target=f"{TARGET_PREFIX}{i:03d}",
            cluster=f"fleetbench-pg{i % len(admin_dsns) + 1}",
            dsn=make_conninfo(admin_dsns[i % len(admin_dsns)], dbname=f"{PREFIX}{i:03d}"),
        )
        for i in range(count)
    ]

    def one_cluster(n: int) -> None:
        admin = admin_dsns[n]
        template = f"{PREFIX}template"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(template)))
        with psycopg.connect(make_conninfo(admin, dbname=template), autocommit=True) as conn:
            conn.execute(SCHEMA.encode())
        for db in databases[n :: len(admin_dsns)]:
            name = str(conninfo_to_dict(db.dsn)["dbname"])
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("create database {} template {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
            with psycopg.connect(db.dsn, autocommit=True) as conn:
                for _ in range(3):
                    for statement in WORKLOAD:
                        conn.execute(statement.encode())

    with ThreadPoolExecutor(len(admin_dsns)) as pool:
        list(pool.map(one_cluster, range(len(admin_dsns))))
    with psycopg.connect(databases[0].dsn, autocommit=True) as conn:
        conn.execute(
            "create table audit_log (at timestamptz not null, what text) partition by range (at)"
        )
        for n in range(WIDE_TABLES):
            conn.execute(
                sql.SQL(
                    "create table {} with (autovacuum_enabled = false) as "
                    "select g as id, md5(g::text) as v from generate_series(1, 3000) g"
                ).format(sql.Identifier(f"wide_{n:03d}"))
            )
    reset_audit_log(databases[0])
    return databases


def reset_audit_log(db: Database) -> None:
    """audit_log back to one partition (this month), so each overlap check's rotation creates
    the months ahead (DDL)."""
    now = datetime.now(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        children = conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
            "where i.inhparent = 'public.audit_log'::regclass"
        ).fetchall()
        for (name,) in children:
            conn.execute(sql.SQL("drop table {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL(
                "create table audit_log_now partition of audit_log for values from ({}) to ({})"
            ).format(sql.Literal(start), sql.Literal(end))
        )


def make_stale(databases: list[Database]) -> None:
    """Change 20% of the rows of orders and events in every database (their statistics go
    stale: refresh_stale_statistics' threshold is 10%)."""

    def one(db: Database) -> None:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            for statement in STALE:
                conn.execute(statement.encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, databases))


def write_fleet_file(path: Path, databases: list[Database], spread: str = "1") -> None:
    lines = [
        "# Generated by python -m benchmarks.fleet",
        f"spread: {spread}",
        f"max_parallel: {MAX_PARALLEL}",
        f"max_parallel_per_cluster: {PER_CLUSTER}",
        "targets:",
    ]
    for db in databases:
        lines += [
            f"  - name: {db.target}",
            f"    blocks: {{postgres: {db.block}}}",
            f"    cluster: {db.cluster}",
        ]
    lines += [
        f"  - name: {DOWN}",
        f"    blocks: {{postgres: {BLOCK_PREFIX}down}}",
        "    cluster: fleetbench-down",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def save_blocks(api: str, databases: list[Database]) -> None:
    """One PostgresTarget block per database and the unreachable one, saved as
    deployments/create_blocks.py saves them (Block.save)."""
    os.environ["PREFECT_API_URL"] = api  # read when prefect is first imported, just below
    from pydantic import SecretStr

    from blocks import PostgresTarget

    for db in databases:
        PostgresTarget(dsn=SecretStr(db.dsn)).save(db.block, overwrite=True)
    down = f"host=127.0.0.1 port={free_port()} user=postgres dbname={PREFIX}down"
    PostgresTarget(dsn=SecretStr(down), connect_timeout_s=2).save(
        f"{BLOCK_PREFIX}down", overwrite=True
    )


# --- the Prefect stack ---------------------------------------------------------------------


@contextmanager
def prefect_stack(workdir: Path, database_url: str, fleet_file: Path) -> Iterator[dict[str, str]]:
    """A Prefect server on `database_url`, perfops' blocks types registered, the process pool
    and every deployment of prefect.yaml deployed with `perfops deploy`; yields the env."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERFOPS_", "PREFECT_"))}
    env.update(
        {
            "PREFECT_HOME": str(workdir / "prefect-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": str(
                SLOT_WAIT_CAP_S
            ),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
        }
    )
    log_file = workdir / "server.log"
    server = spawn(
        ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log_file, workdir
    )
    try:
        wait_healthy(api, server, log_file, timeout_s=180)
        client_env = {**env, "PREFECT_API_URL": api}
        command("prefect", client_env, "block", "register", "-m", "blocks")
        command(
            "prefect", client_env, "work-pool", "create", POOL, "--type", "process", "--overwrite"
        )
        command("perfops", client_env, "deploy", "--pool-env", f"PERFOPS_FLEET_FILE={fleet_file}")
        yield client_env
    finally:
        stop(server)


class Workers:
    """Process workers on the pool, added one by one, stopped by PID at the end."""

    def __init__(
        self, env: dict[str, str], workdir: Path, http: httpx.Client, limit: int = 0
    ) -> None:
        self.limit = limit
        self.env = {
            **env,
            "PERFOPS_PROJECT_DIR": str(ROOT),
            "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_S),
        }
        self.workdir = workdir
        self.http = http
        self.processes: list[subprocess.Popen[bytes]] = []

    def scale_to(self, count: int) -> None:
        while len(self.processes) < count:
            n = len(self.processes) + 1
            self.processes.append(
                spawn(
                    ["worker", "start", "--pool", POOL, "--name", f"fleetbench-{n}"]
                    + (["--limit", str(self.limit)] if self.limit else []),
                    self.env,
                    self.workdir / f"worker-{n}.log",
                    self.workdir,
                )
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = self.http.post(f"/work_pools/{POOL}/workers/filter", json={}).json()
            online = {w["name"] for w in found if w.get("status") == "ONLINE"}
            if all(f"fleetbench-{n}" in online for n in range(1, count + 1)):
                return
            time.sleep(1)
        raise RuntimeError(f"{count} workers did not come online: see {self.workdir}/worker-*.log")

    def mark(self) -> None:
        """Remember where each worker's log ends, for `took`."""
        self.marks = {
            n: (self.workdir / f"worker-{n}.log").stat().st_size
            for n in range(1, len(self.processes) + 1)
        }

    def took(self, run_name: str) -> set[int]:
        """The workers that started the run `run_name` since `mark` (only the one whose Pending
        proposal the server accepted logs "submitted to infrastructure")."""
        line = f"Flow run '{run_name}' submitted to infrastructure"
        found: set[int] = set()
        for n, offset in getattr(self, "marks", {}).items():
            with (self.workdir / f"worker-{n}.log").open("rb") as log:
                log.seek(offset)
                if line in log.read().decode(errors="replace"):
                    found.add(n)
        return found

    def stop_all(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            stop(process)


# --- reading runs back ---------------------------------------------------------------------


@dataclass
class Run:
    id: str
    name: str
    flow: str
    state: str
    message: str
    created: datetime
    start: datetime | None
    end: datetime | None
    parent: str | None = None
    block: str = ""  # its postgres_block parameter
    via: str | None = None  # the share run that started it (a spread fleet run)
    waited: float = 0.0  # the run's own log: seconds it waited for its slots
    acquired: datetime | None = None  # its slots (from the acquired event)

    @property
    def own(self) -> float:
        return max(0.0, seconds(self.start, self.end) - self.waited)


@dataclass
class Lease:
    limits: frozenset[str]
    acquired: datetime
    released: datetime | None
    holder: str | None  # flow run id
    event_ids: set[str] = field(default_factory=set)
    waited: float | None = None  # what the holder logged waiting for it


def as_run(raw: dict[str, Any], flows: dict[str, str], parent: str | None = None) -> Run:
    state = raw.get("state") or {}
    return Run(
        id=str(raw["id"]),
        name=raw["name"],
        flow=flows.get(str(raw["flow_id"]), "?"),
        state=str(state.get("type", "?")),
        message=str(state.get("message") or ""),
        created=ts(raw["created"]) or datetime.now(UTC),
        start=ts(raw.get("start_time")),
        end=ts(raw.get("end_time")),
        parent=parent,
        block=str((raw.get("parameters") or {}).get("postgres_block") or ""),
    )


class Api:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self._flows: dict[str, str] = {}

    def flows(self) -> dict[str, str]:
        if not self._flows:
            found = self.http.post("/flows/filter", json={"limit": 200}).json()
            self._flows = {str(f["id"]): f["name"] for f in found}
        return self._flows

    def create_run(self, deployment: str, parameters: dict[str, Any]) -> str:
        found = self.http.get(f"/deployments/name/{deployment}/{deployment}")
        found.raise_for_status()
        created = self.http.post(
            f"/deployments/{found.json()['id']}/create_flow_run", json={"parameters": parameters}
        )
        if created.status_code != 201:
            raise RuntimeError(f"{deployment}: {created.status_code} {created.text}")
        return str(created.json()["id"])

    def wait_final(self, run_ids: list[str], timeout_s: float = RUN_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(run_ids)
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} runs not final after {timeout_s:.0f} s")
            for chunk in _chunks(sorted(pending), 200):
                found = self.http.post(
                    "/flow_runs/filter",
                    json={"flow_runs": {"id": {"any_": chunk}}, "limit": 200},
                ).json()
                pending -= {
                    str(r["id"]) for r in found if (r.get("state") or {}).get("type") in FINAL
                }
            if pending:
                time.sleep(1)

    def runs(self, flow_filter: dict[str, Any], parent: str | None = None) -> list[Run]:
        out: list[Run] = []
        offset = 0
        while True:
            found = self.http.post(
                "/flow_runs/filter",
                json={"flow_runs": flow_filter, "limit": 200, "offset": offset},
            ).json()
            out += [as_run(r, self.flows(), parent) for r in found]
            if len(found) < 200:
                return out
            offset += 200

    def children(self, parent: str) -> list[Run]:
        """The parent's child runs, those its shares started included (`via` the share)."""
        direct = self.runs({"parent_flow_run_id": {"any_": [parent]}}, parent)
        out = [r for r in direct if SHARE not in r.name]
        for share in (r for r in direct if SHARE in r.name):
            for run in self.runs({"parent_flow_run_id": {"any_": [share.id]}}, parent):
                run.via = share.id
                out.append(run)
        return out

    def shares(self, parent: str) -> list[Run]:
        """The share runs a spread parent started."""
        direct = self.runs({"parent_flow_run_id": {"any_": [parent]}}, parent)
        return [r for r in direct if SHARE in r.name]

    def logs(self, run_ids: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in _chunks(run_ids, 100):
            offset = 0
            while True:
                found = self.http.post(
                    "/logs/filter",
                    json={
                        "logs": {"flow_run_id": {"any_": chunk}},
                        "limit": 200,
                        "offset": offset,
                        "sort": "TIMESTAMP_ASC",
                    },
                ).json()
                out += found
                if len(found) < 200:
                    break
                offset += 200
        return out

    def task_runs(self, run_id: str) -> list[dict[str, Any]]:
        return list(
            self.http.post(
                "/task_runs/filter",
                json={"task_runs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200},
            ).json()
        )

    def slot_events(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        body = {
            "filter": {
                "occurred": {"since": since.isoformat(), "until": until.isoformat()},
                "event": {"prefix": ["prefect.concurrency-limit."]},
                "order": "ASC",
            },
            "limit": 50,
        }
        page = self.http.post("/events/filter", json=body).json()
        events = list(page["events"])
        while page.get("next_page"):
            page = self.http.get(page["next_page"]).json()
            events += page["events"]
        return events


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def leases_from(events: list[dict[str, Any]]) -> tuple[list[Lease], dict[str, int]]:
    """Slot leases (the limits one `concurrency()` call took, when, by which flow run, until
    when) and each limit's capacity, from the acquired/released events."""
    names: dict[str, str] = {}
    capacity: dict[str, int] = {}
    for e in events:
        rid = e["resource"]["prefect.resource.id"]
        names[rid] = e["resource"].get("prefect.resource.name", rid)
        capacity[names[rid]] = int(e["resource"].get("limit") or 1)
    leases: list[Lease] = []
    by_event: dict[str, Lease] = {}
    open_groups: list[tuple[str | None, frozenset[str], Lease]] = []
    for e in sorted(events, key=lambda e: e["occurred"]):
        if not e["event"].endswith(".acquired"):
            continue
        rid = e["resource"]["prefect.resource.id"]
        related = e.get("related") or []
        holder = next(
            (
                r["prefect.resource.id"].removeprefix("prefect.flow-run.")
                for r in related
                if r.get("prefect.resource.role") == "flow-run"
            ),
            None,
        )
        ids = frozenset(
            [rid]
            + [
                r["prefect.resource.id"]
                for r in related
                if r.get("prefect.resource.role") == "concurrency-limit"
            ]
        )
        occurred = ts(e["occurred"])
        assert occurred is not None
        lease = next(
            (
                lease
                for h, key, lease in open_groups
                if h == holder
                and key == ids
                and names[rid] not in lease.limits
                and abs(seconds(lease.acquired, occurred)) < 1.0
            ),
            None,
        )
        if lease is None:
            lease = Lease(
                limits=frozenset([names[rid]]), acquired=occurred, released=None, holder=holder
            )
            leases.append(lease)
            open_groups.append((holder, ids, lease))
            open_groups = open_groups[-64:]
        else:
            lease.limits = lease.limits | {names[rid]}
        lease.event_ids.add(str(e["id"]))
        by_event[str(e["id"])] = lease
    for e in events:
        if e["event"].endswith(".released") and e.get("follows") in by_event:
            lease = by_event[str(e["follows"])]
            released = ts(e["occurred"])
            if released and (lease.released is None or released > lease.released):
                lease.released = released
    return leases, capacity


def free_since(lease: Lease, leases: list[Lease], capacity: dict[str, int]) -> datetime | None:
    """The end of the last moment before `lease` was acquired at which one of its limits was
    held to capacity by other leases (None: never, since the round began)."""
    a = lease.acquired
    others = [m for m in leases if m is not lease and m.limits & lease.limits and m.acquired < a]
    points = sorted(
        {m.acquired for m in others} | {m.released for m in others if m.released and m.released < a}
    )
    points.append(a)
    for lo, hi in reversed(list(itertools.pairwise(points))):
        mid = lo + (hi - lo) / 2
        for limit in lease.limits:
            held = sum(
                1
                for m in others
                if limit in m.limits
                and m.acquired <= mid
                and (m.released is None or mid < m.released)
            )
            if held >= capacity.get(limit, 1):
                return hi
    return None


@dataclass
class Measure:
    label: str
    workers: int
    wall: float
    child_sum: float
    runs: int
    idle_wait: float
    idle_where: str
    max_wait: float
    failed_alone: bool
    failed_note: str
    overlap: str = ""
    load: str = ""
    shares: str = ""  # how the parents' share runs went, and the workers that took them
    by_flow: dict[str, float] = field(default_factory=dict)

    @property
    def bound(self) -> float:
        return GOAL_FACTOR * self.child_sum / self.workers + GOAL_SLACK_S

    @property
    def per_minute(self) -> float:
        return self.runs / (self.wall / 60) if self.wall else 0.0


def attach_waits(api: Api, runs: list[Run], leases: list[Lease]) -> None:
    """Each lease's logged wait, and each run's own. Whoever takes the slots (the child run
    itself, or its parent's thread just before it starts the child) logs "holding NAMES (waited
    N s for it)" right after getting them: a lease is matched to the first such line of its
    holder naming the same limits, at or after its acquired event."""
    by_id = {r.id: r for r in runs}
    holders = sorted({lease.holder for lease in leases if lease.holder} | set(by_id))
    lines: dict[str, list[tuple[datetime, frozenset[str], float]]] = {}
    for entry in api.logs(holders):
        match = HOLDING.match(str(entry.get("message", "")))
        when = ts(entry.get("timestamp"))
        if match and when:
            names = frozenset(n.strip() for n in match["names"].split(","))
            lines.setdefault(str(entry.get("flow_run_id")), []).append(
                (when, names, float(match["waited"]))
            )
    for lease in sorted(leases, key=lambda lease: lease.acquired):
        candidates = [
            line
            for line in lines.get(lease.holder or "", [])
            if line[1] == lease.limits and line[0] >= lease.acquired - timedelta(seconds=1)
        ]
        if candidates:
            line = min(candidates, key=lambda line: line[0])
            lines[lease.holder or ""].remove(line)
            lease.waited = line[2]
        run = by_id.get(lease.holder or "")
        if run is not None:  # the child took its own slots: its wait is inside its run time
            run.waited = lease.waited or 0.0
            run.acquired = lease.acquired


def slot_idle_waits(
    runs: list[Run], leases: list[Lease], capacity: dict[str, int]
) -> tuple[float, str, float]:
    """(longest idle wait, whose, longest plain wait) over the slot leases held by `runs` or
    by their parents for them."""
    worst, where, longest = 0.0, "", 0.0
    mine = {r.id for r in runs} | {r.parent or "" for r in runs} | {r.via or "" for r in runs}
    names = {r.id: r.name for r in runs}
    for lease in leases:
        if lease.holder not in mine or lease.waited is None:
            continue
        asked = lease.acquired - timedelta(seconds=lease.waited)
        freed = free_since(lease, leases, capacity)
        start = max(asked, freed) if freed else asked
        idle = max(0.0, seconds(start, lease.acquired))
        longest = max(longest, lease.waited)
        if idle > worst:
            whose = names.get(lease.holder or "", f"parent {lease.holder}")
            worst, where = idle, f"{whose} ({', '.join(sorted(lease.limits))})"
    return worst, where, longest


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


# --- the rounds ----------------------------------------------------------------------------


def fleet_round(
    api: Api, pool: Workers, flows: tuple[str, ...], databases: list[Database]
) -> Measure:
    workers = len(pool.processes)
    make_stale(databases)
    pool.mark()
    load_before = load()
    parameters: dict[str, dict[str, Any]] = {
        "refresh_stale_statistics": {"targets": "all", "dry_run": False},
        "find_slow_queries": {"targets": "all"},
    }
    parents = [api.create_run(f, parameters[f]) for f in flows]
    api.wait_final(parents)
    parent_runs = api.runs({"id": {"any_": parents}})
    children = [c for p in parents for c in api.children(p)]
    since = min(r.created for r in parent_runs)
    until = max(r.end or datetime.now(UTC) for r in parent_runs)
    time.sleep(3)  # the last events reach the server's store
    leases, capacity = leases_from(api.slot_events(since, until))
    attach_waits(api, children, leases)
    idle, where, longest = slot_idle_waits(children, leases, capacity)
    wall = seconds(since, until)
    ok, note = failed_alone(parent_runs, children, len(databases) + 1)
    took = {r.id: pool.took(r.name) for r in parent_runs}
    shares = [s for p in parents for s in api.shares(p)]
    for share in shares:
        took[share.id] = pool.took(share.name) if share.state != "CANCELLED" else set()
    taken_back = sum(1 for s in shares if s.state == "CANCELLED")
    used = sorted({w for ws in took.values() for w in ws})
    spread_note = (
        f"{len(shares) - taken_back} run, {taken_back} taken back; "
        f"workers used {','.join(map(str, used)) or '-'}"
    )
    by_flow: dict[str, float] = {}
    for c in children:
        by_flow[c.flow] = by_flow.get(c.flow, 0.0) + c.own
    return Measure(
        label="subflows",
        workers=workers,
        wall=wall,
        child_sum=sum(c.own for c in children),
        runs=len(children),
        idle_wait=idle,
        idle_where=where,
        max_wait=longest,
        failed_alone=ok,
        failed_note=note,
        load=f"{load_before} -> {load()}",
        shares=spread_note,
        by_flow=by_flow,
    )


def failed_alone(parents: list[Run], children: list[Run], targets: int) -> tuple[bool, str]:
    notes: list[str] = []
    for p in parents:
        expected = f"1 of {targets} targets failed: {DOWN}:"
        if p.state != "FAILED" or not p.message.startswith(expected):
            notes.append(f"{p.flow} parent {p.state}: {p.message[:120]!r}")
        mine = [c for c in children if c.parent == p.id]
        if len(mine) != targets:
            notes.append(f"{p.flow}: {len(mine)} children, not {targets}")
        wrong = [
            c.name
            for c in mine
            if c.state != ("FAILED" if c.name.endswith(f"-{DOWN}") else "COMPLETED")
        ]
        if wrong:
            notes.append(f"{p.flow}: {', '.join(wrong[:5])} in the wrong state")
    return not notes, "; ".join(notes) or "fb-down failed alone"


def overlap_check(api: Api, databases: list[Database]) -> tuple[bool, bool, str]:
    """A stats refresh and a partition rotation (apply) over the first target, at once."""
    first = databases[0]
    make_stale([first])
    with psycopg.connect(first.dsn, autocommit=True) as conn:
        for n in range(WIDE_TABLES):
            conn.execute(
                sql.SQL("update {} set v = v where id % 4 = 0").format(
                    sql.Identifier(f"wide_{n:03d}")
                )
            )
    reset_audit_log(first)
    parents = [
        api.create_run("refresh_stale_statistics", {"targets": [first.target], "dry_run": False}),
        api.create_run(
            "rotate_partitions",
            {
                "targets": [first.target],
                "apply": True,
                "policies": [AUDIT_POLICY],
                "policies_file": None,
            },
        ),
    ]
    api.wait_final(parents, 300)
    parent_runs = api.runs({"id": {"any_": parents}})
    children = [c for p in parents for c in api.children(p)]
    bad = [f"{r.flow} {r.state}: {r.message[:160]}" for r in parent_runs if r.state != "COMPLETED"]
    if len(children) != 2:
        return False, False, f"{len(children)} children, not 2; " + "; ".join(bad)
    windows: list[tuple[datetime, datetime, str]] = []
    for child in children:
        tasks = api.task_runs(child.id)
        starts = [t for t in (ts(t.get("start_time")) for t in tasks) if t]
        ends = [t for t in (ts(t.get("end_time")) for t in tasks) if t]
        if not starts or not ends:
            return False, False, f"{child.name}: no task runs"
        windows.append((min(starts), max(ends), child.name))
    windows.sort(key=lambda w: w[0])
    (s1, e1, n1), (s2, _, n2) = windows
    since = min(r.created for r in parent_runs)
    until = max(r.end or datetime.now(UTC) for r in parent_runs)
    time.sleep(2)
    leases, _ = leases_from(api.slot_events(since, until))
    attach_waits(api, children, leases)
    db_leases = sorted(
        (lease for lease in leases if any(n.startswith("perfops-db-") for n in lease.limits)),
        key=lambda lease: lease.acquired,
    )
    waits = sorted(lease.waited or 0.0 for lease in db_leases)
    contended = (
        f"contended: the second waited {waits[-1]:.1f} s for the slot"
        if waits and waits[-1] > 0
        else "NOT contended (neither waited): inconclusive"
    )
    lease_ok = len(db_leases) == 2 and (
        db_leases[0].released is not None and db_leases[1].acquired >= db_leases[0].released
    )
    gap = seconds(e1, s2)
    ok = gap >= 0 and lease_ok and not bad
    detail = (
        f"{n1} worked {s1:%H:%M:%S.%f}-{e1:%H:%M:%S.%f}, {n2} from {s2:%H:%M:%S.%f} "
        f"({gap:+.2f} s); db slot leases: {len(db_leases)}, "
        + ("in turn" if lease_ok else "OVERLAP or missing")
        + f"; {contended}"
    )
    return ok, bool(waits and waits[-1] > 0), detail + ("; " + "; ".join(bad) if bad else "")


def anchor_round(
    api: Api, workers: int, flows: tuple[str, ...], databases: list[Database], count: int
) -> Measure:
    """What users do today: one API run per target and flow, each naming its block."""
    make_stale(databases)
    load_before = load()
    blocks = [*(db.block for db in databases[: max(0, count - 1)]), f"{BLOCK_PREFIX}down"]
    run_ids: list[str] = []
    # The deployments as prefect.yaml shipped them before per-database slots: concurrency_limit
    # 1 each (without it, 202 runs would start 202 processes at once on this machine).
    deployments = [api.http.get(f"/deployments/name/{f}/{f}").json()["id"] for f in flows]
    for deployment in deployments:
        api.http.patch(f"/deployments/{deployment}", json={"concurrency_limit": 1})
    try:
        for flow in flows:
            extra: dict[str, Any] = {"dry_run": False} if flow == "refresh_stale_statistics" else {}
            run_ids += [api.create_run(flow, {"postgres_block": b, **extra}) for b in blocks]
        api.wait_final(run_ids, 4 * 3600)
    finally:
        for deployment in deployments:
            api.http.patch(f"/deployments/{deployment}", json={"concurrency_limit": None})
    runs = api.runs({"id": {"any_": run_ids}})
    since = min(r.created for r in runs)
    until = max(r.end or datetime.now(UTC) for r in runs)
    time.sleep(3)
    leases, _ = leases_from(api.slot_events(since, until))
    attach_waits(api, runs, leases)
    # Idle wait here: a run could start once its deployment's previous run ended (limit 1).
    worst, where = 0.0, ""
    for flow in flows:
        mine = sorted((r for r in runs if r.flow == flow and r.start), key=lambda r: r.start)  # type: ignore[arg-type,return-value]
        previous_end: datetime | None = None
        for r in mine:
            ready = max(r.created, previous_end) if previous_end else r.created
            idle = seconds(ready, r.start)
            if idle > worst:
                worst, where = idle, f"{r.name} (deployment concurrency_limit 1)"
            previous_end = max(previous_end, r.end) if previous_end and r.end else r.end
    not_done = [r for r in runs if r.state != "COMPLETED"]
    ok = len(not_done) == len(flows) and all(r.block.endswith("-down") for r in not_done)
    note = ", ".join(f"{r.flow}({r.block}) {r.state}" for r in not_done[:4])
    by_flow: dict[str, float] = {}
    for r in runs:
        by_flow[r.flow] = by_flow.get(r.flow, 0.0) + r.own
    return Measure(
        label=f"anchor: {len(blocks)} runs/flow",
        workers=workers,
        wall=seconds(since, until),
        child_sum=sum(r.own for r in runs),
        runs=len(runs),
        idle_wait=worst,
        idle_where=where,
        max_wait=max((seconds(r.created, r.start) for r in runs), default=0.0),
        failed_alone=ok,
        failed_note=note,
        load=f"{load_before} -> {load()}",
        by_flow=by_flow,
    )


# --- the report ----------------------------------------------------------------------------


def report(measures: list[Measure]) -> bool:
    rows = []
    for m in measures:
        rows.append(
            [
                m.label,
                m.workers,
                f"{m.wall:.1f}",
                f"{m.child_sum:.1f}",
                f"{m.bound:.1f}",
                m.runs,
                f"{m.per_minute:.1f}",
                f"{m.idle_wait:.2f}",
                f"{m.max_wait:.1f}",
                "yes" if m.failed_alone else "NO",
                m.overlap or "-",
                m.shares or "-",
                m.load,
            ]
        )
    print_table(
        [
            "runs",
            "workers",
            "wall s",
            "child sum s",
            "bound s",
            "children",
            "runs/min",
            "idle slot wait s",
            "max wait s",
            "down fails alone",
            "overlap",
            "shares",
            "load 1m/5m",
        ],
        rows,
    )
    print()
    for m in measures:
        flows = ", ".join(f"{f} {s:.1f} s" for f, s in sorted(m.by_flow.items()))
        print(f"{m.label}, {m.workers} workers: child sum by flow: {flows}")
        print(f"    longest idle slot wait: {m.idle_where or '-'}; down: {m.failed_note}")
    misses: list[str] = []
    for m in measures:
        if m.label != "subflows":
            continue
        if m.workers >= 2 and m.wall > m.bound:
            misses.append(f"wall {m.wall:.0f} s > {m.bound:.0f} s at {m.workers} workers")
        if m.idle_wait > GOAL_IDLE_WAIT_S:
            misses.append(f"idle slot wait {m.idle_wait:.1f} s at {m.workers} workers")
        if not m.failed_alone:
            misses.append(f"unreachable target at {m.workers} workers: {m.failed_note}")
        if not m.overlap.startswith("none"):
            misses.append(f"overlap at {m.workers} workers")
    fleet = {m.workers: m for m in measures if m.label == "subflows"}
    anchors = [m for m in measures if m.label != "subflows"]
    walls = ", ".join(f"{w}w {m.wall:.0f} s" for w, m in sorted(fleet.items()))
    anchor = "; ".join(
        f"anchor {a.workers}w {a.wall:.0f} s vs subflows {fleet[a.workers].wall:.0f} s"
        for a in anchors
        if a.workers in fleet
    )
    worst_idle = max((m.idle_wait for m in fleet.values()), default=0.0)
    print()
    print(
        f"fleet benchmark: wall {walls}; longest idle slot wait {worst_idle:.1f} s; "
        + (anchor + "; " if anchor else "")
        + ("all goals met" if not misses else "MISSED: " + "; ".join(misses))
    )
    return not misses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, ascending")
    parser.add_argument(
        "--anchor-workers", default="2", help="worker counts for the anchor; '' none"
    )
    parser.add_argument(
        "--anchor-targets",
        type=int,
        default=101,
        help="targets of the anchor (the last is fb-down)",
    )
    parser.add_argument("--flows", default=",".join(FLOWS))
    parser.add_argument(
        "--spread",
        default="1",
        help="the fleet file's spread: shares per fleet run (auto: the online workers; 1, the "
        "default: every child in the parent's process; all workers here share one machine)",
    )
    parser.add_argument(
        "--worker-limit",
        type=int,
        default=2,
        help="runs one worker works on at once (prefect worker start --limit; 0: no limit)",
    )
    parser.add_argument(
        "--overlap-pairs", type=int, default=3, help="overlap checks per worker count"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = parser.parse_args(argv)
    worker_counts = sorted(int(w) for w in args.workers.split(",") if w)
    anchor_counts = {int(w) for w in args.anchor_workers.split(",") if w}
    flows = tuple(f for f in args.flows.split(",") if f)
    if args.clusters < 3:
        parser.error("--clusters: 3 or more")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix=PREFIX))
    measures: list[Measure] = []
    with ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, True)
        else:
            log(f"keeping {workdir}")
        log(f"{args.clusters} PostgreSQL clusters and one for Prefect under {workdir}")
        admin = [
            stack.enter_context(private_postgres(workdir, f"{PREFIX}pg{n + 1}"))
            for n in range(args.clusters)
        ]
        prefect_pg = stack.enter_context(private_postgres(workdir, f"{PREFIX}prefect"))
        with psycopg.connect(prefect_pg, autocommit=True) as conn:
            conn.execute(f"create database {PREFIX}prefect")
        info = conninfo_to_dict(prefect_pg)
        database_url = f"postgresql+asyncpg://postgres@127.0.0.1:{info['port']}/{PREFIX}prefect"
        started = time.monotonic()
        databases = build_databases(admin, args.databases)
        log(f"{len(databases)} databases in {time.monotonic() - started:.0f} s")
        fleet_file = workdir / "fleet.yaml"
        write_fleet_file(fleet_file, databases)
        env = stack.enter_context(prefect_stack(workdir, database_url, fleet_file))
        started = time.monotonic()
        save_blocks(env["PREFECT_API_URL"], databases)
        log(f"{len(databases) + 1} blocks saved in {time.monotonic() - started:.0f} s")
        http = stack.enter_context(httpx.Client(base_url=env["PREFECT_API_URL"], timeout=60))
        api = Api(http)
        workers = Workers(env, workdir, http, args.worker_limit)
        stack.callback(workers.stop_all)
        for count in worker_counts:
            workers.scale_to(count)
            log(f"{count} workers: fleet runs of {', '.join(flows)}, {len(databases) + 1} targets")
            write_fleet_file(fleet_file, databases, args.spread)
            measure = fleet_round(api, workers, flows, databases)
            log(f"{count} workers: wall {measure.wall:.1f} s; overlap check")
            checks = []
            for _ in range(args.overlap_pairs):
                checks.append(overlap_check(api, databases))
                log(f"overlap check: {checks[-1][2]}")
            contended = sum(c[1] for c in checks)
            measure.overlap = (
                f"none ({contended} of {len(checks)} contended)"
                if all(c[0] for c in checks)
                else "YES"
            )
            measures.append(measure)
            if count in anchor_counts:
                log(f"{count} workers: anchor, {args.anchor_targets} single-target runs per flow")
                measures.append(anchor_round(api, count, flows, databases, args.anchor_targets))
        print()
        ok = report(measures)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
