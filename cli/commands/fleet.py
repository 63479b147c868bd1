"""`perfops fleet ...`: the targets perfops runs over (`deployments/fleet.yaml`, docs/fleet.md)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from cli.support import (
    JsonFlag,
    env_option,
    err,
    fail,
    perfops_settings,
    print_json,
    print_wrapped,
    run_flow,
    use_prefect_server,
)
from decisions.fleet import ALL, Fleet, FleetFileError, Target, load_fleet
from perfops.errors import ConfigurationError, PerfopsError
from perfops.redaction import one_line, redact

app = typer.Typer(no_args_is_help=True)


def _named(value: str | None) -> str | None:
    """--fleet as given; an empty one (`--fleet "$FLEET"` with FLEET unset) is refused: it ran
    the command on its single database instead of the fleet."""
    if value is not None and not value.strip():
        raise typer.BadParameter(
            "empty: name a fleet of the fleet file, 'all', a label key=value or a target"
        )
    return value


FleetOption = Annotated[
    str | None,
    env_option(
        "PERFOPS_FLEET",
        "A named fleet of the fleet file, 'all', a label key=value, or a target's name.",
        "--fleet",
        callback=_named,
    ),
]
FLEET_FILE_FLAG = "--fleet-file"
FLEET_FILE_VARIABLE = "PERFOPS_FLEET_FILE"


def _file_source() -> str | None:
    """Where the running command's fleet file came from: `--fleet-file` typed,
    PERFOPS_FLEET_FILE (read by the option or, outside a command, by the settings), or None
    for the default deployments/fleet.yaml."""
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    source = ctx.get_parameter_source("fleet_file") if ctx is not None else None
    if source == ParameterSource.COMMANDLINE:
        return FLEET_FILE_FLAG
    if source == ParameterSource.ENVIRONMENT or os.environ.get(FLEET_FILE_VARIABLE):
        return FLEET_FILE_VARIABLE
    return None


def _file_named(value: Path | None) -> Path | None:
    """--fleet-file (or PERFOPS_FLEET_FILE) as given; an empty one (`--fleet-file "$F"` with F
    unset: a path of ".") is refused, naming whichever of the two gave it."""
    if value is not None and str(value) in ("", "."):
        raise typer.BadParameter(
            "empty: name the fleet file (a YAML file such as deployments/fleet.yaml), or leave "
            f"{FLEET_FILE_FLAG} and {FLEET_FILE_VARIABLE} unset for deployments/fleet.yaml",
            param_hint=_file_source() or FLEET_FILE_FLAG,
        )
    return value


FleetFileOption = Annotated[
    Path | None,
    env_option(
        FLEET_FILE_VARIABLE,
        "The fleet definition (default deployments/fleet.yaml).",
        FLEET_FILE_FLAG,
        callback=_file_named,
    ),
]
PROBE_THREADS = 16
if TYPE_CHECKING:
    from prefect.blocks.core import Block

B = TypeVar("B", bound="Block")


@app.callback()
def fleet() -> None:
    """The fleet: the databases perfops runs over, defined in deployments/fleet.yaml."""


def selected(
    selection: str | None, fleet_file: Path | None, *, discovered: bool = True
) -> tuple[Fleet, list[Target], Path]:
    """The fleet file and the targets `--fleet` selects (all of them without it). A fleet that
    discovers targets on the Prefect server is read there (`discovered`), or, before Prefect
    starts, checked only as far as the file goes (no targets selected yet)."""
    path = fleet_file or perfops_settings().fleet_file
    source = _file_source()
    definition = load_fleet(
        path,
        f"named by {source}"
        if source
        else f"the default: name another with {FLEET_FILE_FLAG} or {FLEET_FILE_VARIABLE}",
    )
    if definition.discover:
        if not discovered:
            return definition, [], path  # the flow selects once it has listed the blocks
        use_prefect_server()
        from blocks import PostgresTarget
        from blocks.resolve import saved_block_names

        definition, skipped = definition.with_discovered(saved_block_names(PostgresTarget))
        for why in skipped:  # on stderr: stdout holds the listing (--json: only the JSON)
            err.print(f"perfops: not a fleet target: {why}", style="yellow", markup=False)
    return definition, definition.select(selection or ALL), path


def selection_refused(exc: PerfopsError) -> typer.BadParameter:
    """A wrong fleet as a usage error (exit 2) naming what the user gave: a wrong fleet file
    names `--fleet-file` or PERFOPS_FLEET_FILE (none: the default file, which the message
    names), any other wrong selection `--fleet`."""
    if isinstance(exc, FleetFileError):
        return typer.BadParameter(str(exc), param_hint=_file_source())
    return typer.BadParameter(str(exc), param_hint="--fleet")


def _typed(flag: str, value: object) -> bool:
    """Whether the running command's option `flag` was typed on the command line, not taken
    from its environment variable (PERFOPS_DSN, PERFOPS_REDIS_URL, ...) or its default
    (--region us-east-1); `value` decides outside a command."""
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    param = next((p for p in ctx.command.params if flag in p.opts), None) if ctx else None
    if ctx is None or param is None or param.name is None:
        return bool(value)
    return ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE


def run_fleet(
    flow: Callable[[], Any],
    parameters: dict[str, Any],
    *,
    fleet: str,
    fleet_file: Path | None,
    single: dict[str, object],
    label: str,
    artifact_key: str,
    as_json: bool,
    verbose: bool,
    system: str = "postgres",
) -> None:
    """`--fleet NAME` of a per-database command: one child run per target (docs/fleet.md), a
    line per target, exit 1 when a target failed. `single` holds the command's one-database
    options (`--dsn`, ...), refused with `--fleet` when typed (from their PERFOPS_* variable
    they are only defaults, which the fleet's blocks replace); a fleet file or selection that
    is wrong is refused (exit 2) before Prefect starts."""
    given = [name for name, value in single.items() if _typed(name, value)]
    if given:
        raise typer.BadParameter(
            f"--fleet runs over the fleet file's blocks: drop {' and '.join(given)}"
        )
    try:
        definition, targets, _ = selected(fleet, fleet_file, discovered=False)
    except PerfopsError as exc:
        raise selection_refused(exc) from None
    if not definition.discover and not any(t.has(system) for t in targets):  # as the run says
        raise typer.BadParameter(
            f"no target of the selection has {system} in the fleet file", param_hint="--fleet"
        )
    report = run_flow(
        flow,
        {**parameters, "targets": fleet, "fleet_file": str(fleet_file) if fleet_file else None},
        verbose=verbose,
        label=f"{label} over {fleet}",
        show_progress=not as_json,
    )
    if as_json:
        print_json(report)
    else:
        print_wrapped(f"{label} over the fleet {report.selection}", indent=0, style="bold")
        print_wrapped(redact(f"{report.summary} in {report.seconds:.1f} s"), indent=2)
        for t in report.targets:
            style = "green" if t.result == "done" else "red"
            print_wrapped(redact(f"{t.result}: {t.target}"), indent=2, style=style)
            print_wrapped(redact(t.changed or t.reason), indent=4, style="dim")
    if report.failure:
        fail(f"{report.failure} (artifact {artifact_key})")


def _reach(target: Target, timeout_s: int) -> tuple[bool, str]:
    """Load the target's postgres block and connect to it (a group target: describe its group;
    a cache target, with a redis block only: ask its Redis); (reachable, what was found or why
    not), never raising."""
    from blocks import PostgresTarget, RedisTarget
    from tasks.cache import probe_redis
    from tasks.postgres.server import probe_postgres

    name = target.blocks.get("postgres")
    if name is None and target.autoscaling is not None:
        return _reach_group(target)
    cache = target.blocks.get("redis")
    if name is None and cache is not None:
        redis_block = _loaded(RedisTarget, cache)
        return (
            redis_block if isinstance(redis_block, tuple) else probe_redis(redis_block, timeout_s)
        )
    if name is None:
        return False, "no postgres block"
    block = _loaded(PostgresTarget, name)
    return block if isinstance(block, tuple) else probe_postgres(block, timeout_s)


def _loaded(block_type: type[B], name: str) -> B | tuple[bool, str]:
    """The saved block `name`, or (False, why it does not load), never raising."""
    from blocks.resolve import load_block

    try:
        return load_block(block_type, name)
    except PerfopsError as exc:
        return False, str(exc)
    except Exception as exc:  # noqa: BLE001 - one target's problem must not hide the others
        return False, f"cannot load block {name!r}: {one_line(exc, empty=type(exc).__name__)}"


def _reach_group(target: Target) -> tuple[bool, str]:
    """Describe the target's Auto Scaling group; (found, its sizes or why not), never raising."""
    from tasks.autoscaling import client_for, describe_group, group_target, load_credentials

    try:
        where = group_target(target)
        state = describe_group(client_for(where, load_credentials(where)), where.group)
    except Exception as exc:  # noqa: BLE001 - one target's problem must not hide the others
        return False, one_line(exc, empty=type(exc).__name__)
    return True, (
        f"Auto Scaling group {state.name} in {where.region}: desired {state.desired}, "
        f"min {state.min_size}, max {state.max_size}"
    )


