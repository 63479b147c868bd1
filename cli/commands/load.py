"""`perfops load ...`: load tests against a baseline (flow run_load_test, docs/load-tests.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.support import (
    DsnOption,
    JsonFlag,
    PostgresBlockOption,
    VerboseFlag,
    env_option,
    fail,
    print_json,
    print_wrapped,
    run_flow,
    use_dsn,
)
from perfops.errors import ConfigurationError
from perfops.redaction import redact

app = typer.Typer(no_args_is_help=True)

TargetBlockOption = Annotated[
    str | None,
    env_option(
        "PERFOPS_LOAD_TARGET_BLOCK",
        "Name of a saved perfops-load-target block (allow-list, caps, auth header).",
    ),
]
TargetUrlOption = Annotated[
    str | None,
    env_option(
        "PERFOPS_LOAD_TARGET_URL",
        "Instead of a block: a local target's base URL (127.0.0.1 or localhost only). Given on "
        "the command line it wins over PERFOPS_LOAD_TARGET_BLOCK; with --target-block it is "
        "refused.",
    ),
]
TestsFileOption = Annotated[
    Path | None,
    env_option(
        "PERFOPS_LOAD_TESTS_FILE", "The load tests file (default deployments/load_tests.yaml)."
    ),
]
_COLOURS = {"met": "green", "measured": None, "missed": "red", "regressed": "red"}


@app.callback()
def load() -> None:
    """Load tests: open-model load, HDR percentiles, criteria, baselines and history."""


def _flow() -> Any:
    from flows.run_load_test import run_load_test

    return run_load_test


def _tests_file_hint(ctx: typer.Context) -> str:
    """What named the tests file: the variable it came from, else --tests-file (or its default)."""
    from typer._click.core import ParameterSource

    from_env = ctx.get_parameter_source("tests_file") == ParameterSource.ENVIRONMENT
    return "PERFOPS_LOAD_TESTS_FILE" if from_env else "--tests-file"


def _given(ctx: typer.Context, parameter: str, value: str | None) -> str | None:
    """`value` when the command line gave it, None when it came from the environment."""
    from typer._click.core import ParameterSource

    from_env = ctx.get_parameter_source(parameter) == ParameterSource.ENVIRONMENT
    return None if from_env else value


@app.command()
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A test of the tests file, e.g. platform-api.")],
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="After the run, establish a new baseline from the last good runs (this one "
            "included when it is good).",
        ),
    ] = False,
    shares: Annotated[
        int,
        typer.Option(
            min=1, max=16, help="Split the load into N child runs, each in its own process."
        ),
    ] = 1,
    spread: Annotated[
        bool,
        typer.Option(
            "--spread",
            help="Shares 2..N as runs of the run_load_share deployment, taken by any worker of "
            "its pool (other machines); without that deployment on the server (PREFECT_API_URL), "
            "every share runs here.",
        ),
    ] = False,
    target_block: TargetBlockOption = None,
    target_url: TargetUrlOption = None,
    tests_file: TestsFileOption = None,
    dsn: DsnOption = None,
    postgres_block: PostgresBlockOption = None,
    no_history: Annotated[
        bool, typer.Option("--no-history", help="Keep no history and compare with nothing.")
    ] = False,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Run load test NAME against the allow-listed target and judge it: percentiles per
    endpoint, criteria, comparison with the baseline. Exit 1 when a criterion was missed, the
    test aborted or an endpoint regressed."""
    from decisions.load_scenarios import load_tests
    from perfops.settings import get_settings

    # What the command line names is explicit and wins over the environment (blocks/resolve.py);
    # what came from PERFOPS_LOAD_TARGET_* the flow reads from the environment itself
    target_block = _given(ctx, "target_block", target_block)
    target_url = _given(ctx, "target_url", target_url)
    path = tests_file or get_settings().load_tests_file
    # Bad usage (exit 2, one line, before Prefect starts), as for every command: a tests file
    # that cannot be read or is malformed, a test it does not define, a --target-url that is no
    # loopback server or is named beside --target-block. Exit 1 stays the test's own outcome.
    try:
        tests = load_tests(path)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint=_tests_file_hint(ctx)) from None
    try:
        tests.get(name)
    except ConfigurationError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    if target_url:
        from blocks.resolve import resolve_load_target

        try:
            resolve_load_target(target_block, url=target_url)
        except ConfigurationError as exc:
            raise typer.BadParameter(str(exc), param_hint="--target-url") from None
    use_dsn(dsn)
    report = run_flow(
        _flow,
        {
            "name": name,
            "target_block": target_block,
            "target_url": target_url,
            "postgres_block": postgres_block,
            "tests_file": str(path),
            "baseline": baseline,
            "shares": shares,
            "spread": spread,
            "keep_history": not no_history,
        },
        verbose=verbose,
        label=f"load test {name}",
        show_progress=not as_json,
    )
    if as_json:
        print_json(report.model_dump(mode="json", exclude={"timeline"}))
    else:
        _print_report(report)
    if report.failure:
        fail(f"{report.failure} (artifact perfops-load-{report.test})")


