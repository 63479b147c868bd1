"""The weekly report's pure decisions: weeks, configuration, figures, targets, the three things,
perfops' record, and the page's handling of missing data. No servers."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from decisions.report_rendering import (
    WeeklyReport,
    column_labels,
    endpoint_series,
    render_html,
    render_text,
    time_grid,
)
from decisions.reporting import (
    QueryResult,
    RecordedEvent,
    SlowQueries,
    assemble_week,
    error_budget_remaining,
    evaluate,
    format_change,
    last_complete_week,
    load_config,
    parse_week,
    promql,
    summarize_records,
    things_to_look_at,
    week_queries,
)
from demo.sample_metrics import quantile_shares
from perfops.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)  # a Friday in 2026-W48
CONFIG = load_config(ROOT / "deployments" / "report.yaml")


def test_a_clock_without_a_time_zone_reads_as_utc() -> None:
    """A `now` typed without a zone (the UI, the API) raised TypeError comparing it."""
    naive = NOW.astimezone(UTC).replace(tzinfo=None)
    assert parse_week("2026-W47", naive) == parse_week("2026-W47", NOW)
    assert last_complete_week(naive) == last_complete_week(NOW)


def test_parse_week_gives_monday_to_monday_utc() -> None:
    week = parse_week("2026-W47", NOW)
    assert (week.label, week.start, week.end) == (
        "2026-W47",
        datetime(2026, 11, 16, tzinfo=UTC),
        datetime(2026, 11, 23, tzinfo=UTC),
    )
    assert week.seconds == 7 * 86400
    assert week.previous().label == "2026-W46"
    assert parse_week("2021-W01", NOW).start == datetime(2021, 1, 4, tzinfo=UTC)
    assert parse_week("2026-W53", datetime(2027, 3, 1, tzinfo=UTC)).label == "2026-W53"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-W99", "week '2026-W99' does not exist: 2026 has weeks 01-53"),
        ("2025-W53", "week '2025-W53' does not exist: 2025 has weeks 01-52"),
        ("2026-47", "is not an ISO week like 2026-W47"),
        ("W47", "is not an ISO week like 2026-W47"),
        ("2026-W48", "week 2026-W48 is not over yet (it ends 2026-11-30 00:00 UTC)"),
        ("2027-W01", "week 2027-W01 has not started yet"),
    ],
)
def test_bad_weeks_are_named_with_the_latest_complete_one(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_week(text, NOW)
    assert message in str(caught.value)
    assert str(caught.value).endswith("latest complete week: 2026-W47")


def test_last_complete_week_on_a_monday_morning_is_the_week_before() -> None:
    assert last_complete_week(datetime(2026, 11, 23, 8, 0, tzinfo=UTC)).label == "2026-W47"
    assert last_complete_week(datetime(2026, 11, 22, 23, 59, tzinfo=UTC)).label == "2026-W46"


def test_shipped_configuration_has_the_seed_targets() -> None:
    assert [(e.key, e.p95_ms, e.rps) for e in CONFIG.endpoints] == [
        ("GET /api/v1/agents", 100, 1000),
        ("POST /api/v1/agents/execute", 200, 500),
        ("POST /api/v1/workflows/run", 500, 100),
    ]
    assert [(s.name, s.objective) for s in CONFIG.slos] == [("availability", 0.999)]
    r = CONFIG.resources
    assert (r.cpu_normal_max, r.cpu_peak_max, r.memory_normal_max, r.memory_peak_max) == (
        70,
        90,
        80,
        95,
    )
    queries = week_queries(CONFIG, 604800)
    assert "$" not in "".join(queries.values())
    assert (
        "[604800s]" in queries["latency_p95"]
        and "histogram_quantile(0.95," in queries["latency_p95"]
    )


def test_configuration_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "report.yaml"
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_config(path)
    path.write_text("queries: {throughput: x}\n")
    with pytest.raises(ConfigurationError, match=r"report.yaml: queries: .*lacks latency_quantile"):
        load_config(path)
    path.write_text("endpoints: [{method: GET, route: /x, p95_ms: -1, rps: 1}]\nqueries: {}\n")
    with pytest.raises(ConfigurationError, match=r"endpoints.0.p95_ms: Input should be greater"):
        load_config(path)
    path.write_text("queries: [unclosed\n")
    with pytest.raises(ConfigurationError, match="is not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigurationError, match="unknown placeholder"):
        promql("rate(x[$windw])", window_s=60)


def _results(**series: list[tuple[dict[str, str], float]]) -> dict[str, QueryResult]:
    return {name: QueryResult(samples=samples) for name, samples in series.items()}


AGENTS = {"method": "GET", "route": "/api/v1/agents"}
EXECUTE = {"method": "POST", "route": "/api/v1/agents/execute"}
WORKFLOWS = {"method": "POST", "route": "/api/v1/workflows/run"}


def _week(p95_agents: float, errors: float = 0.0005) -> dict[str, QueryResult]:
    return _results(
        latency_p50=[(AGENTS, 0.03), (EXECUTE, 0.1), (WORKFLOWS, math.nan)],
        latency_p95=[(AGENTS, p95_agents), (EXECUTE, 0.25), (WORKFLOWS, math.nan)],
        latency_p99=[(AGENTS, 0.2), (EXECUTE, 0.4), (WORKFLOWS, math.nan)],
        throughput=[(AGENTS, 800.0), (EXECUTE, 300.0), (WORKFLOWS, 0.0)],
        peak_throughput=[(AGENTS, 1100.0), (EXECUTE, 420.0), (WORKFLOWS, 0.0)],
        error_rate=[(AGENTS, errors), (EXECUTE, 0.02), (WORKFLOWS, math.nan)],
        slo_availability=[({}, 0.9995)],
        cpu_percent=[({}, 55.0)],
        cpu_peak_percent=[({}, 93.0)],
        memory_percent=[({}, 60.0)],
        memory_peak_percent=[({}, 70.0)],
    )


def test_targets_met_missed_no_traffic_and_no_data() -> None:
    now = assemble_week("2026-W47", _week(0.087), CONFIG)
    before = assemble_week("2026-W46", _week(0.060), CONFIG)
    checks = {c.name: c for c in evaluate(now, before, CONFIG)}
    assert checks["GET /api/v1/agents p95"].status == "met"
    assert checks["GET /api/v1/agents p95"].value == pytest.approx(87.0)
    assert checks["GET /api/v1/agents p95"].detail == "peak 1,100 rps of 1,000 rps designed"
    assert format_change(checks["GET /api/v1/agents p95"]) == "+45% (worse)"
    assert checks["POST /api/v1/agents/execute p95"].status == "missed"
    assert checks["POST /api/v1/agents/execute error rate"].status == "missed"
    quiet = checks["POST /api/v1/workflows/run p95"]
    assert (quiet.status, quiet.value, quiet.detail) == (
        "no traffic",
        None,
        "no requests this week",
    )
    assert "POST /api/v1/workflows/run error rate" not in checks
    assert checks["availability"].status == "met"
    assert checks["availability"].detail == "error budget left 50%"
    assert checks["CPU peak"].status == "missed" and checks["CPU average"].status == "met"
    # The duration histograms returned nothing: no data, not zero.
    assert checks["Agent execution time p95"].status == "no data"
    assert checks["Agent execution time p95"].value is None


def test_an_endpoint_prometheus_does_not_know_is_no_data_and_unlisted_ones_are_added() -> None:
    results = _week(0.087)
    results["throughput"] = QueryResult(
        samples=[(AGENTS, 800.0), ({"method": "GET", "route": "/health"}, 5.0)]
    )
    now = assemble_week("w", results, CONFIG)
    assert [e.key for e in now.endpoints] == [
        "GET /api/v1/agents",
        "POST /api/v1/agents/execute",
        "POST /api/v1/workflows/run",
        "GET /health",
    ]
    assert now.endpoint("POST /api/v1/workflows/run") is not None
    assert now.endpoint("POST /api/v1/workflows/run").status == "no data"  # type: ignore[union-attr]


def test_a_failed_query_marks_its_section_missing() -> None:
    results = _week(0.087)
    results["cpu_percent"] = QueryResult(error="HTTP 503")
    results["memory_peak_percent"] = QueryResult(error="HTTP 503")
    now = assemble_week("w", results, CONFIG)
    assert now.missing == {"resources": "cpu_percent: HTTP 503; memory_peak_percent: HTTP 503"}
    assert now.cpu_percent is None and now.memory_percent == 60.0


def test_error_budget() -> None:
    assert error_budget_remaining(0.999, 0.999) == pytest.approx(0.0)
    assert error_budget_remaining(1.0, 0.999) == pytest.approx(1.0)
    assert error_budget_remaining(0.998, 0.999) == pytest.approx(-1.0)
    assert error_budget_remaining(None, 0.999) is None


def test_three_things_put_the_worst_miss_first() -> None:
    now = assemble_week("w", _week(0.087), CONFIG)
    before = assemble_week("v", _week(0.060), CONFIG)
    checks = evaluate(now, before, CONFIG)
    things = things_to_look_at(checks, now, summarize_records([]))
    assert len(things) == 3
    # execute's error rate is 100% over its 1% target; its p95 25% over; CPU peak 3% over.
    assert things[0].startswith("POST /api/v1/agents/execute error rate missed its target")
    assert things[1].startswith("POST /api/v1/agents/execute p95 missed its target: 250 ms")
    assert things[2].startswith("CPU peak missed its target: 93.0%")


def test_three_things_on_a_quiet_good_week() -> None:
    results = _week(0.05)
    results["latency_p95"] = QueryResult(samples=[(AGENTS, 0.05), (EXECUTE, 0.1)])
    results["error_rate"] = QueryResult(samples=[(AGENTS, 0.0), (EXECUTE, 0.0)])
    results["cpu_peak_percent"] = QueryResult(samples=[({}, 80.0)])
    config = CONFIG.model_copy(update={"durations": []})
    now = assemble_week("w", results, config)
    things = things_to_look_at(evaluate(now, now, config), now, summarize_records([]))
    assert things == ["no traffic on POST /api/v1/workflows/run"]


def _event(name: str, payload: dict[str, object], hour: int = 1) -> RecordedEvent:
    return RecordedEvent(
        event=name,
        occurred=datetime(2026, 11, 20, hour, tzinfo=UTC),
        resource="perfops.x",
        payload=payload,
    )


def test_records_by_section_and_sections_with_nothing_say_so() -> None:
    events = [
        _event("perfops.stats.refreshed", {"analyzed": 3, "failed": 1}),
        _event("perfops.stats.refreshed", {"analyzed": 2, "failed": 0}, 2),
        _event(
            "perfops.sla.evaluated",
            {"slos": [{"name": "availability", "objective": 0.999, "budget_remaining": 0.42}]},
        ),
        _event(
            "perfops.sla.escalated",
            {"alert": "a", "slo": "availability", "severity": "page", "level": 2, "reason": "r"},
        ),
    ]
    sections = {s.key: s for s in summarize_records(events)}
    assert sections["database"].lines == [
        "statistics refreshed: 5 tables analyzed in 2 runs, 1 failed"
    ]
    assert sections["sla"].lines[0] == "1 escalated"
    assert "error budget left 42% at the last evaluation" in sections["sla"].lines[1]
    assert sections["sla"].rows[0]["level"] == 2
    assert sections["partitions"].empty and sections["scaling"].empty
    assert sections["partitions"].lines[0].startswith("nothing recorded this week")


def test_gaps_stay_gaps_and_infinite_quantiles_are_not_data() -> None:
    week = parse_week("2026-W47", NOW)
    grid = time_grid(week, 3600)
    assert len(grid) == 168 and grid[0] == pd.Timestamp("2026-11-16 01:00", tz="UTC")
    column = '{method="GET",route="/a"}'
    assert column_labels(column) == {"method": "GET", "route": "/a"}
    rps = pd.Series([5.0] * 100, index=grid[:100])  # the last 68 hours are missing
    p95 = pd.Series([0.1] * 99 + [math.inf], index=grid[:100])
    series = endpoint_series(
        {"throughput": pd.DataFrame({column: rps}), "latency_p95": pd.DataFrame({column: p95})},
        grid,
        ["method", "route"],
        ["GET /a"],
    )["GET /a"]
    assert series.points_with_data == 100
    assert series.missing_share == pytest.approx(68 / 168)
    assert series.frame["rps"].iloc[100:].isna().all()  # not zeros
    assert series.frame["p95_ms"].iloc[98] == pytest.approx(100.0)
    assert math.isnan(series.frame["p95_ms"].iloc[99])


def test_page_and_text_for_a_week_without_data() -> None:
    week = parse_week("2026-W47", NOW)
    empty = {name: QueryResult() for name in week_queries(CONFIG, week.seconds)}
    now = assemble_week(week.label, empty, CONFIG)
    checks = evaluate(now, None, CONFIG)
    report = WeeklyReport(
        week=week,
        previous_week="2026-W46",
        generated_at=NOW,
        source="test",
        checks=checks,
        current=now,
        previous=None,
        records=summarize_records([]),
        things=things_to_look_at(checks, now, []),
        objectives={"availability": 0.999},
    )
    page = render_html(report, CONFIG, [], {})
    assert "<img" not in page
    assert "GET /api/v1/agents: no data in Prometheus for this week, nothing plotted." in page
    for zero in (">0 ms<", ">0.0 ms<", ">0.000%<", ">0.0%<", ">0.0 rps<"):
        assert zero not in page  # missing figures are never shown as zeros
    text = render_text(report)
    assert "[no data] GET /api/v1/agents p95: no data (target 100 ms)" in text
    assert report.headline == "2026-W47: 0 targets met, 0 missed, 13 without data"


def test_sample_histogram_shares_are_exact_at_the_quantiles() -> None:
    shares = dict(quantile_shares(0.04, 0.087, 0.15))
    assert (shares[0.04], shares[0.087], shares[0.15]) == (0.5, 0.95, 0.99)
    assert shares[math.inf] == 1.0
    values = [s for _, s in sorted(shares.items())]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="need 0 < p50 < p95 < p99"):
        quantile_shares(0.1, 0.05, 0.2)


def test_top_slow_queries_come_from_the_latest_artifact_of_the_week() -> None:
    slow = SlowQueries(
        checked_at=datetime(2026, 11, 21, 5, 23, tzinfo=UTC),
        rows=[
            {
                "rank": 1,
                "mean_ms": 1234.5,
                "calls": 5000,
                "share_of_db_time": "61%",
                "query": "select *\n  from agent_executions where agent_id = $1",
            },
            {"rank": "-", "reason": "no statement over the threshold", "query": ""},
        ],
    )
    [database, *_] = summarize_records([], slow)
    assert not database.empty
    assert database.lines == [
        "top 1 statements by total time at the last check (Sat 21 Nov 05:23 UTC, artifact "
        "perfops-slow-queries)"
    ]
    assert database.rows == [
        {
            "kind": "slow query #1",
            "what": "mean 1,234.5 ms x 5,000 calls (61% of DB time): select * from "
            "agent_executions where agent_id = $1",
        }
    ]


def test_a_long_record_table_says_it_shows_the_first_rows_and_the_data_holds_them_all() -> None:
    from decisions.report_rendering import data_tables, parquet_bytes

    week = parse_week("2026-W47", NOW)
    empty = {name: QueryResult() for name in week_queries(CONFIG, week.seconds)}
    now = assemble_week(week.label, empty, CONFIG)
    applied = [
        RecordedEvent(
            event="perfops.scaling.applied",
            occurred=week.start + pd.Timedelta(hours=n),
            resource="perfops.scaling.web",
            payload={"group": "web", "from": n, "to": n + 1 if n % 2 else str(n + 1)},
        )
        for n in range(45)
    ]
    report = WeeklyReport(
        week=week, previous_week="2026-W46", generated_at=NOW, source="test",
        checks=evaluate(now, None, CONFIG), current=now, previous=None,
        records=summarize_records(applied), things=[], objectives={},
    )  # fmt: skip
    page = render_html(report, CONFIG, [], {})
    assert "First 30 of 45 rows; all of them in the data files (records_scaling.csv" in page
    assert "Tue 17 Nov 05:00" in page and "Tue 17 Nov 06:00" not in page  # rows 30 and 31
    table = data_tables(report, {}, None)["records_scaling"]
    assert len(table) == 45 and list(table["to"])[-1] == "45"
    assert parquet_bytes(table)  # the column of 2 and "2" is stored as text


def test_a_query_answering_more_series_than_its_figure_marks_its_section_missing() -> None:
    """One CPU figure from a query per instance took the first instance's 20% for all (the
    other at 95%); an endpoint query keeping `instance` took the last instance's p95."""
    results = _week(0.087)
    results["cpu_percent"] = QueryResult(
        samples=[({"instance": "a:9100"}, 20.0), ({"instance": "b:9100"}, 95.0)]
    )
    results["latency_p95"] = QueryResult(
        samples=[({**AGENTS, "instance": "a"}, 0.3), ({**AGENTS, "instance": "b"}, 0.05)]
    )
    now = assemble_week("w", results, CONFIG)
    assert now.cpu_percent is None and now.memory_percent == 60.0
    assert now.missing["resources"] == (
        'cpu_percent: answered 2 series ({instance="a:9100"}, {instance="b:9100"}), a figure '
        "needs one: aggregate it (avg, max or sum without by)"
    )
    assert now.endpoint("GET /api/v1/agents").p95_ms is None  # type: ignore[union-attr]
    assert now.missing["endpoints"].startswith(
        "latency_p95: answered several series for endpoint GET /api/v1/agents "
        '({instance="a",method="GET",route="/api/v1/agents"}, {instance="b",'
    )
    assert now.missing["endpoints"].endswith(
        "keep only the labels method, route (sum by (method, route) ...)"
    )
    checks = {c.name: c for c in evaluate(now, assemble_week("v", _week(0.06), CONFIG), CONFIG)}
    assert checks["CPU average"].status == "no data"


