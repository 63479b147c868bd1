"""Flows over a fleet, on the real PostgreSQL and the Prefect test harness: three small databases
and one target on a closed port. One child run per target, named and tagged with it; per-target
artifacts and the fleet summary; the unreachable target fails only its own child and the parent
says how many failed; two runs over one target never overlap; a single-database run that changes
a database waits for its slot."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from prefect import flow as prefect_flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun
from prefect.concurrency.sync import concurrency
from psycopg import sql
from pydantic import SecretStr

from blocks import PostgresTarget
from blocks.resolve import resolve_postgres
from decisions.fleet import FleetReport, database_limit
from decisions.partitioning import PartitionPolicy
from flows.check_index_health import check_index_health
from flows.find_slow_queries import find_slow_queries
from flows.refresh_stale_statistics import FLEET_ARTIFACT_KEY, refresh_stale_statistics
from flows.rotate_partitions import rotate_partitions
from flows.suggest_indexes import suggest_indexes
from tasks.fleet_runs import ensure_limits, run_over_fleet
from tests.conftest import ADMIN_DSN
from tests.records import artifact_rows, failed_run

pytestmark = pytest.mark.usefixtures("prefect_harness")

DATABASES = ("alpha", "beta", "gamma")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket is


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three databases, each with one never-analyzed table, saved as blocks; a fourth target
    whose block points at a closed port; the fleet file naming them."""
    run = uuid.uuid4().hex[:6]
    names = {t: f"perfops_fleet_{run}_{t}" for t in DATABASES}
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        for db in names.values():
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(db)))
    for target, db in names.items():
        dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=db)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create extension pg_stat_statements")
            conn.execute("create extension hypopg")
            conn.execute(
                "create table items with (autovacuum_enabled = false) as "
                "select g as id from generate_series(1, 100) g"
            )
        PostgresTarget(dsn=SecretStr(dsn)).save(f"fleet-{run}-{target}", overwrite=True)
    down = f"host=127.0.0.1 port={closed_port()} user=postgres dbname=x"
    PostgresTarget(dsn=SecretStr(down), connect_timeout_s=2).save(f"fleet-{run}-down")
    path = tmp_path_factory.mktemp("fleet") / "fleet.yaml"
    entries = "".join(
        f"  - name: {t}-{run}\n    blocks: {{postgres: fleet-{run}-{t}}}\n"
        f"    labels: {{env: {'prod' if t != 'down' else 'lab'}}}\n    cluster: local-{run}\n"
        for t in (*DATABASES, "down")
    )
    path.write_text(
        f"max_parallel: 4\nmax_parallel_per_cluster: 3\ntargets:\n{entries}"
        f"fleets:\n  every:\n    block_prefix: fleet-{run}-\n",
        encoding="utf-8",
    )
    path.with_suffix(".run").write_text(run)
    yield path
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        for db in names.values():
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(db))
            )


def run_id(fleet_file: Path) -> str:
    return fleet_file.with_suffix(".run").read_text()


def child_runs(tag: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )


def test_a_fleet_file_parameter_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    """A deployment run has no --fleet-file: its error names the flow's parameter."""
    state = refresh_stale_statistics(
        targets="all", fleet_file=str(tmp_path / "nope.yaml"), dry_run=True, return_state=True
    )
    assert state.is_failed()
    assert "nope.yaml: No such file or directory (named by the flow's fleet_file parameter" in str(
        state.message
    )


def test_a_block_given_with_targets_is_refused_not_ignored(fleet_file: Path) -> None:
    """Through the API, targets with postgres_block ran the fleet and ignored the block (the
    CLI refuses --fleet with --postgres-block)."""
    state = refresh_stale_statistics(
        targets="every",
        fleet_file=str(fleet_file),
        postgres_block="pg-orders",
        dry_run=True,
        return_state=True,
    )
    assert state.is_failed() and "postgres_block='pg-orders' names one target's block" in str(
        state.message
    )


