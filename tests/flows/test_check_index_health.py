"""check_index_health on the real PostgreSQL: findings and their reasons, dry run, dropping named
indexes CONCURRENTLY, refusals, locked tables, hostile names, an unreachable server, and
`perfops indexes health`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from blocks import PostgresTarget
from decisions.index_health import IndexFinding, IndexHealthSettings
from flows.check_index_health import ARTIFACT_KEY, IndexHealthReport, check_index_health
from tasks.postgres.index_changes import drop_indexes, lock_name
from tasks.postgres.server import advisory_lock, connect
from tests.records import artifact_rows, failed_run, one_target, superuser_fix, wait_for_event

pytestmark = pytest.mark.usefixtures("prefect_harness")

SCHEMA = "Health Q"  # mixed case and a space
TABLE = 'x"; DROP TABLE y; --'
HOSTILE_INDEX = 'i"; DROP INDEX y; --'
SETTINGS = IndexHealthSettings(
    min_size_bytes=64 * 1024,
    schemas=[SCHEMA],
    catalog_lock_timeout_ms=300,
    drop_lock_timeout_ms=300,
)


def q(*names: str) -> sql.Identifier:
    return sql.Identifier(*names)


def indexes(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select indexrelid::regclass::text, indisvalid from pg_index x "
            "join pg_class c on c.oid = x.indexrelid "
            "where c.relnamespace = %s::regnamespace",
            (f'"{SCHEMA}"',),
        ).fetchall()
    return {r[0] + ("" if r[1] else " (invalid)") for r in rows}


@pytest.fixture()
def health_db(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh schema per test: a hostile table with covered, duplicate, unused and invalid
    indexes, a table `y` that must survive, and `locked_t` for lock tests."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(SCHEMA)))
        conn.execute(sql.SQL("create schema {}").format(q(SCHEMA)))
        t = q(SCHEMA, TABLE)
        conn.execute(
            sql.SQL(
                "create table {} (id int primary key, name text, team text, "
                "code text constraint code_key unique, status text)"
            ).format(t)
        )
        conn.execute(
            sql.SQL(
                "insert into {} select g, 'n' || g, 't' || g % 5, 'c' || g, 's' || g % 3 "
                "from generate_series(1, 20000) g"
            ).format(t)
        )
        for index, columns in (
            ("agents_name_idx", "name"),
            ("agents_name_team_idx", "name, team"),
            ("code_plain", "code"),
            (HOSTILE_INDEX, "status"),
        ):
            conn.execute(
                sql.SQL("create index {} on {} ({})").format(q(index), t, sql.SQL(columns))
            )
        # a failed CREATE INDEX CONCURRENTLY leaves an invalid index behind
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                sql.SQL("create unique index concurrently team_inv on {} (team)").format(t)
            )
        # two constraints on one column: the second is a duplicate nobody may drop by index
        dup = q(SCHEMA, "dup_pk")
        conn.execute(sql.SQL("create table {} (id int primary key)").format(dup))
        conn.execute(sql.SQL("alter table {} add constraint dup_id_key unique (id)").format(dup))
        for table in ("y", "locked_t"):
            conn.execute(sql.SQL("create table {} (id int, v text)").format(q(SCHEMA, table)))
        conn.execute(
            sql.SQL("insert into {} select g, 'v' || g from generate_series(1, 20000) g").format(
                q(SCHEMA, "locked_t")
            )
        )
        conn.execute(sql.SQL("create index locked_idx on {} (v)").format(q(SCHEMA, "locked_t")))
        # queries use agents_name_team_idx and the primary key: they are not unused
        conn.execute("set enable_seqscan = off")
        conn.execute(sql.SQL("select * from {} where name = 'n1' and team = 't1'").format(t))
        conn.execute(sql.SQL("select * from {} where id = 1").format(t))
        conn.execute("select pg_stat_force_next_flush()")
        conn.execute("select 1")
    _wait_for_scans(pg_dsn, "agents_name_team_idx")
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    yield pg_dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(SCHEMA)))


def _wait_for_scans(dsn: str, index: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select idx_scan from pg_stat_user_indexes where schemaname = %s "
                "and indexrelname = %s",
                (SCHEMA, index),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.1)
    raise AssertionError(f"no scans of {index} recorded within {timeout_s} s")


def _findings(report: IndexHealthReport) -> dict[str, IndexFinding]:
    return {f.index_name: f for f in report.findings}


def test_findings_say_what_each_wastes_and_why_and_nothing_changes(health_db: str) -> None:
    before = indexes(health_db)
    report = one_target(check_index_health, settings=SETTINGS, drop=[f"{SCHEMA}.{HOSTILE_INDEX}"])
    assert indexes(health_db) == before
    found = _findings(report)
    assert {k: f.kind for k, f in found.items()} == {
        "agents_name_idx": "covered",
        "code_plain": "duplicate",
        HOSTILE_INDEX: "unused",
        "team_inv": "invalid",
        "dup_id_key": "duplicate",
        "locked_idx": "unused",
    }
    assert found["agents_name_idx"].reason.startswith(
        "covered by agents_name_team_idx (name, team); unused: no scans on this server since "
    )
    assert found["code_plain"].reason.startswith(
        "duplicate of code_key (code) (kept: it backs a constraint)"
    )
    assert found[HOSTILE_INDEX].name == '"Health Q"."i""; DROP INDEX y; --"'
    assert found[HOSTILE_INDEX].table == '"Health Q"."x""; DROP TABLE y; --"'
    assert found["team_inv"].reason.startswith("invalid (a failed CREATE INDEX CONCURRENTLY")
    assert not found["dup_id_key"].droppable
    assert (
        found["dup_id_key"].reason == "duplicate of dup_pk_pkey (id) (kept: it backs a constraint)"
    )
    assert report.wasted_bytes == sum(f.size_bytes for f in report.findings) > 64 * 1024
    assert all(f.size_bytes > 0 for f in report.findings if f.kind != "invalid")
    [d] = report.drops
    assert (d.name, d.status) == ('"Health Q"."i""; DROP INDEX y; --"', "would drop")
    assert not report.applied

    rows = {r["index"]: r for r in artifact_rows(ARTIFACT_KEY)}
    assert all(list(r)[:3] == ["index", "result", "reason"] for r in rows.values())
    assert rows['"Health Q".agents_name_idx']["result"] == (
        'report only (to drop: --apply --drop "Health Q".agents_name_idx)'
    )
    assert rows['"Health Q"."i""; DROP INDEX y; --"']["result"] == (
        "would drop (dry run: add --apply)"
    )
    payload = wait_for_event(
        "perfops.indexes.health_checked",
        where=lambda e: e.payload.get("wasted_bytes") == report.wasted_bytes,
    ).payload
    assert payload["findings"] == {"covered": 1, "duplicate": 2, "unused": 2, "invalid": 1}
    assert payload["applied"] is False


def test_a_schema_without_indexes_is_said_and_alone_leaves_nothing_to_do(health_db: str) -> None:
    settings = SETTINGS.model_copy(update={"schemas": [SCHEMA, "Health Typo"]})
    report = one_target(check_index_health, settings=settings)
    assert report.unmatched == "no index in schemas Health Typo (--schema)"
    assert report.findings  # the other schema was checked
    alone = check_index_health(
        settings=SETTINGS.model_copy(update={"schemas": ["Health Typo"]}), return_state=True
    )
    assert alone.is_completed()
    assert alone.message == "nothing to do: no index in schemas Health Typo (--schema)"


def test_apply_drops_exactly_the_named_index_concurrently_and_reruns_cleanly(
    health_db: str,
) -> None:
    before = indexes(health_db)
    requested = f"{SCHEMA}.{HOSTILE_INDEX}"  # as written, no SQL quoting
    report = one_target(check_index_health, settings=SETTINGS, apply=True, drop=[requested])
    [d] = report.drops
    assert (d.requested, d.status) == (requested, "dropped")
    assert d.reason.startswith("unused: unused: no scans")
    assert before - indexes(health_db) == {'"Health Q"."i""; DROP INDEX y; --"'}
    assert indexes(health_db) - before == set()
    with psycopg.connect(health_db) as conn:  # the hostile names never ran as SQL
        assert conn.execute(sql.SQL("select count(*) from {}").format(q(SCHEMA, "y"))).fetchone()
        statements = [
            r[0]
            for r in conn.execute(
                "select query from pg_stat_statements where query like %s and dbid = "
                "(select oid from pg_database where datname = current_database())",
                ("drop index concurrently if exists %DROP INDEX y%",),
            )
        ]
    assert statements == ['drop index concurrently if exists "Health Q"."i""; DROP INDEX y; --"']
    payload = wait_for_event(
        "perfops.indexes.dropped", where=lambda e: e.payload.get("freed_bytes") == d.size_bytes
    ).payload
    assert [i["index"] for i in payload["indexes"]] == ['"Health Q"."i""; DROP INDEX y; --"']

    # A rerun (after a crash, say) cannot tell "dropped by the last run" from a typo: it says
    # both, and completes, so the rerun finishes cleanly.
    again = one_target(check_index_health, settings=SETTINGS, apply=True, drop=[requested])
    [d] = again.drops
    assert d.status == "not found"
    assert "already dropped by an earlier run, or a misspelt name" in d.reason
    assert HOSTILE_INDEX not in _findings(again)


def test_refusals_name_the_reason_and_the_run_goes_on(health_db: str) -> None:
    before = indexes(health_db)
    report, message = failed_run(
        check_index_health(
            settings=SETTINGS,
            apply=True,
            drop=[
                f'"{SCHEMA}".dup_id_key',  # backs a constraint
                f'"{SCHEMA}".agents_name_team_idx',  # used
                f'"{SCHEMA}".code_key',  # the constraint's own index
                f'"{SCHEMA}".agents_name_idx',  # a finding: dropped
            ],
            return_state=True,
        )
    )
    # The others went on, but what the operator asked for was not all done: the run fails.
    assert message.startswith('3 of 4 drops not done: "Health Q".dup_id_key: backs constraint')
    got = {d.requested.split(".", 1)[1]: (d.status, d.reason) for d in report.drops}
    assert got["dup_id_key"][0] == "refused"
    assert got["dup_id_key"][1].startswith("backs constraint dup_id_key: drop the constraint")
    assert got["agents_name_team_idx"] == (
        "refused",
        "not a finding of this check (it was scanned 1 times): perfops drops only findings",
    )
    assert got["code_key"] == (
        "refused",
        "not a finding of this check (it backs constraint code_key): perfops drops only findings",
    )
    assert got["agents_name_idx"][0] == "dropped"
    assert before - indexes(health_db) == {'"Health Q".agents_name_idx'}


def test_a_locked_table_is_skipped_after_lock_timeout_and_the_run_goes_on(health_db: str) -> None:
    with psycopg.connect(health_db) as holder:
        holder.execute(
            sql.SQL("lock table {} in access exclusive mode").format(q(SCHEMA, "locked_t"))
        )
        started = time.monotonic()
        report, message = failed_run(
            check_index_health(
                settings=SETTINGS,
                apply=True,
                drop=[f"{SCHEMA}.locked_idx", f"{SCHEMA}.agents_name_idx"],
                return_state=True,
            )
        )
        assert time.monotonic() - started < 30
    assert message.endswith(
        '; 1 tables not checked, locked by another session: "Health Q".locked_t'
    ), message
    [locked] = report.locked_tables
    assert (locked.table_name, locked.index_names) == ("locked_t", ["locked_idx"])
    assert locked.reason == (
        "table locked by another session: lock_timeout (300 ms) expired; "
        "its indexes were not checked"
    )
    got = {d.name: d for d in report.drops}
    assert got['"Health Q".locked_idx'].status == "failed"
    assert got['"Health Q".locked_idx'].reason.startswith("not checked: table locked")
    assert got['"Health Q".agents_name_idx'].status == "dropped"
    assert '"Health Q".locked_idx' in indexes(health_db)
    rows = [r for r in artifact_rows(ARTIFACT_KEY) if r["kind"] == "not checked"]
    assert rows and rows[0]["table"] == '"Health Q".locked_t'


def test_a_transaction_using_the_table_stops_the_drop_and_a_rerun_finishes_it(
    health_db: str,
) -> None:
    settings = SETTINGS.model_copy(update={"drop_lock_timeout_ms": 300})
    with psycopg.connect(health_db) as reader:
        reader.execute(sql.SQL("select count(*) from {}").format(q(SCHEMA, "locked_t")))
        report, message = failed_run(
            check_index_health(
                settings=settings,
                apply=True,
                drop=[f"{SCHEMA}.locked_idx"],
                return_state=True,
            )
        )
    assert message.startswith('1 of 1 drops not done: "Health Q".locked_idx: table ')
    [d] = report.drops
    assert d.status == "failed"
    assert d.reason.startswith(
        'table "Health Q".locked_t is locked by another session (or a transaction using it did '
        "not finish): lock_timeout (300 ms) expired; the index is left INVALID"
    )
    assert '"Health Q".locked_idx (invalid)' in indexes(health_db)
    again = one_target(
        check_index_health, settings=settings, apply=True, drop=[f"{SCHEMA}.locked_idx"]
    )
    assert _findings(again)["locked_idx"].kind == "invalid"
    [d] = again.drops
    assert d.status == "dropped"
    assert not any("locked_idx" in i for i in indexes(health_db))


# --- the drop task's own checks, inside the lock -----------------------------------------


def _finding(report: IndexHealthReport, index: str) -> IndexFinding:
    return _findings(report)[index]


def test_the_drop_rechecks_inside_the_lock(health_db: str, pg_target: PostgresTarget) -> None:
    report = one_target(check_index_health, settings=SETTINGS)
    covered = _finding(report, "agents_name_idx")
    unused = _finding(report, HOSTILE_INDEX)
    stale = covered.model_copy(update={"definition": covered.definition + " WHERE (id > 0)"})
    keeper_changed = covered.model_copy(update={"other_index_name": "no_such_index"})
    with psycopg.connect(health_db, autocommit=True) as conn:  # scanned since the check
        conn.execute("set enable_seqscan = off")
        conn.execute(sql.SQL("select * from {} where status = 's1'").format(q(SCHEMA, TABLE)))
        conn.execute("select pg_stat_force_next_flush()")
        conn.execute("select 1")
    _wait_for_scans(health_db, HOSTILE_INDEX)
    outcomes = drop_indexes.fn(
        pg_target,
        [stale, keeper_changed, unused],
        lock_timeout_ms=300,
        statement_timeout_ms=10_000,
    )
    assert [(o.status, o.reason.split(" (now")[0]) for o in outcomes] == [
        ("refused", "its definition changed since the check"),
        (
            "refused",
            'the index kept in its place, "Health Q".agents_name_team_idx, no longer exists',
        ),
        ("refused", "it was scanned 1 times since the check"),
    ]
    assert '"Health Q".agents_name_idx' in indexes(health_db)


def test_the_drop_waits_no_longer_than_lock_timeout_and_goes_on(
    health_db: str, pg_target: PostgresTarget
) -> None:
    report = one_target(check_index_health, settings=SETTINGS)
    locked, other = _finding(report, "locked_idx"), _finding(report, "agents_name_idx")
    with psycopg.connect(health_db) as holder:
        holder.execute(
            sql.SQL("lock table {} in access exclusive mode").format(q(SCHEMA, "locked_t"))
        )
        outcomes = drop_indexes.fn(
            pg_target, [locked, other], lock_timeout_ms=300, statement_timeout_ms=10_000
        )
    assert [o.status for o in outcomes] == ["failed", "dropped"]
    assert outcomes[0].reason == (
        'table "Health Q".locked_t is locked by another session (or a transaction using it did '
        "not finish): lock_timeout (300 ms) expired; nothing was dropped"
    )


def test_another_perfops_run_on_the_table_is_waited_for_by_nobody(
    health_db: str, pg_target: PostgresTarget
) -> None:
    report = one_target(check_index_health, settings=SETTINGS)
    finding = _finding(report, "agents_name_idx")
    with (
        connect(pg_target, autocommit=True) as other,
        advisory_lock(other, lock_name(SCHEMA, TABLE)),
    ):
        [outcome] = drop_indexes.fn(
            pg_target, [finding], lock_timeout_ms=300, statement_timeout_ms=10_000
        )
    assert outcome.status == "failed"
    assert outcome.reason.startswith("another perfops run holds the lock")


# --- the command line -------------------------------------------------------------------


HEALTH = ["indexes", "health", "--schema", SCHEMA, "--min-size", "64kB"]


def test_cli_report_fits_80_columns_and_changes_nothing(
    perfops: Callable[[list[str]], int], health_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = indexes(health_db)
    code = perfops([*HEALTH, "--dsn", health_db])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert indexes(health_db) == before
    lines = captured.out.splitlines()
    assert lines[0].startswith("index health of postgres@127.0.0.1:5432/perfops_test_")
    assert lines[-1] == "report only: nothing was changed"
    assert "          to drop: --apply --drop '\"Health Q\".agents_name_idx'" in lines
    assert max(len(line) for line in lines) <= 80


def test_cli_apply_needs_names(
    perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert perfops([*HEALTH, "--apply"]) == 2
    assert "name each index to drop with --drop SCHEMA.INDEX" in capsys.readouterr().err


def test_cli_bad_size_is_a_usage_error(
    perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert perfops(["indexes", "health", "--min-size", "lots"]) == 2
    assert "'lots' is not a size" in capsys.readouterr().err


def test_cli_apply_json_and_exit_1_when_a_named_index_is_refused(
    perfops: Callable[[list[str]], int], health_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = perfops(
        [
            *HEALTH,
            "--dsn",
            health_db,
            "--json",
            "--apply",
            "--drop",
            f'"{SCHEMA}"."i""; DROP INDEX y; --"',
            "--drop",
            f"{SCHEMA}.code_key",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    report = json.loads(captured.out)
    assert [d["status"] for d in report["drops"]] == ["dropped", "refused"]
    assert captured.err.strip() == "perfops: 1 of 2 named indexes not dropped (see the reasons)"


def test_a_role_that_does_not_own_the_table_drops_nothing_and_says_what_it_needs(
    health_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = "perfops_health_ro"
    before = indexes(health_db)
    with psycopg.connect(health_db, autocommit=True) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(q(role)))
        conn.execute(sql.SQL("create role {} login").format(q(role)))
        conn.execute(sql.SQL("grant usage on schema {} to {}").format(q(SCHEMA), q(role)))
        owner = conn.info.user
    try:
        monkeypatch.setenv("PERFOPS_DSN", psycopg.conninfo.make_conninfo(health_db, user=role))
        report, message = failed_run(
            check_index_health(
                settings=SETTINGS,
                apply=True,
                drop=[f'"{SCHEMA}".agents_name_idx', f'"{SCHEMA}".code_plain'],
                return_state=True,
            )
        )
        table = '"Health Q"."x""; DROP TABLE y; --"'
        assert message == (
            f"2 of 2 drops not done: needs ownership of {table} (owner {owner}): "
            f"{superuser_fix(owner, role)}"
        )
        assert [(d.status, d.reason) for d in report.drops] == [
            ("refused", f"not attempted: needs ownership (owner {owner})")
        ] * 2
        assert indexes(health_db) == before
    finally:
        with psycopg.connect(health_db, autocommit=True) as conn:
            conn.execute(sql.SQL("drop owned by {}").format(q(role)))
            conn.execute(sql.SQL("drop role {}").format(q(role)))


def test_applying_every_advised_drop_never_leaves_a_used_lookup_without_an_index(
    health_db: str,
) -> None:
    """t_a (a) is used, t_a_c (a, c) is not. Before, t_a was "covered by t_a_c" and t_a_c
    "unused"; dropping both (as advised) left lookups on a with a Seq Scan."""
    t = q(SCHEMA, "t")
    with psycopg.connect(health_db, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "create table {} as select g as a, g % 7 as c, 'b' || g as b "
                "from generate_series(1, 20000) g"
            ).format(t)
        )
        conn.execute(sql.SQL("create index t_a on {} (a)").format(t))
        conn.execute(sql.SQL("analyze {}").format(t))
        conn.execute("set enable_seqscan = off")
        conn.execute(sql.SQL("select * from {} where a = 5").format(t))  # uses t_a
        conn.execute("select pg_stat_force_next_flush()")
        conn.execute(sql.SQL("create index t_a_c on {} (a, c)").format(t))  # never used
    _wait_for_scans(health_db, "t_a")
    settings = SETTINGS.model_copy(update={"schemas": [SCHEMA]})
    found = _findings(one_target(check_index_health, settings=settings))
    assert "t_a" not in found  # used, and t_a_c, advised away, covers nothing
    assert found["t_a_c"].kind == "unused"
    report, _ = failed_run(
        check_index_health(
            settings=settings,
            apply=True,
            drop=[f'"{SCHEMA}".t_a', f'"{SCHEMA}".t_a_c'],
            return_state=True,
        )
    )
    got = {d.requested: d.status for d in report.drops}
    assert got == {f'"{SCHEMA}".t_a': "refused", f'"{SCHEMA}".t_a_c': "dropped"}
    with psycopg.connect(health_db) as conn:
        conn.execute("set enable_seqscan = off")
        plan = conn.execute(
            sql.SQL("explain (format json) select * from {} where a = 5").format(t)
        ).fetchone()
    assert plan is not None and "t_a" in json.dumps(plan[0])


def test_cli_a_drop_outside_schema_or_of_no_index_exits_1_saying_which(
    health_db: str,
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before, both were "already gone: no index of that name in the database (dropped
    already?)" and the command exited 0."""
    with psycopg.connect(health_db, autocommit=True) as conn:
        conn.execute("drop schema if exists health_other cascade")
        conn.execute("create schema health_other")
        conn.execute("create table health_other.t (a int)")
        conn.execute("create index other_idx on health_other.t (a)")
    try:
        code = perfops(
            [
                *HEALTH,
                "--dsn",
                health_db,
                "--json",
                "--apply",
                "--drop",
                "health_other.other_idx",
                "--drop",
                f"{SCHEMA}.no_such_idx",
            ]
        )
        captured = capsys.readouterr()
        assert code == 1
        drops = {d["requested"]: d for d in json.loads(captured.out)["drops"]}
        outside = drops["health_other.other_idx"]
        assert outside["status"] == "refused"
        assert "outside the schemas checked (Health Q; --schema)" in outside["reason"]
        assert "add --schema health_other" in outside["reason"]
        assert drops[f"{SCHEMA}.no_such_idx"]["status"] == "not found"
        with psycopg.connect(health_db) as conn:
            assert conn.execute(
                "select to_regclass('health_other.other_idx') is not null"
            ).fetchone() == (True,)
    finally:
        with psycopg.connect(health_db, autocommit=True) as conn:
            conn.execute("drop schema if exists health_other cascade")