def test_endpoints_whose_names_slug_alike_keep_a_chart_each() -> None:
    """`/agent_runs` and `/agent-runs` (or a trailing slash, or case) both slug to
    `get-api-v1-agent-runs`: each still has its own chart, file and content id, and the page
    shows each endpoint's own."""
    from decisions.report_rendering import render_week
    from decisions.reporting import SeriesResult

    week = parse_week("2026-W47", NOW)
    grid = time_grid(week, CONFIG.chart_step_s)
    routes = {"/api/v1/agent_runs": 10.0, "/api/v1/agent-runs": 500.0, "/api/v1/Agent-Runs/": 9.0}
    columns = {f'{{method="GET",route="{r}"}}': rps for r, rps in routes.items()}
    results = _week(0.087)
    for name in ("latency_p50", "latency_p95", "latency_p99", "throughput", "error_rate"):
        results[name] = QueryResult(
            samples=[
                *results[name].samples,
                *(({"method": "GET", "route": r}, 0.05) for r in routes),
            ]
        )
    now = assemble_week(week.label, results, CONFIG)
    checks = evaluate(now, None, CONFIG)
    report = WeeklyReport(
        week=week, previous_week="2026-W46", generated_at=NOW, source="test", checks=checks,
        current=now, previous=None, records=summarize_records([]), things=[], objectives={},
    )  # fmt: skip
    frame = pd.DataFrame({c: [v] * len(grid) for c, v in columns.items()}, index=grid)
    series = {
        "throughput": SeriesResult(frame=frame),
        "latency_p95": SeriesResult(frame=frame / 1000),
    }
    rendered = render_week(report, CONFIG, series, [])
    charts = {c.title: c for c in rendered.charts if c.title.startswith("GET /api/v1/")}
    assert set(charts) == {f"GET {r}" for r in routes}
    assert len({c.cid for c in charts.values()}) == 3  # one file and content id each
    assert len({c.png for c in charts.values()}) == 3
    assert all(rendered.files[c.filename] == c.png for c in charts.values())
    page = rendered.files["index.html"].decode()
    for chart in charts.values():
        assert page.count(f'src="{chart.filename}"') == 1