def test_one_child_per_target_and_the_unreachable_one_fails_alone(fleet_file: Path) -> None:
    run = run_id(fleet_file)
    state = refresh_stale_statistics(targets="every", fleet_file=str(fleet_file), return_state=True)
    report, message = failed_run(state)
    assert isinstance(report, FleetReport)
    assert message.startswith(f"1 of 4 targets failed: down-{run}: cannot connect to PostgreSQL")
    assert "port 5432" not in message  # the closed port, not the server
    by_target = {t.target: t for t in report.targets}
    for name in DATABASES:
        done = by_target[f"{name}-{run}"]
        assert (done.result, done.changed) == (
            "done",
            "analyzed 1 of 1 tables, 0 failed, 0 skipped",
        ), done
        (child,) = child_runs(f"target:{name}-{run}")
        assert child.name == f"refresh_stale_statistics-{name}-{run}"
        assert f"cluster:local-{run}" in child.tags
        assert str(child.id) == done.flow_run_id
        assert child.parent_task_run_id is not None  # a subflow of the parent run
        assert artifact_rows(f"perfops-stats-refresh-{name}-{run}")[0]["result"] == "analyzed"
    (down,) = child_runs(f"target:down-{run}")
    assert down.state is not None and down.state.is_failed()
    assert by_target[f"down-{run}"].result == "failed"

    rows = artifact_rows(FLEET_ARTIFACT_KEY)
    assert [r["target"] for r in rows] == [f"{t}-{run}" for t in (*DATABASES, "down")]
    assert [r["result"] for r in rows] == ["done", "done", "done", "failed"]
    assert all(
        str(r["run"]).endswith(f"/runs/flow-run/{r_id}")
        for r, r_id in zip(rows, [by_target[r["target"]].flow_run_id for r in rows], strict=True)
    )