def test_an_index_that_enforces_or_identifies_rows_is_never_dropped_as_a_duplicate(
    health_db: str,
) -> None:
    """Before, each of these was a droppable "duplicate" and `--apply --drop` dropped the first
    three: the NULLS NOT DISTINCT unique index (kept: a plain unique one earlier by name; then a
    second NULL was accepted), and the replica-identity indexes (then UPDATE failed: "cannot
    update table ... because it does not have a replica identity and publishes updates"); the
    partitions' indexes were advised "to drop" and refused only when applying."""
    s = "Health RI ü"  # mixed case, a space, non-ASCII
    with psycopg.connect(health_db, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(s)))
        conn.execute(sql.SQL("create schema {}").format(q(s)))
        for ddl in (
            "create table {s}.nnd (a int)",
            "create unique index a_plain on {s}.nnd (a)",
            "create unique index b_nnd on {s}.nnd (a) nulls not distinct",
            'create table {s}."Ri" (id int primary key, k int not null)',
            'create unique index ri_k on {s}."Ri" (k)',
            'create unique index ri_k_ident on {s}."Ri" (k)',
            'alter table {s}."Ri" replica identity using index ri_k_ident',
            "create table {s}.ri_pk (id int primary key)",
            "create unique index ri_pk_ident on {s}.ri_pk (id)",
            "alter table {s}.ri_pk replica identity using index ri_pk_ident",
            "create table {s}.parted (v int) partition by range (v)",
            "create table {s}.part_1 partition of {s}.parted for values from (0) to (100)",
            "create index parted_v on {s}.parted (v)",
            "create index parted_v_again on {s}.parted (v)",
        ):
            conn.execute(sql.SQL(ddl).format(s=q(s)))
        conn.execute(sql.SQL("create publication health_pub for table {}").format(q(s, "Ri")))
    try:
        settings = SETTINGS.model_copy(update={"schemas": [s], "min_size_bytes": 0})
        before = indexes_in(health_db, s)
        names = ["b_nnd", "ri_k_ident", "ri_pk_ident", "part_1_v_idx1", "parted_v_again"]
        report, message = failed_run(
            check_index_health(
                settings=settings,
                apply=True,
                drop=[f"{s}.{n}" for n in names],
                return_state=True,
            )
        )
        found = _findings(report)
        assert found["a_plain"].reason == "duplicate of b_nnd (a)"  # the stricter one is kept
        assert "b_nnd" not in found
        assert found["ri_k"].reason == "duplicate of ri_k_ident (k)"
        assert found["ri_pk_ident"].not_droppable_reason == (
            f'it is the replica identity of "{s}".ri_pk (logical replication finds rows by it; '
            "without it UPDATE and DELETE fail on a published table): ALTER TABLE "
            f'"{s}".ri_pk REPLICA IDENTITY USING INDEX another (or DEFAULT) first'
        )
        assert not found["part_1_v_idx1"].droppable
        assert found["part_1_v_idx1"].not_droppable_reason.startswith(  # type: ignore[union-attr]
            f'it is a partition of index "{s}".parted_v_again'
        )
        assert not found["parted_v_again"].droppable
        assert "parted_v" not in found  # no scan counts for a partitioned index: never "unused"
        got = {d.requested.removeprefix(f"{s}."): d.status for d in report.drops}
        assert got == {
            "b_nnd": "refused",
            "ri_k_ident": "refused",
            "ri_pk_ident": "refused",
            "part_1_v_idx1": "refused",
            "parted_v_again": "refused",
        }
        assert message.startswith("5 of 5 drops not done")
        assert indexes_in(health_db, s) == before
        with psycopg.connect(health_db, autocommit=True) as conn:
            conn.execute(sql.SQL("insert into {} values (null)").format(q(s, "nnd")))
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute(sql.SQL("insert into {} values (null)").format(q(s, "nnd")))
            conn.execute(sql.SQL("update {} set k = k").format(q(s, "Ri")))  # still identified
    finally:
        with psycopg.connect(health_db, autocommit=True) as conn:
            conn.execute("drop publication if exists health_pub")
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(s)))


