"""`perfops stats ...`: planner statistics (flow refresh_stale_statistics)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cli.commands.fleet import FleetFileOption, FleetOption, run_fleet
from cli.support import (
    DsnOption,
    JsonFlag,
    PostgresBlockOption,
    VerboseFlag,
    fail,
    print_json,
    print_wrapped,
    run_flow,
    use_dsn,
)
from decisions.staleness import (
    DEFAULT_ANALYZE_THRESHOLD,
    DEFAULT_LOCK_TIMEOUT_MS,
    DEFAULT_PARALLELISM,
    DEFAULT_STATEMENT_TIMEOUT_MS,
    StatisticsPolicy,
)
from perfops.redaction import redact

app = typer.Typer(no_args_is_help=True)


@app.callback()
def stats() -> None:
    """Planner statistics: find the stale ones and refresh them."""


# Flag names for the policy fields, so a bad value names the flag the user typed.
_FLAGS = {
    "analyze_threshold": "--threshold",
    "parallelism": "--parallel",
    "lock_timeout_ms": "--lock-timeout-ms",
    "statement_timeout_ms": "--statement-timeout-ms",
    "vacuum_dead_ratio": "--vacuum-dead-ratio",
    "max_tables": "--max-tables",
    "min_rows": "--min-rows",
}
SHOWN_ROWS = 30
_COLOURS: dict[str, str] = {
    "analyzed": "green",
    "vacuumed and analyzed": "green",
    "would analyze": "cyan",
    "would vacuum and analyze": "cyan",
    "failed": "red",
    "missing": "yellow",
}


def _refresh_flow() -> Any:
    from flows.refresh_stale_statistics import refresh_stale_statistics

    return refresh_stale_statistics


def _policy(**values: Any) -> StatisticsPolicy:
    try:
        return StatisticsPolicy(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        raise typer.BadParameter(
            f"{_FLAGS.get(field, field)}: {first['msg']} (got {first.get('input')!r})"
        ) from None


@app.command()
def refresh(
    dsn: DsnOption = None,
    postgres_block: PostgresBlockOption = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    threshold: Annotated[
        float,
        typer.Option(
            max=1.0,
            help="ANALYZE a table when rows changed since its last analyze reach this fraction "
            "of its rows (0.1 = 10%, above 0); never-analyzed tables always.",
        ),
    ] = DEFAULT_ANALYZE_THRESHOLD,
    parallel: Annotated[
        int,
        typer.Option(min=1, max=8, help="Tables analyzed at once, each on its own connection."),
    ] = DEFAULT_PARALLELISM,
    lock_timeout_ms: Annotated[
        int,
        typer.Option(
            min=1,
            max=600_000,
            help="Per table: give up on a table locked by another session after this long, "
            "report it and go on.",
        ),
    ] = DEFAULT_LOCK_TIMEOUT_MS,
    statement_timeout_ms: Annotated[
        int,
        typer.Option(
            min=1_000,
            max=86_400_000,
            help="Per table: stop an ANALYZE/VACUUM that runs longer than this.",
        ),
    ] = DEFAULT_STATEMENT_TIMEOUT_MS,
    vacuum_dead_ratio: Annotated[
        float | None,
        typer.Option(
            max=1.0,
            help="Also VACUUM (ANALYZE) tables whose dead tuples reach this fraction of all "
            "tuples (e.g. 0.2, above 0). Default: ANALYZE only.",
            show_default=False,
        ),
    ] = None,
    schema: Annotated[
        list[str] | None, typer.Option(help="Only these schemas (repeatable).")
    ] = None,
    exclude_schema: Annotated[
        list[str] | None, typer.Option(help="Never these schemas (repeatable).")
    ] = None,
    table: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these tables: schema.table, a table name in any schema, or a glob like "
            "sales.* (repeatable). When none matches a table, the run fails naming them."
        ),
    ] = None,
    exclude_table: Annotated[
        list[str] | None,
        typer.Option(help="Never these tables (schema.table, a table name, or a glob)."),
    ] = None,
    max_tables: Annotated[
        int | None,
        typer.Option(min=1, help="At most this many tables, most stale first.", show_default=False),
    ] = None,
    min_rows: Annotated[
        int, typer.Option(min=0, help="Leave tables with fewer estimated rows alone.")
    ] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be analyzed, and why.")
    ] = False,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """ANALYZE every table whose statistics are stale, most stale first, on --parallel
    connections, each statement under its own lock_timeout (flow refresh_stale_statistics).
    Exit 1 when a table failed (the others are still analyzed)."""
    policy = _policy(
        analyze_threshold=threshold,
        parallelism=parallel,
        lock_timeout_ms=lock_timeout_ms,
        statement_timeout_ms=statement_timeout_ms,
        vacuum_dead_ratio=vacuum_dead_ratio,
        include_schemas=schema or None,
        exclude_schemas=exclude_schema or [],
        include_tables=table or None,
        exclude_tables=exclude_table or [],
        max_tables=max_tables,
        min_rows=min_rows,
    )
    if fleet:
        run_fleet(
            _refresh_flow,
            {"policy": policy, "dry_run": dry_run},
            fleet=fleet,
            fleet_file=fleet_file,
            single={"--dsn": dsn, "--postgres-block": postgres_block},
            label="statistics refresh",
            artifact_key="perfops-stats-refresh-fleet",
            as_json=as_json,
            verbose=verbose,
        )
        return
    use_dsn(dsn)
    report = run_flow(
        _refresh_flow,
        {"postgres_block": postgres_block, "policy": policy, "dry_run": dry_run},
        verbose=verbose,
        label="refreshing statistics" if not dry_run else "finding stale statistics",
        show_progress=not as_json,
    )
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    if report.failed:
        names = ", ".join(report.failed_tables[:3])
        more = f" and {report.failed - 3} more" if report.failed > 3 else ""
        fail(
            f"{report.failed} of {report.analyzed + report.failed} tables failed: {names}{more} "
            f"({report.privileges or 'the others were analyzed'}; artifact perfops-stats-refresh)"
        )


def _print(text: str, *, indent: int = 2, style: str | None = None) -> None:
    """One item of human output, redacted, wrapped and markup-escaped (a table may be called
    `[bold]x`)."""
    print_wrapped(redact(text), indent=indent, style=style)


def _print_report(report: Any) -> None:
    _print(f"statistics on {report.target}", indent=0, style="bold")
    _print(f"{report.summary} in {report.seconds:.1f} s")
    if report.unmatched:
        _print(report.unmatched, style="yellow")
    acted = [t for t in report.tables if t.result != "skipped"]
    for t in acted[:SHOWN_ROWS]:
        ms = f" {t.duration_ms:,.0f} ms" if t.duration_ms is not None else ""
        detail = t.error if t.result in ("failed", "missing") else t.reason
        _print(f"{t.result}{ms}: {t.table}", style=_COLOURS.get(t.result))
        _print(detail or "", indent=4, style="dim")
    if len(acted) > SHOWN_ROWS:
        _print(f"... {len(acted) - SHOWN_ROWS} more (--json lists every table)")
    if report.skipped:
        parts = ", ".join(f"{n:,} {code}" for code, n in sorted(report.skipped_by_reason.items()))
        _print(f"skipped {report.skipped:,}: {parts}")
    if report.dry_run and acted:
        _print("dry run: nothing was analyzed; rerun without --dry-run to analyze these")