def test_two_runs_over_one_target_wait_for_each_other(fleet_file: Path) -> None:
    """Without the target's limit the second would stop at the advisory lock (LockBusy)."""
    run = run_id(fleet_file)
    target = f"alpha-{run}"
    states: list[Any] = []

    def parent() -> None:
        states.append(
            refresh_stale_statistics(
                targets=[target], fleet_file=str(fleet_file), return_state=True
            )
        )

    before = {r.id for r in child_runs(f"target:{target}")}
    threads = [threading.Thread(target=parent) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [s.is_completed() for s in states] == [True, True], [s.message for s in states]
    runs = sorted(
        (r for r in child_runs(f"target:{target}") if r.id not in before),
        key=lambda r: r.start_time or 0,
    )
    assert len(runs) == 2
    first, second = runs
    assert first.end_time is not None and second.start_time is not None
    assert second.start_time >= first.end_time, "two runs worked on one target at once"


def test_fleet_list_shows_each_target_and_its_reachability(
    fleet_file: Path, perfops: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_id(fleet_file)
    code = perfops(["fleet", "list", "--fleet-file", str(fleet_file), "--json"])
    assert code == 1  # one target is unreachable
    captured = capsys.readouterr()
    assert f"1 of 4 targets unreachable: down-{run}" in captured.err
    listed = json.loads(captured.out)
    reach = {t["name"]: (t["reachable"], t["cluster"]) for t in listed["targets"]}
    assert reach[f"alpha-{run}"] == (True, f"local-{run}")
    assert reach[f"down-{run}"][0] is False
    assert next(t for t in listed["targets"] if t["name"] == f"alpha-{run}")["detail"].startswith(
        "PostgreSQL 1"
    )
    assert (
        perfops(
            ["fleet", "list", "--fleet-file", str(fleet_file), "--fleet", "env=prod", "--no-probe"]
        )
        == 0
    )
    assert perfops(["stats", "refresh", "--fleet", "every", "--dsn", "host=x"]) == 2
    assert perfops(["queries", "slow", "--fleet", "every", "--postgres-block", "b"]) == 2
    # a selection the file does not have is refused before Prefect starts
    unknown = ["indexes", "health", "--fleet", "nosuch", "--fleet-file", str(fleet_file)]
    assert perfops(unknown) == 2
    assert "'nosuch' is neither a fleet" in capsys.readouterr().err


def test_every_per_database_flow_runs_over_the_fleet(fleet_file: Path) -> None:
    """find_slow_queries, check_index_health, suggest_indexes and rotate_partitions fan out like
    refresh_stale_statistics: a named child run and an artifact per target, a summary."""
    run = run_id(fleet_file)
    selection = [f"alpha-{run}", f"beta-{run}"]
    for flow, key in (
        (find_slow_queries, "perfops-slow-queries"),
        (check_index_health, "perfops-index-health"),
        (suggest_indexes, "perfops-index-suggestions"),
    ):
        report = flow(targets=selection, fleet_file=str(fleet_file))
        assert isinstance(report, FleetReport), flow.name
        assert [(t.target, t.result) for t in report.targets] == [(s, "done") for s in selection]
        assert [r["target"] for r in artifact_rows(f"{key}-fleet")] == selection
        for name in selection:
            names = [r.name for r in child_runs(f"target:{name}")]
            assert f"{flow.name}-{name}" in names
            # the child's own artifact (artifact_rows fails when there is none)
            assert isinstance(artifact_rows(f"{key}-{name}"), list)
    # rotate_partitions: no partitioned table there, so each child fails with the reason
    state = rotate_partitions(
        targets=selection,
        fleet_file=str(fleet_file),
        policies=[PartitionPolicy(table="public.items", interval="month")],
        return_state=True,
    )
    report, message = failed_run(state)
    assert isinstance(report, FleetReport)
    assert message.startswith("2 of 2 targets failed: ") and "not partitioned" in message


def test_a_run_that_changes_a_database_waits_for_its_slot(fleet_file: Path) -> None:
    """A single-database run that changes it holds `perfops-db-<host>:<port>:<db>`: while
    another holder has it, the run waits and starts its work only once it is released."""
    run = run_id(fleet_file)
    block = f"fleet-{run}-gamma"
    limit = database_limit(resolve_postgres(block).value.resource_id())
    ensure_limits({limit: 1})
    states: list[Any] = []
    with concurrency(limit, occupy=1, strict=True):
        worker = threading.Thread(
            target=lambda: states.append(
                refresh_stale_statistics(postgres_block=block, return_state=True)
            )
        )
        worker.start()
        worker.join(timeout=4)
        assert worker.is_alive() and not states, "the run did not wait for the database's slot"
        released = time.monotonic()
    worker.join(timeout=60)
    assert states and states[0].is_completed(), states
    assert time.monotonic() - released < 15


def test_a_run_given_fleet_target_by_hand_still_waits_for_its_databases_slot(
    fleet_file: Path,
) -> None:
    """`fleet_target` is a public parameter: an API or UI run that sets it (and changes the
    database) is no fleet child, so it takes the database's slot as a single run does."""
    run = run_id(fleet_file)
    block = f"fleet-{run}-beta"
    limit = database_limit(resolve_postgres(block).value.resource_id())
    ensure_limits({limit: 1})
    states: list[Any] = []
    with concurrency(limit, occupy=1, strict=True):
        worker = threading.Thread(
            target=lambda: states.append(
                refresh_stale_statistics(
                    postgres_block=block, fleet_target=f"beta-{run}", return_state=True
                )
            )
        )
        worker.start()
        worker.join(timeout=4)
        assert worker.is_alive() and not states, "fleet_target by hand skipped the slot"
    worker.join(timeout=60)
    assert states and states[0].is_completed(), states
    # and it is keyed as a single run, not as the target it named
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[states[0].state_details.flow_run_id])
            )
        )
    assert [a.key for a in artifacts] == ["perfops-stats-refresh"]