def _print_report(report: Any) -> None:
    print_wrapped(f"load test {report.test} against {report.target}", indent=0, style="bold")
    print_wrapped(report.summary, indent=2)
    print_wrapped(
        f"{'endpoint':<26}{'requests':>9}{'rps':>7}{'p50':>7}{'p95':>7}{'p99':>7}{'max ms':>8}"
        f"{'errors':>7}",
        indent=2,
        style="dim",
    )

    def ms(value: float | None) -> str:
        return (
            f"{value:,.0f}"
            if value is not None and value >= 100
            else (f"{value:.1f}" if value is not None else "-")
        )

    for s in report.endpoints:
        print_wrapped(
            f"{s.name[:25]:<26}{s.requests:>9,}{s.rps:>7,.0f}{ms(s.p50_ms):>7}{ms(s.p95_ms):>7}"
            f"{ms(s.p99_ms):>7}{ms(s.max_ms):>8}{s.error_rate:>7.1%}",
            indent=2,
        )
        if s.errors_by_cause:
            causes = ", ".join(f"{n} {cause}" for cause, n in s.errors_by_cause.items())
            print_wrapped(f"errors: {causes}", indent=4, style="yellow")
    for c in report.criteria:
        print_wrapped(
            f"{'met' if c.passed else 'missed'}: {c.endpoint} {c.reason}",
            indent=2,
            style="green" if c.passed else "red",
        )
    for c in report.comparisons:
        style = "red" if c.result == "regressed" else None
        print_wrapped(f"{c.result}: {c.endpoint} {c.reason}", indent=2, style=style)
    if report.baseline:
        print_wrapped(report.baseline, indent=2, style="dim")
    for r in report.share_runs:
        late = f"began {r.start_late_s:.1f} s late" if r.late else "on time"
        print_wrapped(
            f"share {r.share} of {r.shares}: {r.where} on {r.ran_on or '?'}, {late}, "
            f"sent {r.sent:,} of {r.asked:,}",
            indent=2,
            style="yellow" if r.late else "dim",
        )
    if report.apart:
        print_wrapped(report.apart, indent=2, style="red")
    if report.late_sends:
        print_wrapped(
            f"{report.late_sends:,} requests left more than 10 ms after their intended start "
            f"(worst {report.send_lag_max_ms:,.0f} ms): their wait is in their latency",
            indent=2,
            style="dim",
        )


@app.command()
def history(
    name: Annotated[str | None, typer.Argument(help="Only this test.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Newest runs to show.")] = 20,
    target: Annotated[
        str | None,
        typer.Option(
            "--target", help="Only runs against this base URL (the target a baseline is kept for)."
        ),
    ] = None,
    dsn: DsnOption = None,
    postgres_block: PostgresBlockOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The newest load test runs kept in PostgreSQL (perfops.load_test_runs), newest first."""
    import psycopg

    from blocks.resolve import resolve_postgres
    from tasks.postgres.load_runs import read_load_runs

    use_dsn(dsn)
    history_db = resolve_postgres(postgres_block).value
    try:
        records = read_load_runs.fn(history_db, name, limit, load_target=target)
    except psycopg.errors.UndefinedTable:
        records = []
    if as_json:
        print_json([r.model_dump(mode="json") for r in records])
        return
    if not records:
        print_wrapped(
            "no load test runs recorded"
            + (f" for {name}" if name else "")
            + (f" against {target}" if target else ""),
            indent=0,
        )
        return
    for r in records:
        state = (
            "aborted"
            if r.aborted
            else "regressed"
            if r.regressed
            else "passed"
            if r.passed
            else "failed"
        )
        overall = r.endpoints.get("all")
        p95 = f"p95 {overall.p95_ms:,.1f} ms" if overall and overall.p95_ms is not None else ""
        errors = f"errors {overall.error_rate:.2%}" if overall else ""
        print_wrapped(
            redact(
                f"{r.started_at:%Y-%m-%d %H:%M:%S} {r.test} {state}: {r.achieved_rps:,.1f} of "
                f"{r.asked_rps:,.1f} rps, {p95}, {errors} ({r.target})"
            ),
            indent=0,
            style="red" if state != "passed" else None,
        )


@app.command("list")
def list_tests(tests_file: TestsFileOption = None) -> None:
    """The tests of the tests file: name, pattern, duration."""
    from decisions.load_scenarios import load_tests
    from perfops.settings import get_settings

    for t in load_tests(tests_file or get_settings().load_tests_file).tests:
        p = t.pattern
        level = f"{p.rps:g} rps" if p.open_model else f"{p.vus} vus"
        print_wrapped(f"{t.name}: {p.kind} {level}, {t.seconds:g} s. {t.description}", indent=0)