def test_a_replica_identity_set_after_the_check_stops_the_drop(
    health_db: str, pg_target: PostgresTarget
) -> None:
    """The re-check inside the lock: an index made the replica identity since the check is not
    dropped (before, it was: nothing in the re-check looked at indisreplident)."""
    s = "Health RI later"
    with psycopg.connect(health_db, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(s)))
        conn.execute(sql.SQL("create schema {}").format(q(s)))
        conn.execute(sql.SQL("create table {} (id int primary key)").format(q(s, "t")))
        conn.execute(sql.SQL("create unique index t_id on {} (id)").format(q(s, "t")))
    try:
        settings = SETTINGS.model_copy(update={"schemas": [s], "min_size_bytes": 0})
        [finding] = one_target(check_index_health, settings=settings).findings
        assert finding.index_name == "t_id" and finding.droppable
        with psycopg.connect(health_db, autocommit=True) as conn:
            conn.execute(
                sql.SQL("alter table {} replica identity using index t_id").format(q(s, "t"))
            )
        [outcome] = drop_indexes(
            pg_target, [finding], lock_timeout_ms=1_000, statement_timeout_ms=10_000
        )
        assert outcome.status == "refused"
        assert outcome.reason.startswith(f'it is the replica identity of "{s}".t')
        assert indexes_in(health_db, s) == {f'"{s}".t_id', f'"{s}".t_pkey'}
    finally:
        with psycopg.connect(health_db, autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(s)))


