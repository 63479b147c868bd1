"""suggest_indexes --apply on a partitioned table, on the real PostgreSQL: CREATE INDEX
CONCURRENTLY cannot build on one, so perfops builds the table's own index ON ONLY, each
partition's copy CONCURRENTLY (a sub-partitioned partition the same way), and attaches them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from blocks import PostgresTarget
from decisions.indexing import Candidate, IndexAdvisorSettings, index_name
from flows.suggest_indexes import suggest_indexes
from tasks.postgres.index_builds import BuildRequest, create_indexes
from tests.records import one_target

pytestmark = pytest.mark.usefixtures("prefect_harness")

CANDIDATE = Candidate(schema_name="advp", table_name="events", columns=["customer_id"])
NAME = index_name(CANDIDATE)


@pytest.fixture()
def events(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """advp.events, range-partitioned by month: two plain partitions (one in another schema)
    and one partitioned again by hash; 90,000 rows, its lookups counted."""
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists advp cascade")
        conn.execute("drop schema if exists advp_old cascade")
        conn.execute("create schema advp")
        conn.execute("create schema advp_old")
        conn.execute(
            "create table advp.events (id bigint, customer_id int, at date not null) "
            "partition by range (at)"
        )
        conn.execute(
            "create table advp_old.events_2026_01 partition of advp.events "
            "for values from ('2026-01-01') to ('2026-02-01')"
        )
        conn.execute(
            "create table advp.events_2026_02 partition of advp.events "
            "for values from ('2026-02-01') to ('2026-03-01')"
        )
        conn.execute(
            "create table advp.events_2026_03 partition of advp.events "
            "for values from ('2026-03-01') to ('2026-04-01') partition by hash (id)"
        )
        for r in range(2):
            conn.execute(
                f"create table advp.events_2026_03_h{r} partition of advp.events_2026_03 "
                f"for values with (modulus 2, remainder {r})"
            )
        conn.execute(
            "insert into advp.events select g, (g * 7919) % 20000, "
            "date '2026-01-01' + (g % 90) from generate_series(1, 90000) g"
        )
        conn.execute("analyze advp.events")
        conn.execute(
            "select pg_stat_statements_reset(0, (select oid from pg_database "
            "where datname = current_database()), 0)"
        )
        for i in range(30):
            conn.execute("select * from advp.events where customer_id = %s", (i,)).fetchall()
    yield pg_dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists advp cascade")
        conn.execute("drop schema if exists advp_old cascade")


def _tree(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, bool, int]]:
    """Every index of NAME's tree: name -> (its table, valid, level)."""
    rows = conn.execute(
        "select c.relname, x.indrelid::regclass::text, x.indisvalid, t.level "
        "from pg_partition_tree(%s::regclass) t join pg_class c on c.oid = t.relid "
        "join pg_index x on x.indexrelid = t.relid",
        (f"advp.{NAME}",),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _perfops_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "select indexname from pg_indexes where schemaname in ('advp', 'advp_old') "
        "and indexname like 'perfops_idx_%' order by 1"
    ).fetchall()
    return [r[0] for r in rows]


def test_apply_builds_on_every_partition_attaches_them_and_a_rerun_suggests_nothing(
    events: str,
) -> None:
    settings = IndexAdvisorSettings(min_calls=10, include_tables=["advp.events"])
    report = one_target(suggest_indexes, settings=settings, apply=True)
    # the DDL shown is what can build on a partitioned table, not a CONCURRENTLY that fails
    [suggestion] = report.suggestions
    assert suggestion.ddl.startswith('-- "advp"."events" is partitioned'), suggestion.ddl
    assert f'CREATE INDEX "{NAME}" ON ONLY "advp"."events" USING btree ("customer_id");' in (
        suggestion.ddl
    )
    assert "ATTACH PARTITION" in suggestion.ddl
    [build] = report.builds
    assert build.status == "created", build.detail
    assert build.index_name == NAME
    assert build.used_by and build.size_bytes > 0
    assert all(build.costs_after[q] < build.costs_before[q] for q in build.used_by)
    with psycopg.connect(events) as conn:
        tree = _tree(conn)
        # the table's index, the two plain partitions', the hash-partitioned one's and its two
        assert len(tree) == 6 and all(valid for _, valid, _ in tree.values()), tree
        tables = sorted(table for table, _, level in tree.values() if level == 1)
        assert tables == [
            "advp.events_2026_02",
            "advp.events_2026_03",
            "advp_old.events_2026_01",
        ]
        assert sum(1 for _, _, level in tree.values() if level == 2) == 2
        # a partition created later gets its copy from PostgreSQL, as for any partitioned index
        conn.execute(
            "create table advp.events_2026_04 partition of advp.events "
            "for values from ('2026-04-01') to ('2026-05-01')"
        )
        assert len(_tree(conn)) == 7
        conn.rollback()
    again = one_target(suggest_indexes, settings=settings, apply=True)
    assert again.suggestions == [] and again.builds == []
    assert any(r.reason.startswith(f"covered by {NAME}") for r in again.rejected), again.rejected


