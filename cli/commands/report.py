"""`perfops report ...`: the weekly performance report (flow generate_weekly_report)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands.fleet import FleetFileOption, FleetOption, selected, selection_refused
from cli.support import (
    JsonFlag,
    VerboseFlag,
    env_option,
    fail,
    print_json,
    print_wrapped,
    run_flow,
    set_env,
)
from perfops.errors import ConfigurationError, PerfopsError
from perfops.redaction import redact

app = typer.Typer(help="Performance reports.", no_args_is_help=True)


def _flow() -> Any:
    from flows.generate_weekly_report import generate_weekly_report

    return generate_weekly_report


def _week(value: str | None) -> str | None:
    if value is None:
        return None
    from decisions.reporting import parse_week  # pandas: only for this command

    try:
        return parse_week(value, datetime.now(UTC)).label
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--week") from None


def _fleet(ctx: typer.Context, fleet: str | None, fleet_file: Path | None) -> str | None:
    """`--fleet NAME` checked against the fleet file before Prefect starts (exit 2 when it selects
    nothing); `--fleet-file` typed without `--fleet` is refused (from PERFOPS_FLEET_FILE it is
    only the default)."""
    if not fleet:
        source = ctx.get_parameter_source("fleet_file")  # typer's own click: compare names
        if source is not None and source.name == "COMMANDLINE":
            raise typer.BadParameter(
                "--fleet-file only says where the fleet of --fleet is defined: add --fleet NAME "
                "(a fleet, 'all', a label key=value or a target) for the report's Fleet section",
                param_hint="--fleet-file",
            )
        return None
    from decisions.report_fleet import reported_targets

    try:
        _, chosen, _ = selected(fleet, fleet_file, discovered=False)  # as every --fleet command
        if chosen:  # none yet: a fleet discovered on the server, checked by the flow
            reported_targets(chosen, fleet)  # caches alone: nothing for the Fleet section
    except ConfigurationError as exc:
        raise selection_refused(exc) from None
    return fleet


@app.command("weekly")
def weekly(
    ctx: typer.Context,
    week: Annotated[
        str | None,
        typer.Option(
            help="ISO week to report, like 2026-W47 (default: the last complete week, UTC).",
            show_default=False,
        ),
    ] = None,
    to: Annotated[
        list[str] | None,
        typer.Option(
            "--to",
            help="Email the report to this address (repeatable; one address each, like "
            "sre@example.com, with or without a display name). Default: `recipients` in the "
            "configuration; with none the report is archived, not sent, and the command "
            "exits 1.",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also write a browsable copy to DIR/WEEK/index.html (charts and data beside).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        env_option(
            "PERFOPS_REPORT_CONFIG", "Targets and PromQL (default deployments/report.yaml)."
        ),
    ] = None,
    prometheus_url: Annotated[
        str | None,
        env_option(
            "PERFOPS_PROMETHEUS_URL",
            "Prometheus base URL (without one, the metrics sections say they are missing).",
        ),
    ] = None,
    prometheus_block: Annotated[
        str | None,
        env_option("PERFOPS_PROMETHEUS_BLOCK", "perfops-prometheus-source block name."),
    ] = None,
    s3_block: Annotated[
        str | None,
        env_option(
            "PERFOPS_S3_BLOCK",
            "prefect-aws s3-bucket block for the archive (default: PERFOPS_S3_BUCKET, else the "
            "folder out/archive).",
        ),
    ] = None,
    email_block: Annotated[
        str | None,
        env_option(
            "PERFOPS_EMAIL_BLOCK",
            "prefect-email email-server-credentials block (default: PERFOPS_SMTP_HOST, else .eml "
            "files in out/mail).",
        ),
    ] = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    replace_archive: Annotated[
        bool,
        typer.Option(
            "--replace-archive",
            help="Replace the report already archived for the week. Without it that report "
            "is kept (a rerun of an old week, its events trimmed by Prefect's retention, is "
            "poorer), this one is emailed but not archived, and the output says so. With it the "
            "new report is written, then the earlier report's files it does not have (e.g. "
            "data/fleet.csv) are deleted, verified against the new manifest.",
        ),
    ] = False,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Build the week's performance report (targets met/missed, week over week, per-endpoint
    latency, throughput and errors, availability and error budget, resources, and what perfops
    recorded), archive it, and email it (flow generate_weekly_report). With --fleet, one report
    with a Fleet section: one row per target, worst first (docs/fleet.md). Exit 1, the report
    archived and recorded all the same, when no target could be scored, a section is missing
    (Prometheus did not answer a query), there are no recipients, a recipient was refused, the
    email could not be sent, the archive refused the report, a fleet target could not be
    read, or the --out copy could not be written; exit 1 before any work when a block name
    names no saved block; exit 2 (bad usage) when a --to is not one address."""
    label = _week(week)
    if to:  # a bad flag value: exit 2 before Prefect starts (the flow checks them again)
        from decisions.recipients import check_recipients

        try:
            check_recipients(to, "--to")
        except ConfigurationError as exc:
            raise typer.BadParameter(str(exc).removeprefix("--to: "), param_hint="--to") from None
    selection = _fleet(ctx, fleet, fleet_file)
    set_env("PERFOPS_PROMETHEUS_URL", prometheus_url)
    failure: str | None = None
    try:
        result = run_flow(
            _flow,
            {
                "week": label,
                "recipients": to or None,
                "out_dir": str(out_dir.resolve()) if out_dir else None,
                "config_path": str(config) if config else None,
                "prometheus_block": prometheus_block,
                "s3_block": s3_block,
                "email_block": email_block,
                "targets": selection,
                "fleet_file": str(fleet_file) if selection and fleet_file else None,
                "replace_archive": replace_archive,
            },
            verbose=verbose,
            label="building the weekly report",
            show_progress=not as_json,
        )
    except PerfopsError as exc:  # archived but incomplete or unsent: shown, then exit 1
        if getattr(exc, "result", None) is None:
            raise
        result, failure = exc.result, str(exc)  # type: ignore[attr-defined]
    if as_json:
        print_json(result)
    else:
        _print(result)
    if failure:
        fail(failure)


def _print(result: Any) -> None:
    """The report's headline, things to look at, what is missing, where it is, its fleet."""
    print_wrapped(redact(f"weekly report {result.headline}"), indent=0, style="bold")
    for n, thing in enumerate(result.things, 1):
        print_wrapped(redact(f"{n}. {thing}"), indent=2)
    for section, why in result.missing_sections.items():
        print_wrapped(redact(f"missing {section}: {why}"), indent=2, style="yellow")
    if result.archive_action != "write":  # kept, replaced or refused: say what was done
        style = {"keep": "yellow", "failed": "red"}.get(result.archive_action)
        print_wrapped(redact(result.archive_note), indent=2, style=style)
    else:
        print_wrapped(redact(f"archived: {result.archive}"), indent=2)
    if result.folder:
        print_wrapped(redact(f"open in a browser: {Path(result.folder).as_uri()}"), indent=2)
    print_wrapped(redact(f"email: {result.delivery}"), indent=2)
    for n, row in enumerate(result.fleet, 1):
        style = {"unreachable": "red", "attention": "yellow"}.get(row["result"])
        print_wrapped(redact(f"{n}. {row['target']}: {row['result']}"), indent=2, style=style)
        print_wrapped(redact(row["reason"]), indent=5, style="dim")
