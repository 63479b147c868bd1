"""The weekly report's Fleet section, pure: one row per target, worst first (unreachable, most
targets missed on its own Prometheus, most problems, biggest regression week over week, name),
each row's reason, last week's archived table read back, and the section on the page, in the
text, the artifact and the data. No servers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from decisions.fleet import parse_fleet
from decisions.report_fleet import (
    DatabaseFigures,
    FleetRow,
    FleetView,
    TargetFigures,
    build_view,
    data_rows,
    display_rows,
    events_of,
    fleet_row,
    fleet_things,
    previous_figures,
    rank,
    reported_targets,
    worst_first,
)
from decisions.report_rendering import (
    ReportResult,
    WeeklyReport,
    csv_bytes,
    data_tables,
    render_html,
    render_markdown,
    render_text,
    run_failure,
)
from decisions.reporting import (
    Check,
    FleetLimits,
    QueryResult,
    RecordedEvent,
    assemble_week,
    evaluate,
    load_config,
    parse_week,
    summarize_records,
    things_to_look_at,
    week_queries,
)
from decisions.staleness import TableStats
from perfops.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
LIMITS = FleetLimits()
CONFIG = load_config(ROOT / "deployments" / "report.yaml")


def _db(
    *,
    hit: int = 999_900,
    read: int = 100,
    slow: int = 0,
    slowest_ms: float = 12.0,
    tables: list[TableStats] | None = None,
) -> DatabaseFigures:
    return DatabaseFigures(
        server="PostgreSQL 15.8, primary",
        size_bytes=50 << 20,
        blks_hit=hit,
        blks_read=read,
        tables=tables or [],
        slow_statements=slow,
        slowest_mean_ms=slowest_ms,
        slowest_calls=10,
        slowest_query="select * from orders where id = $1",
    )


def _table(name: str, *, analyzed: bool, changed: int = 0) -> TableStats:
    return TableStats(
        relid=abs(hash(name)) % 100_000,
        schema_name="public",
        table_name=name,
        n_live_tup=1_000,
        reltuples=1_000,
        n_mod_since_analyze=changed,
        last_analyze=NOW if analyzed else None,
        has_statistics=analyzed,
    )


def _check(name: str, value: float, target: float, previous: float | None = None) -> Check:
    return Check(
        section="endpoints",
        name=name,
        value=value,
        target=target,
        unit="ms",
        better="lower",
        status="met" if value <= target else "missed",
        previous=previous,
    )


def test_worst_first_unreachable_then_missed_then_problems_then_regression() -> None:
    gathered = [
        TargetFigures(target="clean", database=_db()),
        TargetFigures(target="down", unreachable=["postgres: cannot connect to PostgreSQL"]),
        TargetFigures(
            target="missing-two",
            database=_db(),
            checks=[_check("GET /a p95", 250, 200), _check("GET /b p95", 120, 100)],
        ),
        TargetFigures(target="slow", database=_db(slow=2, slowest_ms=2_400)),
        TargetFigures(
            target="slow-and-cold", database=_db(hit=900, read=100, slow=1, slowest_ms=1_500)
        ),
        TargetFigures(target="regressed", database=_db(slowest_ms=30.0)),
    ]
    previous: dict[str, dict[str, float | None]] = {
        "regressed": {"slowest_mean_ms": 20.0},
        "clean": {"slowest_mean_ms": 12.0},
    }
    view = build_view("prod", NOW, gathered, LIMITS, previous, "last week's table")
    assert [r.target for r in view.rows] == [
        "down",  # cannot tell how it is: first
        "missing-two",  # two of the report's targets missed on its own Prometheus
        "slow-and-cold",  # two problems
        "slow",  # one problem
        "regressed",  # no problem, but 50% worse than last week
        "clean",
    ]
    by = {r.target: r for r in view.rows}
    assert by["down"].result == "unreachable"
    assert by["down"].reason == "postgres: cannot connect to PostgreSQL"
    assert by["missing-two"].result == "attention"
    assert by["missing-two"].reason.startswith(
        "2 of 2 targets missed (worst: GET /a p95 250 ms against 200 ms)"
    )
    assert by["slow-and-cold"].problems == [
        "cache hit ratio 90.0% < 99%",
        "1 statements with mean >= 1,000 ms (slowest 1,500 ms)",
    ]
    assert by["regressed"].result == "ok"
    assert by["regressed"].regression is not None and round(by["regressed"].regression, 6) == 0.5
    assert by["regressed"].reason == (
        "nothing missed or over its limit; slowest statement mean +50% week over week"
    )
    assert by["clean"].regression is None and by["clean"].reason == (
        "nothing missed or over its limit"
    )
    assert view.summary == "6 targets: 1 unreachable, 3 need attention, 2 ok"


def test_the_key_orders_ties_by_name_and_rank_is_stable() -> None:
    rows = [FleetRow(target=n, result="ok", reason="") for n in ("b", "a", "c")]
    assert [r.target for r in rank(rows)] == ["a", "b", "c"]
    assert worst_first(FleetRow(target="x", result="unreachable", reason=""))[0] == 0


def test_stale_tables_count_as_refresh_stale_statistics_would_analyze() -> None:
    tables = [
        _table("fresh", analyzed=True, changed=10),  # 1% changed
        _table("changed", analyzed=True, changed=200),  # 20% >= 10%
        _table("never", analyzed=False),
    ]
    row = fleet_row(TargetFigures(target="t", database=_db(tables=tables)), LIMITS)
    assert row.stale_tables == 2
    assert row.problems == [
        "2 tables with stale statistics (>= 10% rows changed since the last analyze, or never)"
    ]
    relaxed = fleet_row(
        TargetFigures(target="t", database=_db(tables=tables)), FleetLimits(stale_ratio=0.5)
    )
    assert relaxed.stale_tables == 1  # only the never-analyzed one


def test_regression_is_the_worst_figure_week_over_week_from_prometheus_or_last_weeks_table() -> (
    None
):
    checks = [
        _check("GET /a p95", 90, 100, previous=60),  # +50%, still met
        _check("GET /b p95", 50, 100, previous=80),  # better
    ]
    row = fleet_row(
        TargetFigures(target="t", database=_db(hit=990_000, read=10_000), checks=checks),
        LIMITS,
        {"cache_hit_ratio": 0.998, "slowest_mean_ms": 12.0},  # misses 0.2% -> 1%: 5x
    )
    assert row.regression_of == "cache misses" and round(row.regression or 0, 6) == 4.0
    only_prometheus = fleet_row(TargetFigures(target="t", checks=checks), LIMITS)
    assert only_prometheus.regression_of == "GET /a p95"
    assert round(only_prometheus.regression or 0, 6) == 0.5
    assert only_prometheus.missed == 0 and only_prometheus.met == 2


def test_last_weeks_archived_table_is_read_back() -> None:
    view = build_view(
        "prod",
        NOW,
        [
            TargetFigures(target="a", database=_db(slow=3, slowest_ms=1_200)),
            TargetFigures(target="down", unreachable=["postgres: refused"]),
        ],
        LIMITS,
        {},
        "nothing to compare with",
    )
    back = previous_figures(csv_bytes(pd.DataFrame(data_rows(view))))
    assert back["a"]["slow_statements"] == 3.0
    assert back["a"]["slowest_mean_ms"] == 1_200.0
    assert back["down"]["slowest_mean_ms"] is None  # empty, not 0
    assert previous_figures(None) == {} and previous_figures(b"") == {}


def test_unreachable_targets_make_the_failure_message_and_a_thing_to_look_at() -> None:
    gathered = [TargetFigures(target=f"t{n}", database=_db()) for n in range(3)] + [
        TargetFigures(target=f"down{n}", unreachable=[f"postgres: cannot connect {n}"])
        for n in range(4)
    ]
    view = build_view("all", NOW, gathered, LIMITS, {}, "-")
    assert view.failure == (
        "4 of 7 targets unreachable: down0: postgres: cannot connect 0; down1: postgres: "
        "cannot connect 1; down2: postgres: cannot connect 2; and 1 more"
    )
    things = dict((text, weight) for weight, text in fleet_things(view))
    assert things == {f"fleet: {view.failure}": 45}
    ok = build_view("all", NOW, gathered[:3], LIMITS, {}, "-")
    assert ok.failure is None and fleet_things(ok) == [] and fleet_things(None) == []


def test_events_are_attributed_to_their_database_and_its_tables() -> None:
    def event(name: str, resource: str, **payload: object) -> RecordedEvent:
        return RecordedEvent(event=name, occurred=NOW, resource=resource, payload=payload)

    events = [
        event("perfops.stats.refreshed", "perfops.postgres.db:5432/orders", failed=2),
        event(
            "perfops.partitions.rotated",
            "perfops.postgres.db:5432/orders/public.audit",
            table="public.audit",
            problems=["default partition holds 12 rows"],
        ),
        event("perfops.stats.refreshed", "perfops.postgres.db:5432/orders_old", failed=9),
    ]
    mine = events_of(events, "perfops.postgres.db:5432/orders")
    assert len(mine) == 2  # not orders_old
    row = fleet_row(TargetFigures(target="orders", database=_db(), events=mine), LIMITS)
    assert row.recorded == 2
    assert row.problems == [
        "statistics refresh failed on 2 tables this week",
        "partition problems this week: public.audit: default partition holds 12 rows",
    ]


def _report(view: FleetView | None) -> WeeklyReport:
    week = parse_week("2026-W47", NOW)
    empty = {name: QueryResult() for name in week_queries(CONFIG, week.seconds)}
    now = assemble_week(week.label, empty, CONFIG)
    checks = evaluate(now, None, CONFIG)
    return WeeklyReport(
        week=week,
        previous_week="2026-W46",
        generated_at=NOW,
        source="test",
        checks=checks,
        current=now,
        previous=None,
        records=summarize_records([]),
        things=things_to_look_at(checks, now, [], extra=fleet_things(view)),
        fleet=view,
    )


def test_the_fleet_section_on_the_page_text_artifact_and_data() -> None:
    view = build_view(
        "prod",
        NOW,
        [
            TargetFigures(target="orders", database=_db(slow=1, slowest_ms=1_500)),
            TargetFigures(target="down", unreachable=["postgres: cannot connect | refused"]),
        ],
        LIMITS,
        {},
        "nothing to compare with (no fleet table at reports/weekly/2026-W46/data/fleet.csv)",
    )
    report = _report(view)
    assert report.things[0] == f"fleet: {view.failure}"
    page = render_html(report, CONFIG, [], {})
    assert "Fleet prod: 2 targets: 1 unreachable, 1 need attention, 0 ok." in page
    assert page.index(">down<") < page.index(">orders<")  # worst first
    assert page.index(">Fleet<") < page.index("Endpoints: latency")
    text = render_text(report)
    assert "  1. [unreachable] down: postgres: cannot connect | refused" in text
    assert "  2. [attention] orders: 1 statements with mean >= 1,000 ms" in text
    markdown = render_markdown(report, None, "sent")
    assert "## Fleet" in markdown
    assert "| down | unreachable | postgres: cannot connect \\| refused |" in markdown
    tables = data_tables(report, {}, None)
    assert list(tables["fleet"]["target"]) == ["down", "orders"]
    assert list(tables["fleet"]["rank"]) == [1, 2]
    assert display_rows(view)[1]["slowest mean"] == "1,500 ms"
    assert "fleet" not in data_tables(_report(None), {}, None)
    assert "Fleet" not in render_html(_report(None), CONFIG, [], {})


def test_the_runs_failure_message_says_how_many_targets_are_unreachable() -> None:
    view = build_view(
        "prod",
        NOW,
        [
            TargetFigures(target="orders", database=_db()),
            TargetFigures(target="down", unreachable=["postgres: refused"]),
        ],
        LIMITS,
        {},
        "-",
    )
    report = _report(view)
    result = ReportResult(
        week="2026-W47",
        headline=report.headline,
        things=[],
        met=0,
        missed=0,
        missing_sections={},
        archive="s3://b/index.html",
        html_location="s3://b/index.html",
        files=1,
        recipients=["a@b.test"],
        delivery="sent to 1 of 1",
        seconds=1.0,
    )
    message = run_failure(report, result, "test", None)
    assert message is not None
    assert message.startswith("weekly report 2026-W47 archived at s3://b/index.html; 0 of 13")
    assert message.endswith("; 1 of 2 targets unreachable: down: postgres: refused")


def test_a_target_with_nothing_the_section_reads_has_no_row() -> None:
    # a cache (redis only) read nothing: its row said "ok: nothing missed or over its limit"
    fleet = parse_fleet(
        "targets:\n"
        "  - {name: orders, blocks: {postgres: pg-orders}}\n"
        "  - {name: sessions, blocks: {redis: cache-sessions}}\n"
        "  - {name: api, blocks: {prometheus: prom-api, redis: r}, autoscaling: {group: api}}\n",
        "fleet.yaml",
    )
    kept = reported_targets(fleet.select("all"), "all")
    assert [t.name for t in kept] == ["orders", "api"]
    with pytest.raises(ConfigurationError, match="no target of sessions has a postgres or"):
        reported_targets(fleet.select("sessions"), "sessions")