def _pixels_of(png: bytes, colour: str) -> int:
    """How many pixels of a chart are (about) `colour` (#rrggbb)."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    image = np.array(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(image - rgb).sum(axis=2) < 90).sum())


def test_hours_with_data_between_gaps_are_drawn_not_left_out() -> None:
    """A sparse endpoint (three hours with requests, p95 900 ms against 100 ms) or a resource
    sampled once: a line through a point with no neighbour draws nothing, so its chart was empty
    beside a table saying 900 ms. Such points are dots."""
    from decisions.report_rendering import (
        COLOURS,
        EndpointSeries,
        endpoint_chart,
        resources_chart,
    )

    grid = time_grid(parse_week("2026-W47", NOW), 3600)

    def chart(hours: list[int]) -> bytes:
        columns = ["p50_ms", "p95_ms", "p99_ms", "rps", "error_rate"]
        frame = pd.DataFrame({c: [math.nan] * len(grid) for c in columns}, index=grid)
        for hour in hours:
            frame.iloc[hour] = [40.0, 900.0, 150.0, 5.0, 0.01]
        series = EndpointSeries(
            key="GET /x", frame=frame, points_expected=len(grid), points_with_data=len(hours)
        )
        return endpoint_chart(series, 100.0, 1000.0).png

    legend_only = _pixels_of(chart([]), COLOURS["p95"])
    assert _pixels_of(chart([50]), COLOURS["p95"]) > legend_only
    assert _pixels_of(chart([10, 50, 90]), COLOURS["p95"]) > _pixels_of(chart([50]), COLOURS["p95"])
    once = pd.Series(math.nan, index=grid)
    once.iloc[80] = 50.0
    nothing = pd.Series(math.nan, index=grid)
    used = "#4c78a8"
    assert _pixels_of(resources_chart(once, once, CONFIG).png, used) > _pixels_of(
        resources_chart(nothing, nothing, CONFIG).png, used
    )


def test_a_group_with_one_scaling_decision_shows_its_capacity() -> None:
    """A step through one point draws nothing: a group decided once in the week had a chart
    with its 'desired' marker and no capacity."""
    from decisions.report_rendering import scaling_chart

    week = parse_week("2026-W47", NOW)

    def chart(current: int | None) -> bytes:
        payload: dict[str, object] = {"group": "web", "current": current, "desired": 6}
        made = scaling_chart([_event("perfops.scaling.decided", payload, 12)], week)
        assert made is not None
        return made.png

    capacity = "#1f77b4"  # the first line's colour
    assert _pixels_of(chart(4), capacity) > _pixels_of(chart(None), capacity)  # legend alone


def test_an_email_that_gmail_would_clip_shows_fewer_rows_and_says_where_the_rest_are() -> None:
    """Gmail clips an HTML part over 102 KB ('[Message clipped]'), hiding every section after
    the cut: a busy week (50 endpoints, a scaling decision and an SLA breach an hour) had a
    125 KB email. The email shows fewer rows; the archived page keeps 30 a section."""
    from decisions.report_rendering import EMAIL_HTML_MAX, RenderedReport, render_email

    week = parse_week("2026-W47", NOW)
    results = _week(0.087)
    routes = [{"method": "GET", "route": f"/api/v1/resources/{n}/items"} for n in range(50)]
    for name in ("latency_p50", "latency_p95", "latency_p99", "throughput", "error_rate"):
        results[name] = QueryResult(
            samples=[*results[name].samples, *((labels, 0.05) for labels in routes)]
        )
    now = assemble_week(week.label, results, CONFIG)
    events = [
        RecordedEvent(event=name, occurred=week.start + pd.Timedelta(hours=n), resource=resource,
                      payload=payload)
        for n in range(100)
        for name, resource, payload in (
            ("perfops.scaling.applied", "perfops.scaling.web",
             {"group": "web", "from": n, "to": n + 1, "reason": "load 80% over 15 minutes"}),
            ("perfops.sla.breached", "perfops.sla.availability",
             {"alert": "availability-fast-burn", "slo": "availability", "severity": "page",
              "level": 1, "value": 0.995, "objective": 0.999, "reason": "burn rate 14x"}),
        )
    ]  # fmt: skip
    report = WeeklyReport(
        week=week, previous_week="2026-W46", generated_at=NOW, source="test",
        checks=evaluate(now, None, CONFIG), current=now, previous=None,
        records=summarize_records(events), things=[], objectives={},
    )  # fmt: skip
    page = render_html(report, CONFIG, [], {})
    assert len(page.encode()) > 102 * 1024  # the archived page: every row it always had
    assert "First 30 of 100 rows" in page
    rendered = RenderedReport(report=report, files={}, charts=[], csv={})
    email = render_email(rendered, CONFIG, "s3://archive/reports/weekly/2026-W47/index.html", None)
    assert len(email.html.encode()) <= EMAIL_HTML_MAX
    assert "First 10 of 100 rows; all of them in the data files (records_scaling.csv" in email.html
    assert "First 10 of 100 rows; all of them in the data files (records_sla.csv" in email.html
    assert "GET /api/v1/resources/49/items" in email.html  # every endpoint still there
    assert "perfops weekly report: numbers from Prometheus" in email.html  # to the end