def test_a_partition_locked_by_a_writer_fails_the_build_and_the_next_run_finishes_it(
    events: str,
) -> None:
    target = PostgresTarget(dsn=SecretStr(events))
    request = BuildRequest(candidate=CANDIDATE, queries={}, expected_costs={})
    # a writer holds one sub-partition past the lock_timeout: its copy cannot be built, and
    # the table's index cannot be dropped while it holds it either
    with psycopg.connect(events) as holder:
        holder.execute("lock table advp.events_2026_03_h1 in share update exclusive mode")
        [blocked] = create_indexes.fn(target, [request], lock_timeout_ms=200)
        holder.rollback()
    assert blocked.status == "failed" and "lock timeout" in blocked.detail, blocked.detail
    assert "the next run finishes this index" in blocked.detail, blocked.detail
    with psycopg.connect(events) as conn:
        assert not all(valid for _, valid, _ in _tree(conn).values())  # not usable yet
    [built] = create_indexes.fn(target, [request], lock_timeout_ms=2000)
    assert built.status == "created", built.detail
    with psycopg.connect(events) as conn:
        tree = _tree(conn)
        assert len(tree) == 6 and all(valid for _, valid, _ in tree.values()), tree
        assert len(_perfops_indexes(conn)) == 6  # nothing built twice


def test_a_partition_it_cannot_build_on_leaves_nothing_behind(events: str) -> None:
    """The name of one partition's copy is taken by another table's index: the build stops,
    drops the table's index it made (its attached copies with it) and leaves the other alone."""
    target = PostgresTarget(dsn=SecretStr(events))
    with psycopg.connect(events, autocommit=True) as conn:
        oid = conn.execute("select 'advp.events_2026_02'::regclass::oid::bigint").fetchone()
        assert oid is not None
        suffix = f"_p{oid[0]}"
        taken = NAME[: 63 - len(suffix)] + suffix
        conn.execute("create table advp.other (x int)")
        conn.execute(f'create index "{taken}" on advp.other (x)')
    request = BuildRequest(candidate=CANDIDATE, queries={}, expected_costs={})
    [failed] = create_indexes.fn(target, [request])
    assert failed.status == "failed" and f"the name advp.{taken} is taken" in failed.detail
    assert "indexes it made were dropped" in failed.detail, failed.detail
    with psycopg.connect(events) as conn:
        assert _perfops_indexes(conn) == [taken]  # the other table's index is kept


def test_a_run_that_crashed_midway_is_finished_by_the_next(events: str) -> None:
    """A worker killed after the table's index and one partition's copy: the next run reuses
    that copy (same name), builds the rest and attaches them; nothing is built twice."""
    target = PostgresTarget(dsn=SecretStr(events))
    with psycopg.connect(events, autocommit=True) as conn:
        conn.execute(f'create index "{NAME}" on only advp.events (customer_id)')
        oid = conn.execute("select 'advp.events_2026_02'::regclass::oid::bigint").fetchone()
        assert oid is not None
        suffix = f"_p{oid[0]}"
        copy = NAME[: 63 - len(suffix)] + suffix
        conn.execute(f'create index concurrently "{copy}" on advp.events_2026_02 (customer_id)')
        copy_oid = conn.execute("select %s::regclass::oid", (f"advp.{copy}",)).fetchone()
    request = BuildRequest(candidate=CANDIDATE, queries={}, expected_costs={})
    [built] = create_indexes.fn(target, [request])
    assert built.status == "created", built.detail
    with psycopg.connect(events) as conn:
        tree = _tree(conn)
        assert len(tree) == 6 and all(valid for _, valid, _ in tree.values())
        assert copy in tree  # reused, not built again under another name
        assert conn.execute("select %s::regclass::oid", (f"advp.{copy}",)).fetchone() == copy_oid
        assert len(_perfops_indexes(conn)) == 6
