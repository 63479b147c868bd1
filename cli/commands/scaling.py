"""`perfops scaling ...`: predictive and scheduled capacity (flows scale_predictively,
tune_scaling and apply_scaling_schedule), the decision history, and a back-test on a trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands.fleet import FleetFileOption, FleetOption, run_fleet
from cli.support import JsonFlag, VerboseFlag, fail, print_json, print_wrapped, run_flow

# Decisions Redis keeps per group (tasks.scaling_state.HISTORY_LENGTH, not imported here: the
# command line starts without the Redis and Prefect task modules).
HISTORY_KEPT = 1000

app = typer.Typer(no_args_is_help=True)

GroupOption = Annotated[
    str,
    typer.Option(
        "--group",
        help="Auto Scaling group to decide for; with --aws its state (Redis lock, state, "
        "history, tuning) is keyed by its name behind the --region, --endpoint-url and "
        "--credentials-block given, e.g. eu-west-1/api, as a fleet target's is.",
    ),
]
GroupKeyOption = Annotated[
    str,
    typer.Option(
        "--group",
        help="The group's state key: its name, or eu-west-1/api for a group with a region "
        "(endpoint, credentials block) configured, as `decide` and a fleet target key it "
        "(`perfops fleet list` shows it).",
    ),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(help="Auto Scaling endpoint override (moto, LocalStack).", show_default=False),
]
RegionOption = Annotated[str, typer.Option(help="AWS region of the group.")]
CredentialsOption = Annotated[
    str | None,
    typer.Option(
        help="prefect-aws AwsCredentials block name (default: boto3's chain).", show_default=False
    ),
]


@app.callback()
def scaling() -> None:
    """Scaling: forecast the load, decide capacity behind guardrails, apply schedules."""


def _aws(
    group: str, aws: bool, region: str, endpoint_url: str | None, credentials_block: str | None
) -> Any:
    if not aws and endpoint_url is None and credentials_block is None:
        return None
    from tasks.autoscaling import AutoScalingTarget

    return AutoScalingTarget(
        group=group, region=region, endpoint_url=endpoint_url, credentials_block=credentials_block
    )


def _group_key(ctx: typer.Context, group: str, target: Any) -> str:
    """The state key of `decide`'s group: its name behind the region (when typed), endpoint and
    credentials block given, as a fleet target with the same settings keys it."""
    if target is None:  # a simulated group: its name
        return group
    from decisions.fleet import scaling_key

    source = ctx.get_parameter_source("region")  # typer's own click: compare names
    typed = source is not None and source.name != "DEFAULT"
    return scaling_key(
        group, target.region if typed else None, target.endpoint_url, target.credentials_block
    )


@app.command()
def decide(
    ctx: typer.Context,
    group: GroupOption = "demo",
    aws: Annotated[
        bool, typer.Option("--aws", help="Read and set a real Auto Scaling group.")
    ] = False,
    region: RegionOption = "us-east-1",
    endpoint_url: EndpointOption = None,
    credentials_block: CredentialsOption = None,
    mode: Annotated[
        str | None,
        typer.Option(help="forecast_and_scale, forecast_only or reactive (default: the policy's)."),
    ] = None,
    current: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Capacity of a simulated group (without --aws; default: what its last "
            "decide --apply set, else the policy's minimum).",
            show_default=False,
        ),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Set the capacity (default: dry run, record only).")
    ] = False,
    metrics_block: Annotated[str | None, typer.Option(show_default=False)] = None,
    redis_block: Annotated[str | None, typer.Option(show_default=False)] = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Read the load history (Prometheus, else the CSV trace), forecast it and decide the
    group's capacity; with --apply, set it (flow scale_predictively). Dry run by default.
    --fleet NAME decides for every target of the fleet file with an Auto Scaling group."""
    if mode not in (None, "forecast_and_scale", "forecast_only", "reactive"):
        raise typer.BadParameter(f"--mode: unknown mode {mode!r}")

    def loader() -> Any:
        from flows.scale_predictively import scale_predictively

        return scale_predictively

    if fleet:
        run_fleet(
            loader,
            {"mode": mode, "dry_run": not apply},
            fleet=fleet,
            fleet_file=fleet_file,
            single={
                "--group": group != "demo",
                "--aws": aws,
                "--region": region,
                "--endpoint-url": endpoint_url,
                "--credentials-block": credentials_block,
                "--current": current is not None,
                "--metrics-block": metrics_block,
                "--redis-block": redis_block,
            },
            label="scaling decisions",
            system="autoscaling",
            artifact_key="perfops-scaling-fleet",
            as_json=as_json,
            verbose=verbose,
        )
        return

    target = _aws(group, aws, region, endpoint_url, credentials_block)
    if target is not None and current is not None:  # was silently ignored: AWS's is used
        raise typer.BadParameter(
            "--current is the capacity of a simulated group; with --aws (--endpoint-url, "
            "--credentials-block) the group's capacity is read from AWS: drop --current",
            param_hint="--current",
        )
    run = run_flow(
        loader,
        {
            "group": _group_key(ctx, group, target),
            "mode": mode,
            "dry_run": not apply,
            "aws": target,
            "current_capacity": current,
            "metrics_block": metrics_block,
            "redis_block": redis_block,
        },
        verbose=verbose,
        label="deciding capacity",
        show_progress=not as_json,
    )
    if as_json:
        from decisions.scaling_report import as_dict

        print_json(as_dict(run))
        return
    print_wrapped(run.summary, indent=0, style="bold")
    for name, n in run.demands.items():
        print_wrapped(f"{name}: {n}", indent=2)
    if run.chart:
        print_wrapped(f"chart: {run.chart}", indent=2)
    if run.dry_run and run.desired != run.current:
        print_wrapped("dry run: nothing changed; rerun with --apply to set it", indent=2)


