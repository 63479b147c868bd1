"""`perfops partitions rotate|restore` as a user runs them: help, bad input (exit 2, naming the
flag), a table perfops cannot rotate (exit 1, one line), and a dry run, an applied rotation into
a folder archive and a restore from it, against the real PostgreSQL and a Prefect test server."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.command import run_perfops
from tests.flows.test_rotate_partitions import ROWS_PER_MONTH, make_audit_logs

AT = "2026-11-15T12:00:00+00:00"


def perfops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_perfops("partitions", *args, env=env)


@pytest.fixture()
def schema(pg_dsn: str) -> Iterator[str]:
    name = f"cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(name)))


def test_help_explains_the_flags() -> None:
    result = perfops("rotate", "--help")
    assert result.returncode == 0
    for text in (
        "--table",
        "--interval",
        "--premake",
        "--retention",
        "--archive",
        "--apply",
        "--policies",
        "--json",
        "PERFOPS_DSN",
    ):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--table", "a.b", "--retention", "1 day"], "--retention: retention '1 day' is shorter"),
        (["--table", "a.b", "--premake", "-1"], "--premake"),
        (["--table", "a.b", "--interval", "fortnight"], "--interval"),
        (["--table", 'a."b; drop'], "--table: table"),  # an unclosed quote
        (["--table", "a.b", "--retention", "12 months"], "needs archive"),
        ([], "give either --table"),
        (  # a preview of a later day must not be applied today
            [
                *("--table", "a.b", "--expired-action", "drop", "--retention", "12 months"),
                *("--at", "2099-01-01T00:00:00+00:00", "--apply"),
            ],
            "--at 2099-01-01T00:00:00+00:00 is in the future: it previews a later run; drop "
            "--apply",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    result = perfops("rotate", "--dsn", "host=127.0.0.1 port=1", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_not_partitioned_is_one_line_exit_1(pg_dsn: str, schema: str, prefect_api_url: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table {} (id int)").format(sql.Identifier(schema, "plain")))
    result = perfops(
        "rotate",
        "--dsn",
        pg_dsn,
        "--table",
        f"{schema}.plain",
        env={"PREFECT_API_URL": prefect_api_url},
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if not line.endswith("...")]
    assert errors == [
        f'perfops: "{schema}"."plain" is not partitioned (a plain table): perfops only rotates '
        "declaratively partitioned tables"
    ]


def test_dry_run_apply_and_restore(
    pg_dsn: str, schema: str, prefect_api_url: str, tmp_path: Path
) -> None:
    make_audit_logs(pg_dsn, schema)
    env = {"PREFECT_API_URL": prefect_api_url}
    common = [
        "--dsn",
        pg_dsn,
        "--table",
        f"{schema}.audit_logs",
        "--interval",
        "month",
        "--premake",
        "3",
        "--retention",
        "12 months",
        "--archive",
        str(tmp_path),
        "--at",
        AT,
    ]
    dry = perfops("rotate", *common, "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    [table] = report["tables"]
    assert [p["name"] for p in table["plan"]["create"]] == [
        "audit_logs_p2026_12",
        "audit_logs_p2027_01",
        "audit_logs_p2027_02",
    ]
    assert [e["status"] for e in table["expired"]] == ["would archive then drop"] * 2
    assert not list(tmp_path.iterdir())

    applied = perfops("rotate", *common, "--apply", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "dropped: audit_logs_p2025_09, 50 rows ->" in applied.stdout
    # the table as the run left it: the three months it created are no longer reported missing
    assert "created: audit_logs_p2027_02" in applied.stdout
    assert "premade_short" not in applied.stdout, applied.stdout
    # Progress, one line per step on a non-terminal stderr.
    assert f"perfops: {schema}.audit_logs: archiving 2 partitions..." in applied.stderr
    assert f"perfops: {schema}.audit_logs: archived audit_logs_p2025_09 (50 rows)..." in (
        applied.stderr
    )

    archive = next(tmp_path.rglob("audit_logs_p2025_09.parquet"))
    restored = perfops(
        "restore",
        "--dsn",
        pg_dsn,
        "--from",
        str(archive),
        "--table",
        f"{schema}.back",
        env=env,
    )
    assert restored.returncode == 0, restored.stderr
    assert f"restored {ROWS_PER_MONTH} rows into {schema}.back" in restored.stdout
    with psycopg.connect(pg_dsn) as conn:
        n = conn.execute(
            sql.SQL("select count(*), min(id), max(id) from {}").format(
                sql.Identifier(schema, "back")
            )
        ).fetchone()
    assert n == (ROWS_PER_MONTH, 1, ROWS_PER_MONTH)

    # --attach while the default partition holds a row of the archive's range (it arrived after
    # the drop): PostgreSQL refuses the ATTACH; one line says why and what to do, and the
    # restore is rolled back whole (no table left behind).
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("insert into {} (id, created_at) values (0, '2025-09-15 00:00+00')").format(
                sql.Identifier(schema, "audit_logs")
            )
        )
    refused = perfops("restore", "--dsn", pg_dsn, "--from", str(archive), "--attach", env=env)
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if not line.endswith("...")]
    assert errors == [
        f'perfops: cannot attach "{schema}"."audit_logs_p2025_09" to "{schema}"."audit_logs" '
        "for [2025-09-01T00:00:00+00:00, 2025-10-01T00:00:00+00:00): updated partition "
        'constraint for default partition "audit_logs_default" would be violated by some row; '
        "nothing was restored: rows of that range wait in its default partition (move them out "
        "first), or restore without --attach"
    ]
    with psycopg.connect(pg_dsn) as conn:
        left = conn.execute(
            "select to_regclass(%s)", (f'"{schema}".audit_logs_p2025_09',)
        ).fetchone()
    assert left == (None,)
