"""`perfops queries ...`: the statements PostgreSQL executes. `slow` runs find_slow_queries."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.commands.fleet import FleetFileOption, FleetOption, run_fleet
from cli.support import (
    WIDTH,
    DsnOption,
    JsonFlag,
    PostgresBlockOption,
    VerboseFlag,
    out,
    print_json,
    print_wrapped,
    run_flow,
    use_dsn,
)
from decisions.slow_queries import (
    DEFAULT_THRESHOLD_MS,
    DEFAULT_TOP,
    SlowQuerySettings,
    SlowStatement,
    format_ms,
    format_share,
)

INDENT = 5

app = typer.Typer(
    help="Statements PostgreSQL executes (from pg_stat_statements).", no_args_is_help=True
)


def _flow() -> Any:
    from flows.find_slow_queries import find_slow_queries

    return find_slow_queries


@app.command("slow")
def slow(
    dsn: DsnOption = None,
    postgres_block: PostgresBlockOption = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    threshold_ms: Annotated[
        float,
        typer.Option(
            min=0, max=86_400_000, help="List statements whose mean time is at least this (ms)."
        ),
    ] = DEFAULT_THRESHOLD_MS,
    top: Annotated[
        int,
        typer.Option(min=0, max=500, help="Also list the N statements with the most total time."),
    ] = DEFAULT_TOP,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Show each statement's generic plan (EXPLAIN, never ANALYZE: nothing runs).",
        ),
    ] = False,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """List the statements over a mean-time threshold and the top N by total time, each with
    why it is listed (flow find_slow_queries). Read-only."""
    if fleet:
        run_fleet(
            _flow,
            {"settings": SlowQuerySettings(threshold_ms=threshold_ms, top=top, explain=explain)},
            fleet=fleet,
            fleet_file=fleet_file,
            single={"--dsn": dsn, "--postgres-block": postgres_block},
            label="slow queries",
            artifact_key="perfops-slow-queries-fleet",
            as_json=as_json,
            verbose=verbose,
        )
        return
    use_dsn(dsn)
    settings = SlowQuerySettings(threshold_ms=threshold_ms, top=top, explain=explain)
    report = run_flow(
        _flow,
        {"postgres_block": postgres_block, "settings": settings},
        verbose=verbose,
        label="finding slow queries",
        show_progress=not as_json,
    )
    if as_json:
        print_json(report)
        return
    _print(report)


def _print(report: Any) -> None:
    s = report.settings
    out.print(
        f"[bold]slow queries[/] in {escape(report.database)} ({report.origin})", highlight=False
    )
    out.print(
        f"{len(report.statements)} of {report.statements_seen} statements listed: mean >= "
        f"{format_ms(s.threshold_ms)} ms or top {s.top} by total time",
        highlight=False,
    )
    if report.hidden:
        print_wrapped(report.hidden.warning, indent=0, style="yellow")
    if report.statements_reset is not None:
        out.print(
            "figures count from pg_stat_statements' reset at "
            f"{report.statements_reset.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
            highlight=False,
        )
    if not report.statements:
        out.print("nothing to show: no statement over the threshold", highlight=False)
    for st in report.statements:
        _print_statement(st)


def _print_statement(st: SlowStatement) -> None:
    total = (
        f"{st.total_ms / 1000:,.1f} s" if st.total_ms >= 1000 else f"{format_ms(st.total_ms)} ms"
    )
    out.print()
    out.print(
        f"[bold]#{st.rank_by_total:<3}[/] mean [bold]{format_ms(st.mean_ms)} ms[/]  "
        f"calls {st.calls:,}  total {total}  {format_share(st.share_of_db_time)} of DB time",
        highlight=False,
    )
    query = " ".join(st.query.split())
    limit = WIDTH - 5
    shown = query if len(query) <= limit else query[: limit - 3] + "..."
    out.print(f"     [cyan]{escape(shown)}[/]", highlight=False)
    print_wrapped("why: " + st.why, indent=INDENT)
    ratio = st.hit_ratio
    cache = (
        "no blocks"
        if ratio is None
        else f"cache hits {ratio:.1%} ({st.shared_blks_read:,} blocks read)"
    )
    print_wrapped(
        f"stddev {format_ms(st.stddev_ms)} ms, max {format_ms(st.max_ms)} ms, "
        f"rows {st.rows:,}, {cache}",
        indent=INDENT,
    )
    if st.plan is not None:
        if st.plan.status == "planned":
            cost = f"cost {st.plan.cost:,.0f}: " if st.plan.cost is not None else ""
            print_wrapped(f"plan: {cost}{st.plan.summary}", indent=INDENT)
        else:
            print_wrapped(f"plan skipped: {st.plan.reason}", style="yellow", indent=INDENT)
