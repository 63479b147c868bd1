"""`perfops indexes ...`: index suggestions (and, registered beside it, index health)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.commands.fleet import FleetFileOption, FleetOption, run_fleet
from cli.support import (
    ApplyFlag,
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

app = typer.Typer(help="Index suggestions and index health.", no_args_is_help=True)


def _suggest_flow() -> Any:
    from flows.suggest_indexes import suggest_indexes

    return suggest_indexes


@app.command()
def suggest(
    dsn: DsnOption = None,
    postgres_block: PostgresBlockOption = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    min_calls: Annotated[
        int, typer.Option(min=1, help="Ignore statements called fewer times.")
    ] = 10,
    min_saving: Annotated[
        float,
        typer.Option(min=0.01, max=0.99, help="Minimum cost saving per query (0.3 = 30%)."),
    ] = 0.3,
    max_per_table: Annotated[
        int, typer.Option(min=1, max=20, help="At most this many new indexes per table.")
    ] = 5,  # IndexAdvisorSettings.max_new_per_table (not imported: the CLI starts light)
    table: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these tables (repeatable; name or schema.name). When none is a table "
            "of the database, the run fails naming them."
        ),
    ] = None,
    exclude_table: Annotated[
        list[str] | None, typer.Option(help="Never these tables (repeatable).")
    ] = None,
    apply: ApplyFlag = False,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Suggest indexes from pg_stat_statements, costed with hypopg on generic plans (flow
    suggest_indexes). With --apply, build them CONCURRENTLY under lock_timeout and an advisory
    lock, then verify the real plans. Exit 1 when a build failed or was not permitted (with
    --json too)."""
    from decisions.indexing import IndexAdvisorSettings

    use_dsn(dsn)
    settings = IndexAdvisorSettings(
        min_calls=min_calls,
        min_saving=min_saving,
        max_new_per_table=max_per_table,
        include_tables=table or [],
        exclude_tables=exclude_table or [],
    )
    if fleet:
        run_fleet(
            _suggest_flow,
            {"settings": settings, "apply": apply},
            fleet=fleet,
            fleet_file=fleet_file,
            single={"--dsn": dsn, "--postgres-block": postgres_block},
            label="index suggestions",
            artifact_key="perfops-index-suggestions-fleet",
            as_json=as_json,
            verbose=verbose,
        )
        return
    report = run_flow(
        _suggest_flow,
        {"postgres_block": postgres_block, "settings": settings, "apply": apply},
        verbose=verbose,
        label="suggesting indexes",
        show_progress=not as_json,
    )
    if as_json:
        print_json(report)
    else:
        _print(report)
    if any(b.status == "failed" for b in report.builds):  # with --json too
        raise typer.Exit(1)


def _print(report: Any) -> None:
    from decisions.index_suggestions import nothing_suggested

    out.print(
        f"[bold]index suggestions[/] for {report.database}: "
        f"{report.statements_considered} statements considered, "
        f"{len(report.skipped)} skipped, {len(report.rejected)} candidates rejected"
    )
    if report.unknown:
        print_wrapped(report.unknown, indent=2, style="yellow")
    if report.hidden:
        print_wrapped(report.hidden.warning, indent=2, style="yellow")
    if not report.suggestions:
        print_wrapped(nothing_suggested(report), indent=2)
    builds = {b.key: b for b in report.builds}
    for s in report.suggestions:
        out.print(f"\n  [green]{s.ddl}[/]")
        out.print(
            f"    helps {len(s.queries)} statement(s), {s.calls:,} calls, "
            f"est. {s.est_time_saved_ms:,.0f} ms saved, size ~{s.size_bytes / 1e6:.1f} MB"
        )
        for q in s.queries[:3]:
            out.print(
                f"    cost {q['cost_before']:,.0f} -> {q['cost_after']:,.0f}: {q['query'][:70]}",
                highlight=False,
            )
        build = builds.get(s.key or f"{s.table}({', '.join(s.columns)})")
        if build:
            colour = "green" if build.status == "created" else "red"
            out.print(f"    [{colour}]{build.status}[/]: {build.detail}")
    if report.rejected:
        out.print("\n  rejected:")
        for r in report.rejected[:15]:
            out.print(f"    {r.candidate.key}: {r.reason}", highlight=False)
    if report.suggestions and not report.applied:
        out.print("\n  dry run: nothing was built; rerun with --apply to build these indexes")