def indexes_in(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select indexrelid::regclass::text from pg_index x "
            "join pg_class c on c.oid = x.indexrelid where c.relnamespace = %s::regnamespace",
            (sql.Identifier(schema).as_string(conn),),
        ).fetchall()
    return {r[0] for r in rows}


def test_cli_a_report_with_a_table_not_checked_exits_1_and_never_says_nothing_to_do(
    perfops: Callable[[list[str]], int], health_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, a report-only run with the only table locked printed "nothing to do: no unused,
    duplicate, covered or invalid index" and exited 0 (the run itself was Failed): a cron job
    read it as a clean bill of health."""
    s = "Health Locked ü"
    with psycopg.connect(health_db, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(s)))
        conn.execute(sql.SQL("create schema {}").format(q(s)))
        conn.execute(sql.SQL("create table {} (a int)").format(q(s, "T")))
        conn.execute(sql.SQL("create index t_a on {} (a)").format(q(s, "T")))
    try:
        with psycopg.connect(health_db) as holder:
            holder.execute(sql.SQL("lock table {} in access exclusive mode").format(q(s, "T")))
            code = perfops(["indexes", "health", "--schema", s, "--dsn", health_db])
        captured = capsys.readouterr()
        assert code == 1
        assert "nothing to do" not in captured.out
        assert 'not checked: "Health Locked ü"."T": table locked' in captured.out
        assert " ".join(captured.out.split()).endswith(
            "no unused, duplicate, covered or invalid index in the tables checked; 1 table not "
            "checked (above)"
        )
        assert captured.err.strip().splitlines()[-1] == (
            'perfops: 1 table not checked, locked by another session: "Health Locked ü"."T"'
        )
    finally:
        with psycopg.connect(health_db, autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(q(s)))
