"""generate_weekly_report over a fleet, on real servers: two small PostgreSQL databases
(`perfops_reportfleet_*`), a third target that also has its own Prometheus (the report's test
Prometheus, back-filled with histograms whose p95 are known), one target on a closed port and one
whose block does not exist; aiosmtpd for the email and the Prefect test harness for the events
and the artifact.

One report, one email, one archive: the Fleet section has one row per target, worst first, its
figures equal to what PostgreSQL says by hand, and the run ends Failed saying `2 of 5 targets
unreachable`."""

from __future__ import annotations

import csv
import io
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prefect.events import emit_event
from psycopg import sql
from pydantic import SecretStr

from blocks import PostgresTarget, PrometheusSource
from decisions.report_rendering import ReportResult
from demo.embedded_prometheus import merge_series
from flows.generate_weekly_report import ARTIFACT_KEY, ReportFailed, generate_weekly_report
from tests.conftest import ADMIN_DSN
from tests.flows.test_generate_weekly_report import (
    LAST_WEEK,
    PREVIOUS,
    ROOT,
    THIS_WEEK,
    WEEK,
    _cli,
    _segment,
)
from tests.records import latest_artifact, wait_for_event
from tests.servers import PrometheusServer, SmtpServer

pytestmark = pytest.mark.usefixtures("prefect_harness")

SLOW_MS = 200  # the test configuration's slow_statement_ms


@pytest.fixture(scope="module")
def report_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """The weekly report tests' Prometheus: the same two weeks, the same known figures."""
    series = merge_series(_segment(PREVIOUS, LAST_WEEK, 40), _segment(WEEK, THIS_WEEK, 55))
    with PrometheusServer(tmp_path_factory.mktemp("reportfleet-prometheus"), series) as server:
        yield server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dsn(db: str) -> str:
    return psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=db)


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, report_prometheus: PrometheusServer
) -> Iterator[dict[str, Any]]:
    """`orders`: a never-analyzed table and a statement slower than SLOW_MS on average;
    `billing`: analyzed, nothing slow; `api`: billing's database plus its own Prometheus;
    `down`: a closed port; `ghost`: a block that was never saved."""
    run = uuid.uuid4().hex[:6]
    dbs = {t: f"perfops_reportfleet_{run}_{t}" for t in ("orders", "billing")}
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        for db in dbs.values():
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(db)))
    for target, db in dbs.items():
        with psycopg.connect(_dsn(db), autocommit=True) as conn:
            conn.execute("create extension pg_stat_statements")
            conn.execute(
                "create table items with (autovacuum_enabled = false) as "
                "select g as id from generate_series(1, 1000) g"
            )
        # A new session: the first one's row counts reached the statistics when it ended, so
        # an ANALYZE now leaves nothing changed since.
        with psycopg.connect(_dsn(db), autocommit=True) as conn:
            if target == "billing":
                conn.execute("analyze items")
            conn.execute(
                "select pg_stat_statements_reset(0, (select oid from pg_database "
                "where datname = current_database()), 0)"
            )
            conn.execute("select count(*) from items")
            if target == "orders":
                for _ in range(2):
                    conn.execute("select pg_sleep(0.25)")
        PostgresTarget(dsn=SecretStr(_dsn(db))).save(f"reportfleet-{run}-{target}", overwrite=True)
    down = f"host=127.0.0.1 port={closed_port()} user=postgres dbname=x"
    PostgresTarget(dsn=SecretStr(down), connect_timeout_s=2).save(
        f"reportfleet-{run}-down", overwrite=True
    )
    PrometheusSource(url=report_prometheus.url).save(f"reportfleet-{run}-prom", overwrite=True)
    blocks = {
        "orders": f"{{postgres: reportfleet-{run}-orders}}",
        "billing": f"{{postgres: reportfleet-{run}-billing}}",
        "api": f"{{postgres: reportfleet-{run}-billing, prometheus: reportfleet-{run}-prom}}",
        "down": f"{{postgres: reportfleet-{run}-down}}",
        "ghost": f"{{postgres: reportfleet-{run}-ghost}}",
    }
    folder = tmp_path_factory.mktemp("reportfleet")
    path = folder / "fleet.yaml"
    entries = "".join(
        f"  - name: {t}\n    blocks: {b}\n    labels: {{env: prod}}\n" for t, b in blocks.items()
    )
    path.write_text(
        f"max_parallel: 3\ntargets:\n{entries}fleets:\n  every:\n    labels: {{env: prod}}\n",
        encoding="utf-8",
    )
    config = folder / "report.yaml"
    config.write_text(
        (ROOT / "deployments" / "report.yaml").read_text(encoding="utf-8")
        + f"fleet: {{slow_statement_ms: {SLOW_MS}, cache_hit_ratio_min: 0.01}}\n",
        encoding="utf-8",
    )
    orders = PostgresTarget(dsn=SecretStr(_dsn(dbs["orders"])))
    _emit_refresh_failure(orders.resource_id())
    yield {"file": path, "config": config, "dbs": dbs, "run": run}
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        for db in dbs.values():
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(db))
            )


