"""The `perfops` command line: one subcommand per flow, each runnable locally with connection
settings from flags, `PERFOPS_*` variables or saved blocks.

Exit codes: 0 done, 1 failed (one line on stderr says why), 2 bad usage.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

# typer (0.20+) vendors click; its exception classes are the ones raised here.
from typer._click.core import Command as click_command
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from cli.commands import cache, fleet, indexes, partitions, queries, scaling, sla, stats
from cli.commands import load as load_commands
from cli.commands import report as report_commands
from cli.commands import server as server_commands
from cli.commands.deploy import deploy as deploy_command
from cli.commands.indexes_health import health as index_health
from cli.support import (
    JsonFlag,
    PrometheusUrlOption,
    VerboseFlag,
    check_dsn,
    env_option,
    err,
    local_server,
    out,
    perfops_settings,
    progress_reporter,
    quiet_prefect_console,
    set_env,
    use_prefect_server,
)
from perfops import __version__
from perfops.errors import PerfopsError
from perfops.redaction import redact
from perfops.settings import apply_prefect_defaults

app = typer.Typer(
    name="perfops",
    help=(
        "Automation that keeps the platform fast: PostgreSQL advice, scaling, SLAs, reports and "
        "caches, as Prefect flows.\n\nEvery connection comes from a flag, a PERFOPS_* variable or "
        "a saved Prefect block (--*-block NAME); with none, perfops uses its embedded defaults "
        "(local PostgreSQL, a CSV trace, files under out/). See README.md."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
blocks_app = typer.Typer(help="Manage perfops' Prefect block types.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")
app.add_typer(indexes.app, name="indexes")
indexes.app.command("health")(index_health)
app.add_typer(queries.app, name="queries")
app.add_typer(stats.app, name="stats")
app.add_typer(fleet.app, name="fleet")
app.add_typer(report_commands.app, name="report")
app.add_typer(partitions.app, name="partitions")
app.add_typer(sla.app, name="sla")
app.add_typer(scaling.app, name="scaling")
app.add_typer(cache.app, name="cache")
app.add_typer(load_commands.app, name="load")
app.add_typer(server_commands.app, name="server")
app.command("deploy")(deploy_command)


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"perfops {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """perfops command line."""


@app.command()
def doctor(
    dsn: Annotated[
        str | None, env_option("PERFOPS_DSN", "PostgreSQL DSN (libpq string or URI).")
    ] = None,
    postgres_block: Annotated[
        str | None, typer.Option(help="perfops-postgres-target block name.")
    ] = None,
    prometheus_url: PrometheusUrlOption = None,
    prometheus_block: Annotated[
        str | None, typer.Option(help="perfops-prometheus-source block name.")
    ] = None,
    redis_url: Annotated[str | None, env_option("PERFOPS_REDIS_URL", "Redis URL.")] = None,
    redis_block: Annotated[
        str | None, typer.Option(help="perfops-redis-target block name.")
    ] = None,
    s3_bucket: Annotated[
        str | None,
        env_option(
            "PERFOPS_S3_BUCKET", "S3 bucket for archives (AWS credentials from the usual chain)."
        ),
    ] = None,
    s3_endpoint_url: Annotated[
        str | None, env_option("PERFOPS_S3_ENDPOINT_URL", "S3-compatible endpoint URL.")
    ] = None,
    s3_block: Annotated[str | None, typer.Option(help="prefect-aws s3-bucket block name.")] = None,
    slack_api_url: Annotated[
        str | None,
        env_option(
            "PERFOPS_SLACK_API_URL", "Slack Web API base URL (token only from PERFOPS_SLACK_TOKEN)."
        ),
    ] = None,
    slack_block: Annotated[
        str | None, typer.Option(help="perfops-slack-escalation-target block name.")
    ] = None,
    smtp_host: Annotated[str | None, env_option("PERFOPS_SMTP_HOST", "SMTP server host.")] = None,
    smtp_port: Annotated[
        int | None, env_option("PERFOPS_SMTP_PORT", "SMTP server port.", min=1, max=65535)
    ] = None,
    email_block: Annotated[
        str | None, typer.Option(help="prefect-email email-server-credentials block name.")
    ] = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Check every configured system: real or embedded default, reachable, version, what is
    missing and the command that fixes it (flow check_connections). Exit 1 if one is unreachable."""
    check_dsn(dsn)
    for name, value in (
        ("PERFOPS_DSN", dsn),
        ("PERFOPS_PROMETHEUS_URL", prometheus_url),
        ("PERFOPS_REDIS_URL", redis_url),
        ("PERFOPS_S3_BUCKET", s3_bucket),
        ("PERFOPS_S3_ENDPOINT_URL", s3_endpoint_url),
        ("PERFOPS_SLACK_API_URL", slack_api_url),
        ("PERFOPS_SMTP_HOST", smtp_host),
        ("PERFOPS_SMTP_PORT", smtp_port),
    ):
        set_env(name, value)
    apply_prefect_defaults()
    quiet_prefect_console(verbose)
    with progress_reporter(not as_json) as progress:
        use_prefect_server(progress)
        progress("checking connections (starting Prefect)", 0, 1)
        from flows.check_connections import ConnectionsUnreachable, check_connections

        state = check_connections(
            postgres_block=postgres_block,
            prometheus_block=prometheus_block,
            redis_block=redis_block,
            s3_block=s3_block,
            slack_block=slack_block,
            email_block=email_block,
            return_state=True,
        )
        result = state.result(raise_on_failure=False)
    checks = result.checks if isinstance(result, ConnectionsUnreachable) else result
    if isinstance(checks, BaseException):
        raise checks
    rows = [c.model_dump() for c in checks]
    if as_json:
        out.print_json(redact(json.dumps({"flow_run_state": state.name, "systems": rows})))
    else:
        colours = {"ok": "green", "degraded": "yellow", "unreachable": "red"}
        for c in checks:
            out.print(
                f"[bold]{c.system:<9}[/][{colours[c.status]}]{c.status:<12}[/]"
                f"{c.origin:<17}{redact(c.target)}",
                highlight=False,
            )
            line = " ".join(x for x in (c.version, c.detail) if x)
            if line:
                out.print(f"{'':9}{redact(line)}", highlight=False, soft_wrap=True)
            for f in c.findings:
                if f.what != c.detail:
                    out.print(f"{'':9}[yellow]missing:[/] {redact(f.what)}", highlight=False)
                if f.fix:
                    out.print(f"{'':9}[cyan]fix:[/] {redact(f.fix)}", highlight=False)
    if isinstance(result, ConnectionsUnreachable):
        raise PerfopsError(str(result))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo's files.")] = Path(
        "out"
    ),
    demo_dsn: Annotated[
        str | None,
        typer.Option(
            envvar="PERFOPS_DEMO_DSN",
            show_envvar=True,
            help="Server for the demo database (default: local PostgreSQL, else a "
            "private cluster).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Run the main job end to end: create the demo database and workload, run every perfops
    flow once through Prefect against it and the embedded defaults, and summarise."""
    check_dsn(demo_dsn, "--demo-dsn")
    out_dir = out_dir.resolve()
    if not perfops_settings().local_server and not os.environ.get("PREFECT_API_URL"):
        # A throwaway server per run; its database kept with the demo's files.
        os.environ.setdefault("PREFECT_HOME", str(out_dir / "prefect"))
    apply_prefect_defaults()
    quiet_prefect_console(verbose)
    with progress_reporter(not as_json) as progress:
        use_prefect_server(progress)  # the local server, shared with every other command
        from demo.run import run_demo

        summary = run_demo(out_dir, demo_dsn, progress)
    if as_json:
        out.print_json(redact(json.dumps(asdict(summary), default=str)))
        return
    out.print(
        f"[bold]perfops demo[/] - database [cyan]{summary.database}[/] "
        f"({summary.database_origin}); {summary.prefect}"
    )
    w = summary.workload
    loaded = "loaded" if w.loaded else "already loaded"
    out.print(
        f"  workload {loaded}: "
        + ", ".join(f"{t} {n:,}" for t, n in w.rows.items())
        + (f"; ran {w.statements_run} API queries" if w.statements_run else "")
    )
    out.print("  extensions: " + ", ".join(f"{k} {v}" for k, v in summary.extensions.items()))
    for f in summary.flows:
        out.print(
            f"  [bold]{f.flow}[/] [{'green' if f.state == 'Completed' else 'red'}]"
            f"{f.state}[/]: {f.found}"
        )
        out.print(
            f"    artifact: {f.artifact} (Prefect UI, or `prefect artifact inspect {f.artifact}`)"
        )
        for path in f.files:
            out.print(f"    files: {path}")
    out.print(
        f"  embedded defaults in use: CSV trace metrics, archive folder, Slack and email "
        f"as files under {summary.out_dir}"
    )
    local = local_server()
    if os.environ.get("PREFECT_API_URL") == local.api_url:
        out.print(f"  Prefect UI (the local server, `perfops server status`): {local.url}")


@blocks_app.command("register")
def blocks_register() -> None:
    """Register perfops' block types (same as `prefect block register -m blocks`)."""
    use_prefect_server()
    from prefect.blocks.core import Block

    import blocks as module

    registered = []
    for name in module.__all__:
        block_cls = getattr(module, name)
        if isinstance(block_cls, type) and issubclass(block_cls, Block):
            block_cls.register_type_and_schema()
            registered.append(block_cls.get_block_type_slug())
    out.print("registered: " + ", ".join(registered))


_command: list[click_command] = []


def cli_command() -> click_command:
    """The click command tree of `app` (built once: ~0.2 s; a warm process builds it ahead)."""
    if not _command:
        _command.append(typer.main.get_command(app))
    return _command[0]


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map failures to one line and an exit code."""
    command = cli_command()
    try:
        result = command.main(args=argv, prog_name="perfops", standalone_mode=False)
    except typer.Abort:
        err.print("perfops: aborted")
        return 130
    except NoArgsIsHelpError as exc:
        if exc.ctx is not None:
            print(exc.ctx.get_help())
        return 0
    except UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"perfops: error: {redact(exc.format_message())}{hint}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code)
    except PerfopsError as exc:
        if os.environ.get("PERFOPS_DEBUG"):
            # the traceback README promises, passed through redaction like every other line
            print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
        print(f"perfops: {redact(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("PERFOPS_DEBUG"):
            raise
        print(
            f"perfops: unexpected {type(exc).__name__}: {redact(str(exc))} "
            "(set PERFOPS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return int(result) if isinstance(result, int) else 0


def entrypoint() -> None:
    # At exit, keep the objects Prefect and pydantic created out of the interpreter's final
    # garbage collections: about 0.4 s of a 3 s command here. Nothing is lost: Prefect's own exit
    # handlers still drain its log and event queues.
    atexit.register(gc.freeze)
    sys.exit(main())