@app.command("list")
def list_targets(
    selection: FleetOption = None,
    fleet_file: FleetFileOption = None,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe/--no-probe",
            help="Connect to each target's PostgreSQL (a cache's Redis, a group's AWS).",
        ),
    ] = True,
    timeout_s: Annotated[
        int, typer.Option("--timeout", min=1, max=60, help="Seconds to wait for each target.")
    ] = 3,
    as_json: JsonFlag = False,
) -> None:
    """Each target with its blocks, labels, cluster and whether its PostgreSQL answers (probed in
    parallel, --timeout seconds each). Exit 1 when a target is unreachable, 2 when the fleet
    file or the selection is wrong."""
    try:
        definition, targets, path = selected(selection, fleet_file)
    except ConfigurationError as exc:  # bad usage, as every other --fleet command says it
        raise selection_refused(exc) from None
    reach: list[tuple[bool, str] | None] = [None] * len(targets)
    if probe:
        use_prefect_server()  # the blocks are saved on the Prefect server
        with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(targets))) as pool:
            reach = list(pool.map(lambda t: _reach(t, timeout_s), targets))
    rows: list[dict[str, Any]] = [
        {
            "name": t.name,
            "blocks": dict(t.blocks),
            "labels": dict(t.labels),
            "cluster": t.cluster,  # None: the database's own server (host:port) is its slot
            "autoscaling": (
                {**t.autoscaling.model_dump(exclude_none=True), "key": t.autoscaling.key}
                if t.autoscaling
                else None
            ),
            "reachable": r[0] if r else None,
            "detail": redact(r[1]) if r else "",
        }
        for t, r in zip(targets, reach, strict=True)
    ]
    down = [row for row in rows if row["reachable"] is False]
    if as_json:
        print_json(
            {
                "fleet_file": str(path),
                "selection": selection or ALL,
                "max_parallel": definition.max_parallel,
                "max_parallel_per_cluster": definition.max_parallel_per_cluster,
                "targets": rows,
            }
        )
    else:
        print_wrapped(
            f"{selection or ALL} ({path}): {len(rows)} target{'' if len(rows) == 1 else 's'}, "
            f"max_parallel "
            f"{definition.max_parallel}, max_parallel_per_cluster "
            f"{definition.max_parallel_per_cluster}",
            indent=0,
            style="bold",
        )
        for row in rows:
            state = {True: "reachable", False: "UNREACHABLE", None: "not probed"}[row["reachable"]]
            style = {True: "green", False: "red", None: None}[row["reachable"]]
            detail = f": {row['detail']}" if row["detail"] else ""
            print_wrapped(f"{row['name']}: {state}{detail}", indent=2, style=style)
            parts = [", ".join(f"{k}: {v}" for k, v in row["blocks"].items())]
            if row["autoscaling"]:
                group = row["autoscaling"]
                parts.append(
                    f"Auto Scaling group {group['group']} ({group.get('region', '-')}), "
                    f"state key {group['key']}"
                )
            if row["cluster"]:
                parts.append(f"cluster {row['cluster']}")
            elif "postgres" in row["blocks"]:
                parts.append("cluster: its server (host:port)")
            parts.append(" ".join(f"{k}={v}" for k, v in row["labels"].items()) or "no labels")
            print_wrapped("; ".join(p for p in parts if p), indent=4, style="dim")
    if down:
        names = ", ".join(row["name"] for row in down[:5])
        more = f" and {len(down) - 5} more" if len(down) > 5 else ""
        fail(f"{len(down)} of {len(rows)} targets unreachable: {names}{more}")