# The Schedule fields `apply-schedule` sets, by flag (a bad value is reported against its flag).
_SCHEDULE_FLAGS = {
    "timezone": "--timezone",
    "off_hours_min": "--off-min",
    "off_hours_max": "--off-max",
}


@app.command("apply-schedule")
def apply_schedule(
    group: Annotated[
        str | None,
        typer.Option(
            "--group", help="Auto Scaling group to write (or --fleet).", show_default=False
        ),
    ] = None,
    region: RegionOption = "us-east-1",
    endpoint_url: EndpointOption = None,
    credentials_block: CredentialsOption = None,
    business_min: Annotated[
        int, typer.Option(min=0, help="Minimum instances in business hours.")
    ] = 4,
    business_max: Annotated[int, typer.Option(min=1, help="Maximum in business hours.")] = 100,
    off_min: Annotated[int, typer.Option(min=0, help="Minimum off hours.")] = 2,
    off_max: Annotated[int, typer.Option(min=1, help="Maximum off hours.")] = 100,
    start: Annotated[str, typer.Option(help="Business hours start (HH:MM).")] = "09:00",
    end: Annotated[str, typer.Option(help="Business hours end (HH:MM).")] = "17:00",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the hours.")] = "UTC",
    apply: Annotated[bool, typer.Option("--apply", help="Write the actions.")] = False,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Write Mon-Fri business hours / off hours as Auto Scaling scheduled actions that set the
    group's min and max, never its desired capacity (flow apply_scaling_schedule); idempotent,
    dry run by default. --fleet NAME writes them to every
    group of the fleet file's targets."""
    if not group and not fleet:
        raise typer.BadParameter("name the group with --group, or a fleet with --fleet")
    from pydantic import ValidationError

    from decisions.scaling_policy import Schedule, ScheduleWindow
    from tasks.autoscaling import AutoScalingTarget

    try:
        schedule = Schedule(
            timezone=timezone,
            windows=(
                ScheduleWindow(
                    start=start,
                    end=end,
                    min_capacity=business_min,
                    max_capacity=business_max,
                ),
            ),
            off_hours_min=off_min,
            off_hours_max=off_max,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        raise typer.BadParameter(
            str(first["msg"]).removeprefix("Value error, "),
            param_hint=_SCHEDULE_FLAGS.get(field),
        ) from None

    def loader() -> Any:
        from flows.apply_scaling_schedule import apply_scaling_schedule

        return apply_scaling_schedule

    if fleet:
        run_fleet(
            loader,
            {"schedule": schedule, "dry_run": not apply},
            fleet=fleet,
            fleet_file=fleet_file,
            single={
                "--group": group,
                "--region": region,
                "--endpoint-url": endpoint_url,
                "--credentials-block": credentials_block,
            },
            label="scaling schedules",
            system="autoscaling",
            artifact_key="perfops-scaling-schedule-fleet",
            as_json=as_json,
            verbose=verbose,
        )
        return
    assert group is not None
    target = AutoScalingTarget(
        group=group, region=region, endpoint_url=endpoint_url, credentials_block=credentials_block
    )
    run = run_flow(
        loader,
        {"aws": target, "schedule": schedule, "dry_run": not apply},
        verbose=verbose,
        label="applying the schedule",
        show_progress=not as_json,
    )
    if as_json:
        print_json(
            {
                "group": run.group,
                "dry_run": run.dry_run,
                "actions": run.actions,
                "changed": run.changed,
                "deleted": run.deleted,
                "summary": run.summary,
            }
        )
        return
    print_wrapped(run.summary, indent=0, style="bold")
    for a in run.actions:
        mark = "*" if a["name"] in run.changed else " "
        print_wrapped(
            f"{mark} {a['name']}: {a['recurrence']} ({a['timezone']}) "
            f"min {a['min_size']} max {a['max_size']}",
            indent=2,
        )
    for name in run.deleted:
        verb = "would delete" if run.dry_run else "deleted"
        print_wrapped(f"- {name}: {verb} (not in the schedule)", indent=2)


@app.command()
def history(
    group: GroupKeyOption = "demo",
    limit: Annotated[
        int, typer.Option(min=1, max=HISTORY_KEPT, help="Newest decisions to show.")
    ] = 20,
    redis_block: Annotated[str | None, typer.Option(show_default=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """The group's latest scaling decisions (kept in Redis), newest first."""
    from blocks.resolve import resolve_redis
    from tasks.scaling_state import read_history

    records = read_history(resolve_redis(redis_block).value, group, limit)
    if as_json:
        print_json(records)
        return
    if not records:
        print_wrapped(f"no scaling decisions recorded for {group!r}", indent=0)
        return
    for r in records:
        state = "applied" if r.get("applied") else "dry run" if r.get("dry_run") else "kept"
        print_wrapped(
            f"{r['at']}: {r['current']} -> {r['desired']} ({state}) {r['reason']}", indent=0
        )


@app.command()
def backtest(
    trace: Annotated[Path, typer.Option("--trace", help="CSV with timestamp,value columns.")],
    delay: Annotated[str, typer.Option(help="Provisioning delay (e.g. 10min).")] = "10min",
    chart: Annotated[
        Path | None, typer.Option(help="Chart PNG (default `out/scaling/backtest-<trace>.png`).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Replay a trace step by step with a provisioning delay: perfops (tuned on the training
    part, then scored on the rest) vs a threshold step policy vs HPA-style target tracking vs
    the oracle (% steps under-provisioned, % above 80 %
    utilisation, instance-hours x oracle, actions, forecast MAPE/WAPE) and draw a chart."""
    import pandas as pd

    from decisions.scaling_charts import backtest_chart
    from decisions.scaling_replay import (
        HpaTargetTracking,
        PerfopsPolicy,
        ThresholdStep,
        make_env,
        simulate,
    )
    from decisions.scaling_replay import backtest as run_backtest
    from perfops.settings import get_settings

    try:  # a bad --delay is bad usage, never blamed on the trace
        if pd.Timedelta(delay) < pd.Timedelta(0):
            raise ValueError("negative")
    except ValueError:
        raise typer.BadParameter(
            f"not a duration like 10min, 90s or 1h: {delay!r}", param_hint="--delay"
        ) from None
    if not trace.is_file():
        fail(f"trace file {trace} does not exist")
    frame = pd.read_csv(trace)
    if not {"timestamp", "value"} <= set(frame.columns):
        fail(f"trace {trace} needs timestamp,value columns; found {list(frame.columns)}")
    series = pd.Series(
        pd.to_numeric(frame["value"], errors="coerce").to_numpy(float),
        index=pd.to_datetime(frame["timestamp"]),
    )
    series = series.dropna().groupby(level=0).mean().sort_index()
    if len(series) < 10:
        fail(f"trace {trace} has {len(series)} usable points; a back-test needs more")
    step = series.index.to_series().diff().mode().iloc[0]
    grid = pd.date_range(series.index[0], series.index[-1], freq=step)
    series = (
        series.reindex(series.index.union(grid)).interpolate("time").reindex(grid).clip(lower=0)
    )
    try:
        env = make_env(series, delay=delay)
    except ValueError as exc:
        fail(f"trace {trace}: {exc}")
    perfops = PerfopsPolicy()
    table = run_backtest(env, [perfops, ThresholdStep(), HpaTargetTracking(env.target)])
    choice = perfops.choice
    out = chart or get_settings().out_dir / "scaling" / f"backtest-{trace.stem}.png"
    perfops_run = simulate(env, PerfopsPolicy(track=perfops.track, tuning=perfops.tuning))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(backtest_chart(env, perfops_run))
    if as_json:
        print(
            json.dumps(
                {
                    "trace": str(trace),
                    "chart": str(out),
                    "choice": choice.candidate.label if choice else None,
                    "reason": choice.reason if choice else perfops.untuned,
                    "rows": table.reset_index().to_dict(orient="records"),
                },
                default=float,
            )
        )
        return
    print(table.round(3).to_string())
    if choice is not None:
        days = env.start * env.step / pd.Timedelta("1D")
        print_wrapped(
            f"perfops, tuned on the first {days:.1f} days only (at most {choice.risk_pct:g} % "
            f"under-provisioned there), runs {choice.candidate.label}: {choice.reason}",
            indent=0,
        )
    elif perfops.untuned:
        print_wrapped(f"perfops is {perfops.untuned}", indent=0)
    print(f"chart: {out}")


@app.command()
def tune(
    group: GroupKeyOption = "demo",
    risk: Annotated[
        float,
        typer.Option(
            "--risk", min=0, max=100, help="Under-provisioned steps (%) the group accepts."
        ),
    ] = 1.0,
    store: Annotated[
        bool,
        typer.Option(
            "--store/--no-store", help="Store the choice for decide (default) or only show it."
        ),
    ] = True,
    metrics_block: Annotated[str | None, typer.Option(show_default=False)] = None,
    redis_block: Annotated[str | None, typer.Option(show_default=False)] = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Back-test the group's recent load through the simple policies and perfops' forecast
    policy, pick the family cheapest around --risk (its cost curve read over a band of risk
    levels), at its cheapest setting meeting --risk, and store it for `perfops scaling decide`
    (flow tune_scaling). Changes no capacity. --fleet NAME tunes every target of the fleet
    file with an Auto Scaling group, each under the key `decide --fleet` reads."""

    def loader() -> Any:
        from flows.tune_scaling import tune_scaling

        return tune_scaling

    if fleet:
        run_fleet(
            loader,
            {"risk_pct": risk, "store": store},
            fleet=fleet,
            fleet_file=fleet_file,
            single={
                "--group": group != "demo",
                "--metrics-block": metrics_block,
                "--redis-block": redis_block,
            },
            label="scaling tunings",
            system="autoscaling",
            artifact_key="perfops-scaling-tuning-fleet",
            as_json=as_json,
            verbose=verbose,
        )
        return

    run = run_flow(
        loader,
        {
            "group": group,
            "risk_pct": risk,
            "store": store,
            "metrics_block": metrics_block,
            "redis_block": redis_block,
        },
        verbose=verbose,
        label="tuning the scaling policy",
        show_progress=not as_json,
    )
    if as_json:
        print_json({"summary": run.summary, "record": run.record, "rows": run.rows})
        return
    print_wrapped(run.summary, indent=0, style="bold")
    for row in (run.rows or [])[:8]:
        print_wrapped(
            f"{row['candidate']}: {row['under_pct']:.2f} % under, "
            f"{row['cost_x_oracle']:.2f}x the oracle ({row['result']})",
            indent=2,
        )