def _emit_refresh_failure(resource: str) -> None:
    """What refresh_stale_statistics would have recorded about `orders` during the week."""
    emit_event(
        event="perfops.stats.refreshed",
        resource={"prefect.resource.id": resource},
        occurred=WEEK.end - timedelta(minutes=5),
        payload={"analyzed": 0, "failed": 1, "considered": 1},
    )
    wait_for_event(
        "perfops.stats.refreshed",
        since=WEEK.end - timedelta(minutes=6),
        until=WEEK.end,
        where=lambda e: e.resource.id == resource,
        timeout_s=30,
    )


def _archive_last_week(out: Path) -> None:
    """Last week's report archived a fleet table in which billing's slowest statement took
    a microsecond."""
    from blocks.resolve import resolve_archive
    from tasks.storage import put_object

    store = resolve_archive(None).value
    table = "target,result,slowest_mean_ms,slow_statements,cache_hit_ratio\n"
    table += "billing,ok,0.001,0,\n"
    put_object(store, f"reports/weekly/{PREVIOUS.label}/data/fleet.csv", table.encode())
    # archived before manifests: a complete report is one whose page is there (written last)
    put_object(store, f"reports/weekly/{PREVIOUS.label}/index.html", b"<html></html>")


@pytest.fixture(scope="module")
def fleet_run(
    fleet: dict[str, Any],
    report_prometheus: PrometheusServer,
    smtp_server: SmtpServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ReportResult, str, list[Any], Path]]:
    out = tmp_path_factory.mktemp("reportfleet-out")
    env = {
        "PERFOPS_PROMETHEUS_URL": report_prometheus.url,
        "PERFOPS_SMTP_HOST": smtp_server.host,
        "PERFOPS_SMTP_PORT": str(smtp_server.port),
        "PERFOPS_OUT_DIR": str(out / "perfops"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    smtp_server.reset()
    try:
        _archive_last_week(out)
        state = generate_weekly_report(
            week=WEEK.label,
            recipients=["sre@example.test"],
            out_dir=str(out),
            config_path=str(fleet["config"]),
            targets="every",
            fleet_file=str(fleet["file"]),
            return_state=True,
        )
        messages = smtp_server.wait_for(1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert state.is_failed() and state.message is not None
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ReportFailed) and error.result is not None
    yield error.result, state.message, messages, out / WEEK.label


def _rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_one_row_per_target_worst_first(
    fleet: dict[str, Any], fleet_run: tuple[ReportResult, str, list[Any], Path]
) -> None:
    result, message, _, _ = fleet_run
    assert [r["target"] for r in result.fleet] == ["down", "ghost", "api", "orders", "billing"]
    assert [r["result"] for r in result.fleet] == [
        "unreachable",
        "unreachable",
        "attention",
        "attention",
        "ok",
    ]
    down, ghost, api, orders, billing = result.fleet
    assert down["reason"].startswith(
        "postgres: cannot connect to PostgreSQL at postgres@127.0.0.1:"
    )
    assert ghost["reason"].startswith(
        f"postgres: no perfops-postgres-target block named 'reportfleet-{fleet['run']}-ghost'"
    )
    # The api target is scored on its own Prometheus with the report's own targets: the same
    # three misses as the report's platform-wide figures (the same Prometheus here).
    assert api["reason"].startswith("3 of ")
    assert "targets missed (worst: POST /api/v1/agents/execute error rate" in api["reason"]
    assert api["targets (own Prometheus)"].startswith("3 missed, ")
    assert "1 tables with stale statistics" in orders["reason"]
    assert f"1 statements with mean >= {SLOW_MS:,} ms" in orders["reason"]
    assert "statistics refresh failed on 1 tables this week" in orders["reason"]
    assert orders["events"] == "1"
    assert billing["reason"].startswith("nothing missed or over its limit; slowest statement mean")
    # The run says how many targets could not be read, after where the report is archived.
    assert message.startswith(f"weekly report {WEEK.label} archived at ")
    assert "; 2 of 5 targets unreachable: down: postgres: cannot connect" in message
    assert result.fleet_unreachable == ["down", "ghost"]
    assert result.accepted == ["sre@example.test"]  # the one email still went out


def test_figures_equal_what_postgresql_says(
    fleet: dict[str, Any], fleet_run: tuple[ReportResult, str, list[Any], Path]
) -> None:
    _, _, _, folder = fleet_run
    rows = {r["target"]: r for r in _rows((folder / "data" / "fleet.csv").read_bytes())}
    assert [r["rank"] for r in rows.values()] == ["1", "2", "3", "4", "5"]
    for target, db in (("orders", fleet["dbs"]["orders"]), ("billing", fleet["dbs"]["billing"])):
        with psycopg.connect(_dsn(db)) as conn:
            found = conn.execute(
                "select pg_database_size(current_database()), "
                "(select count(*) from pg_stat_statements s where s.dbid = d.datid and toplevel "
                " and mean_exec_time >= %s), "
                "(select max(mean_exec_time) from pg_stat_statements s where s.dbid = d.datid "
                " and toplevel and calls > 0), "
                "blks_hit::float8 / nullif(blks_hit + blks_read, 0) "
                "from pg_stat_database d where datname = current_database()",
                (SLOW_MS,),
            ).fetchone()
        assert found is not None
        size, slow, slowest, hit = found
        row = rows[target]
        assert int(row["size_bytes"]) == size
        assert int(row["slow_statements"]) == slow
        assert float(row["cache_hit_ratio"]) == pytest.approx(hit, abs=0.02)
        assert 0 < float(row["cache_hit_ratio"]) <= 1
        if target == "orders":
            assert slow == 1 and float(row["slowest_mean_ms"]) == pytest.approx(slowest, rel=1e-6)
            assert row["stale_tables"] == "1"
            assert "pg_sleep" in row["slowest_query"]
    assert rows["billing"]["stale_tables"] == "0"
    assert rows["billing"]["regression_of"] == "slowest statement mean"  # vs last week's table
    assert rows["down"]["size_bytes"] == "" and rows["down"]["slow_statements"] == ""
    assert rows["api"]["missed"] == "3"


def test_one_email_one_archive_and_the_artifact_carry_the_fleet(
    fleet_run: tuple[ReportResult, str, list[Any], Path],
) -> None:
    result, _, messages, folder = fleet_run
    [(_, rcpts, message)] = messages
    assert rcpts == ["sre@example.test"]
    html_part = message.get_body(preferencelist=("html",))
    text_part = message.get_body(preferencelist=("plain",))
    html = html_part.get_content()
    assert ">Fleet<" in html and "Fleet every: 5 targets: 2 unreachable, 2 need attention" in html
    assert html.index(">down<") < html.index(">billing<")
    assert "  1. [unreachable] down: postgres: cannot connect" in text_part.get_content()
    attachments = {p.get_filename(): p for p in message.iter_attachments()}
    assert (
        attachments["fleet.csv"].get_content().encode()
        == (folder / "data" / "fleet.csv").read_bytes()
    )
    archived = Path(result.html_location)
    assert archived.read_bytes() == (folder / "index.html").read_bytes()
    assert (archived.parent / "data" / "fleet.parquet").exists()
    markdown = str(latest_artifact(ARTIFACT_KEY))
    assert "## Fleet" in markdown
    assert markdown.index("| down | unreachable |") < markdown.index("| billing | ok |")


def test_cli_fleet_runs_the_report_and_refuses_what_makes_no_sense(
    fleet: dict[str, Any],
    report_prometheus: PrometheusServer,
    tmp_path: Path,
    prefect_api_url: str,
) -> None:
    env = {
        "PERFOPS_PROMETHEUS_URL": report_prometheus.url,
        "PREFECT_API_URL": prefect_api_url,
        "PERFOPS_OUT_DIR": str(tmp_path / "defaults"),
    }
    # Refused before Prefect starts; were it not, no local Prefect server is started for it.
    off = {"PERFOPS_LOCAL_SERVER": "off", "PERFOPS_OUT_DIR": str(tmp_path / "refused")}
    unknown = _cli("--fleet", "nope", "--fleet-file", str(fleet["file"]), env=off)
    assert unknown.returncode == 2, unknown.stderr
    assert "'nope' is neither a fleet (every)" in " ".join(unknown.stderr.split())
    alone = _cli("--fleet-file", str(fleet["file"]), env=off)
    assert alone.returncode == 2, alone.stderr
    assert "add --fleet NAME" in " ".join(alone.stderr.split())
    ran = _cli(
        "--week",
        WEEK.label,
        "--to",
        "sre@x.test",
        "--config",
        str(fleet["config"]),
        "--fleet",
        "billing",
        "--fleet-file",
        str(fleet["file"]),
        "--out",
        str(tmp_path),
        env=env,
    )
    assert ran.returncode == 0, ran.stderr
    assert "1. billing: ok" in ran.stdout
    page = (tmp_path / WEEK.label / "index.html").read_text()
    assert "Fleet billing: 1 targets: 0 unreachable, 0 need attention, 1 ok" in page


def test_a_replaced_archive_is_its_manifest_and_next_week_reads_no_stale_fleet_table(
    fleet: dict[str, Any],
    report_prometheus: PrometheusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fleet run's data/fleet.csv stayed in the week's folder when the week was run again
    without --fleet, and next week's report compared its fleet with that stale table."""
    from blocks.resolve import resolve_archive
    from tasks.storage import list_keys, put_object, read_report_manifest

    monkeypatch.setenv("PERFOPS_OUT_DIR", str(tmp_path / "perfops"))
    monkeypatch.setenv("PERFOPS_PROMETHEUS_URL", report_prometheus.url)
    fleet_args = {
        "config_path": str(fleet["config"]),
        "targets": "billing",
        "fleet_file": str(fleet["file"]),
        "recipients": ["sre@example.test"],
    }
    generate_weekly_report(week=PREVIOUS.label, **fleet_args, return_state=True)
    store = resolve_archive(None).value
    prefix = f"reports/weekly/{PREVIOUS.label}"
    assert read_report_manifest(store, prefix).holds("data/fleet.csv")

    state = generate_weekly_report(
        week=PREVIOUS.label,
        recipients=["sre@example.test"],
        replace_archive=True,
        return_state=True,
    )
    result = state.result(raise_on_failure=False)
    result = getattr(result, "result", result)  # a Failed run's ReportFailed carries it
    assert isinstance(result, ReportResult) and result.archive_action == "replace"
    assert "; removed 2 files of the earlier report not in this one: data/fleet.csv, " in (
        result.archive_note
    )
    manifest = read_report_manifest(store, prefix)
    assert not manifest.holds("data/fleet.csv")
    assert list_keys(store, prefix) == sorted([*manifest.files, "manifest.json"])

    # A fleet table the manifest does not list (an interrupted run's) is not last week's.
    stale = "target,result,slowest_mean_ms,slow_statements,cache_hit_ratio\nbilling,ok,0.001,0,\n"
    put_object(store, f"{prefix}/data/fleet.csv", stale.encode())
    state = generate_weekly_report(week=WEEK.label, **fleet_args, return_state=True)
    this = state.result(raise_on_failure=False)
    this = getattr(this, "result", this)
    assert isinstance(this, ReportResult)
    [billing] = this.fleet
    assert billing["target"] == "billing" and billing["worst week over week"] == "-", billing
    page = Path(this.html_location).read_text()
    assert (
        f"week over week: nothing to compare with (last week&#x27;s report, {prefix}/"
        "manifest.json, has no fleet table)"
    ) in page


class _CountingPrometheus(BaseHTTPRequestHandler):
    """Counts the queries it gets (and answers none of them)."""

    asked: list[str] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self.send_response(503)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_a_selection_of_caches_alone_fails_before_any_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--fleet` naming only cache targets (a redis block, no postgres or prometheus) failed
    only after the report's Prometheus queries and the week's events had been read."""
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(
        "targets:\n"
        "  - name: sessions\n    blocks: {redis: perfops-redis-sessions}\n"
        "    labels: {tier: cache}\n"
        "  - name: carts\n    blocks: {redis: perfops-redis-carts}\n    labels: {tier: cache}\n",
        encoding="utf-8",
    )
    asked: list[str] = []
    handler = type("Counting", (_CountingPrometheus,), {"asked": asked})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PERFOPS_PROMETHEUS_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("PERFOPS_OUT_DIR", str(tmp_path / "perfops"))
    try:
        state = generate_weekly_report(
            week=WEEK.label,
            recipients=["sre@example.test"],
            targets="tier=cache",
            fleet_file=str(fleet_file),
            return_state=True,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert state.is_failed()
    assert (
        "ConfigurationError: no target of tier=cache has a postgres or prometheus block in the "
        "fleet file (sessions (redis), carts (redis)): the Fleet section has nothing to read. "
        "Caches are in the report's Caches section"
    ) in (state.message or ""), state.message
    assert asked == []  # not one query
    assert (
        not (tmp_path / "perfops" / "archive").exists()
        and not (tmp_path / "perfops" / "mail").exists()
    )
    # The command refuses it before Prefect starts.
    refused = _cli(
        "--fleet",
        "sessions",
        "--fleet-file",
        str(fleet_file),
        env={"PERFOPS_LOCAL_SERVER": "off", "PERFOPS_OUT_DIR": str(tmp_path / "cli")},
    )
    assert refused.returncode == 2, refused.stderr
    assert "no target of sessions has a postgres or prometheus block" in " ".join(
        refused.stderr.split()
    )
    assert not (tmp_path / "cli").exists()
