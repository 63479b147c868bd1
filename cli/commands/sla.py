"""`perfops sla ...`: SLO evaluation and escalation (flows evaluate_slos, acknowledge_alert)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.support import (
    JsonFlag,
    PrometheusUrlOption,
    VerboseFlag,
    env_option,
    fail,
    print_json,
    print_wrapped,
    run_flow,
    set_env,
)
from perfops.redaction import redact

app = typer.Typer(no_args_is_help=True)

DEFINITIONS_HELP = "SLA definitions YAML (SLOs, alert rules, escalation, silences)."
DEFAULT_DEFINITIONS = Path(__file__).resolve().parents[2] / "deployments" / "slos.yaml"
DefinitionsOption = Annotated[
    Path,
    env_option("PERFOPS_SLA_DEFINITIONS", DEFINITIONS_HELP, "--definitions", show_default=True),
]
RedisOption = Annotated[
    str | None,
    env_option(
        "PERFOPS_REDIS_URL", "Redis holding incident state and the notice log.", "--redis-url"
    ),
]
SlackUrlOption = Annotated[
    str | None,
    env_option(
        "PERFOPS_SLACK_API_URL",
        "Slack Web API base URL (token only from PERFOPS_SLACK_TOKEN); without a token, notices "
        "go to out/slack/messages.jsonl.",
        "--slack-api-url",
    ),
]
_COLOURS = {"ok": "green", "firing": "red", "no data": "yellow", "no baseline": "cyan"}


def _at_option(help_text: str) -> Any:
    """`--at`: a UTC time in one of the accepted formats; default now."""
    return typer.Option(
        help=f"{help_text}; default now.",
        formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"],
        show_default=False,
    )


@app.callback()
def sla() -> None:
    """SLOs: burn-rate alerts, alert rules, escalation in Slack, acknowledgements."""


def _evaluate_flow() -> Any:
    from flows.evaluate_slos import evaluate_slos

    return evaluate_slos


def _ack_flow() -> Any:
    from flows.acknowledge_alert import acknowledge_alert

    return acknowledge_alert


def _check_file(path: Path) -> str:
    """Validate the definitions before Prefect starts: a wrong field fails in a second."""
    from decisions.slo_definitions import load_definitions

    if not path.is_file():
        raise typer.BadParameter(f"--definitions: no such file {path}")
    load_definitions(path)  # ConfigurationError names the line and the field
    return str(path.resolve())


@app.command()
def evaluate(
    definitions: DefinitionsOption = DEFAULT_DEFINITIONS,
    prometheus_url: PrometheusUrlOption = None,
    at: Annotated[
        datetime | None, _at_option("Evaluate at this UTC time (replay a past minute)")
    ] = None,
    notify: Annotated[
        bool, typer.Option("--notify/--no-notify", help="Send notices (--no-notify: only report).")
    ] = True,
    redis_url: RedisOption = None,
    slack_api_url: SlackUrlOption = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Evaluate every SLO (burn rates over 1h/5m, 6h/30m, 3d/6h), alert rule and degradation
    rule once, and notify/escalate what fires, exactly once per incident and level (flow
    evaluate_slos). Exit 1 when an alert is firing."""
    path = _check_file(definitions)
    set_env("PERFOPS_PROMETHEUS_URL", prometheus_url)
    set_env("PERFOPS_REDIS_URL", redis_url)
    set_env("PERFOPS_SLACK_API_URL", slack_api_url)
    report = run_flow(
        _evaluate_flow,
        {
            "definitions_path": path,
            "at": at.replace(tzinfo=UTC) if at else None,
            "notify": notify,
        },
        verbose=verbose,
        label="evaluating SLOs",
        show_progress=not as_json,
    )
    if as_json:
        print_json(report)
    else:
        print_wrapped(redact(report.summary), indent=0, style="bold")
        for s in report.statuses:
            numbers = []
            if s.sli is not None:
                numbers.append(f"SLI {s.sli:.4%}")
            if s.budget_remaining is not None:
                numbers.append(f"budget left {s.budget_remaining:.1%}")
            burns = [f"{w} {v:.1f}x" for w, v in s.burn_rates.items() if v is not None]
            if burns and s.kind == "slo":
                numbers.append("burn " + ", ".join(burns))
            print_wrapped(
                f"{s.status:<11} {s.name}: " + "; ".join(numbers),
                indent=2,
                style=_COLOURS.get(s.status),
            )
            if s.detail:
                print_wrapped(redact(s.detail), indent=4, style="dim")
        for note in report.notes:
            print_wrapped(redact(note), indent=2, style="yellow")
        for d in report.delivery.delivered if report.delivery else []:
            print_wrapped(
                f"notice {d.kind} level {d.level} -> {d.sink} {d.channel}: {d.outcome}"
                + (f" ({d.note})" if d.note else ""),
                indent=2,
            )
    if report.alerts:
        fail(f"{len(report.alerts)} alerts firing: " + ", ".join(a.key for a in report.alerts))


@app.command()
def ack(
    alert: Annotated[
        str, typer.Argument(help="Alert key (e.g. availability/page-fast), group or incident id.")
    ],
    by: Annotated[str, typer.Option(help="Who acknowledges (shown in the thread).")] = "",
    at: Annotated[
        datetime | None,
        _at_option("Acknowledge as of this UTC time (in a replay, the replayed minute)"),
    ] = None,
    definitions: DefinitionsOption = DEFAULT_DEFINITIONS,
    redis_url: RedisOption = None,
    slack_api_url: SlackUrlOption = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Acknowledge an alert: its incident stops escalating and reminding; its Slack threads
    say who acknowledged it (flow acknowledge_alert)."""
    import getpass

    path = _check_file(definitions)
    set_env("PERFOPS_REDIS_URL", redis_url)
    set_env("PERFOPS_SLACK_API_URL", slack_api_url)
    result = run_flow(
        _ack_flow,
        {
            "alert": alert,
            "by": by or getpass.getuser(),
            "definitions_path": path,
            "at": at.replace(tzinfo=UTC) if at else None,
        },
        verbose=verbose,
        label="acknowledging",
        show_progress=not as_json,
    )
    if as_json:
        print_json(result)
        if result.replies_failed:
            raise typer.Exit(1)
        return
    verb = "acknowledged" if result.newly_acked else "was already acknowledged"
    print_wrapped(
        f"{result.incident} {verb} by {result.acked_by} at level {result.level} "
        f"({', '.join(result.alerts)})",
        indent=0,
    )
    for reply in result.replies:
        print_wrapped(f"thread reply: {redact(reply)}", indent=2)
    if result.replies_failed:
        fail(f"{result.replies_failed} thread replies not posted: run the same command again")