def test_targets_discovered_from_the_blocks_saved_on_the_server(
    fleet_file: Path, perfops: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fleet file that lists no target but discovers them by block-name prefix: one target
    per saved postgres block, for a run and for `perfops fleet list`."""
    run = run_id(fleet_file)
    found = fleet_file.with_name("discovered.yaml")
    found.write_text(
        f"discover:\n  - {{block_prefix: fleet-{run}-, labels: {{found: 'yes'}}}}\n",
        encoding="utf-8",
    )
    state = refresh_stale_statistics(
        targets="found=yes", fleet_file=str(found), dry_run=True, return_state=True
    )
    report, message = failed_run(state)  # the block on a closed port was discovered too
    assert isinstance(report, FleetReport) and message.startswith("1 of 4 targets failed: down")
    assert [t.target for t in report.targets] == sorted([*DATABASES, "down"])
    assert [t.result for t in report.targets if t.target != "down"] == ["done"] * 3
    capsys.readouterr()
    assert perfops(["fleet", "list", "--fleet-file", str(found), "--no-probe", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["targets"]
    assert {t["name"]: t["blocks"]["postgres"] for t in listed} == {
        name: f"fleet-{run}-{name}" for name in (*DATABASES, "down")
    }


@prefect_flow(name="fleet_echo")
def fleet_echo(targets: str | None = None, fleet_file: str | None = None, n: int = 0) -> Any:
    """A fleet parent whose children return a number; describing the second one fails."""
    if targets is None:
        return n

    def describe(result: Any) -> str:
        if result == 2:
            raise RuntimeError("cannot describe 2")
        return f"echoed {result}"

    return run_over_fleet(
        fleet_echo,
        targets,
        fleet_file,
        lambda _, target: ({"n": int(target.name[-1])}, {}),
        describe,
        artifact_key="perfops-fleet-echo-fleet",
        event="perfops.test.fleet_echo",
    )


def test_a_childs_unreadable_result_fails_its_row_only(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "targets:\n"
        + "".join(f"  - {{name: echo-{i}, blocks: {{postgres: p-{i}}}}}\n" for i in (1, 2, 3)),
        encoding="utf-8",
    )
    report = fleet_echo(targets="all", fleet_file=str(path))
    assert isinstance(report, FleetReport)
    rows = {t.target: (t.result, t.reason, t.changed) for t in report.targets}
    assert rows["echo-1"] == ("done", "Completed", "echoed 1")
    assert rows["echo-3"] == ("done", "Completed", "echoed 3")
    assert rows["echo-2"] == (
        "done",
        "its result could not be read: RuntimeError: cannot describe 2",
        "",
    )
    assert [r["target"] for r in artifact_rows("perfops-fleet-echo-fleet")] == [
        "echo-1",
        "echo-2",
        "echo-3",
    ]


def test_a_fleet_rotation_keeps_each_databases_archive_apart(
    fleet_file: Path, tmp_path: Path
) -> None:
    """The fleet's targets share the policies, so one archive: two databases with the same
    partitioned table must not archive their expired partitions to one key, where the second
    overwrites the first after the first's partition was dropped (its rows gone for good)."""
    run = run_id(fleet_file)
    selection = [f"alpha-{run}", f"beta-{run}"]
    ids = {"alpha": (1, 30), "beta": (1001, 1050)}  # different rows (and counts) in each
    for target, (first, last) in ids.items():
        dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=f"perfops_fleet_{run}_{target}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "create table audit_logs (id bigint, at timestamptz not null) "
                "partition by range (at)"
            )
            for month, upper in (("2024_01", "2024-02-01"), ("2026_11", "2026-12-01")):
                conn.execute(
                    sql.SQL(
                        "create table {} partition of audit_logs for values from ({}) to ({})"
                    ).format(
                        sql.Identifier(f"audit_logs_p{month}"),
                        sql.Literal(f"{month.replace('_', '-')}-01 00:00+00"),
                        sql.Literal(f"{upper} 00:00+00"),
                    )
                )
            conn.execute(
                "insert into audit_logs select g, '2024-01-02 00:00+00'::timestamptz "
                "from generate_series(%s::bigint, %s::bigint) g",
                (first, last),
            )
    archive = tmp_path / "archive"
    archive.mkdir()
    report = rotate_partitions(
        targets=selection,
        fleet_file=str(fleet_file),
        policies=[
            PartitionPolicy(
                table="public.audit_logs",
                interval="month",
                premake=0,
                retention="12 months",
                archive=str(archive),
            )
        ],
        apply=True,
        now=datetime(2026, 11, 15, tzinfo=UTC),
    )
    assert isinstance(report, FleetReport)
    assert [(t.target, t.result) for t in report.targets] == [(s, "done") for s in selection]
    archived = sorted(
        i
        for path in archive.rglob("*.parquet")
        for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()
    )
    expected = sorted(i for first, last in ids.values() for i in range(first, last + 1))
    assert archived == expected  # every dropped row of both databases is in an archive
    # each target's archive in its own folder: <target>/<schema>/<table>/<partition>.parquet
    assert sorted(str(p.relative_to(archive)) for p in archive.rglob("*.parquet")) == [
        f"{name}/public/audit_logs/audit_logs_p2024_01.parquet" for name in selection
    ]
