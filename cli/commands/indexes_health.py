"""`perfops indexes health`: unused, duplicate, covered and invalid indexes (flow
check_index_health). Registered by `cli.command` on the `indexes` group beside `suggest`:

    indexes_app.command("health")(health)
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from cli.commands.fleet import FleetFileOption, FleetOption, run_fleet
from cli.support import (
    WIDTH,
    ApplyFlag,
    DsnOption,
    JsonFlag,
    PostgresBlockOption,
    VerboseFlag,
    fail,
    out,
    print_json,
    print_wrapped,
    run_flow,
    use_dsn,
)
from decisions.index_health import (
    DEFAULT_MIN_SIZE_BYTES,
    IndexHealthSettings,
    format_bytes,
    qualified_name,
)
from perfops.wording import counted

_UNITS = {
    "": 1,
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)

INDENT = 10


def parse_size(value: str | int) -> int:
    """`1048576`, `512kB`, `1MB`, `1.5 GB` -> bytes (powers of 1024, as PostgreSQL counts)."""
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(value)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise typer.BadParameter(f"{value!r} is not a size: use bytes or a unit (512kB, 1MB, 2GB)")
    return int(float(match.group(1)) * _UNITS[unit])


def _flow() -> Any:
    from flows.check_index_health import check_index_health

    return check_index_health


def health(
    dsn: DsnOption = None,
    postgres_block: PostgresBlockOption = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    min_size: Annotated[
        int,
        typer.Option(
            parser=parse_size,
            metavar="SIZE",
            help="Report an unused index only from this size on (bytes or 512kB, 1MB, 2GB).",
        ),
    ] = DEFAULT_MIN_SIZE_BYTES,
    schema: Annotated[
        list[str] | None,
        typer.Option(help="Only this schema (repeatable; default: every user schema)."),
    ] = None,
    apply: ApplyFlag = False,
    drop: Annotated[
        list[str] | None,
        typer.Option(
            "--drop",
            metavar="SCHEMA.INDEX",
            help="An index to drop with --apply (repeatable; only findings are dropped, each "
            "CONCURRENTLY). Without --apply, shows what would happen.",
        ),
    ] = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Find unused, duplicate, covered and invalid indexes and the space each wastes (flow
    check_index_health). Report only; `--apply --drop SCHEMA.INDEX` drops the named ones.

    Exit 1 when a table could not be checked (locked by another session), or an index named
    with --apply was refused (e.g. outside --schema) or its drop failed. A name no index in the
    database has is reported "not found" and exits 0: a rerun after a drop ends there (check
    the name if no earlier run dropped it)."""
    if apply and not drop:
        raise typer.BadParameter(
            "name each index to drop with --drop SCHEMA.INDEX (perfops never drops a finding "
            "nobody named)",
            param_hint="--apply",
        )
    try:
        settings = IndexHealthSettings(min_size_bytes=min_size, schemas=schema or None)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--min-size" if first["loc"] and first["loc"][0] == "min_size_bytes" else "--schema"
        raise typer.BadParameter(str(first["msg"]), param_hint=flag) from None
    if fleet:
        run_fleet(
            _flow,
            {"settings": settings, "apply": apply, "drop": list(drop or [])},
            fleet=fleet,
            fleet_file=fleet_file,
            single={"--dsn": dsn, "--postgres-block": postgres_block},
            label="index health",
            artifact_key="perfops-index-health-fleet",
            as_json=as_json,
            verbose=verbose,
        )
        return
    use_dsn(dsn)
    report = run_flow(
        _flow,
        {
            "postgres_block": postgres_block,
            "settings": settings,
            "apply": apply,
            "drop": list(drop or []),
        },
        verbose=verbose,
        label="checking index health",
        show_progress=not as_json,
    )
    if as_json:
        print_json(report)
    else:
        _print(report)
    not_done = [d for d in report.drops if d.status in ("refused", "failed")]
    problems = []
    if apply and not_done:
        problems.append(
            f"{len(not_done)} of {len(report.drops)} named indexes not dropped (see the reasons)"
        )
    if report.locked_tables:
        locked = [qualified_name(t.schema_name, t.table_name) for t in report.locked_tables]
        problems.append(
            f"{counted(len(locked), 'table')} not checked, locked by another session: "
            f"{', '.join(locked[:5])}{', ...' if len(locked) > 5 else ''}"
        )
    if problems:
        fail("; ".join(problems))


def _print(report: Any) -> None:
    out.print(
        f"[bold]index health[/] of {escape(report.database)} ({report.origin})", highlight=False
    )
    reset = (
        f"statistics reset {report.stats_reset:%Y-%m-%d}"
        if report.stats_reset
        else "statistics never reset"
    )
    out.print(
        f"{counted(report.indexes_checked, 'index', 'indexes')} checked ({reset}); "
        f"{counted(len(report.findings), 'finding')} "
        f"wasting {format_bytes(report.wasted_bytes)}",
        highlight=False,
    )
    if report.unmatched:
        print_wrapped(report.unmatched, style="yellow", indent=0)
    drops = {d.name: d for d in report.drops}
    for f in report.findings:
        out.print()
        size = format_bytes(f.size_bytes)
        head = f"{f.kind:<10}{f.name}"
        pad = max(WIDTH - len(head) - len(size), 1)
        out.print(f"[bold]{escape(head)}[/]{' ' * pad}{size}", highlight=False)
        print_wrapped(f"on {f.table}: {f.reason}", indent=INDENT)
        d = drops.pop(f.name, None)
        if d is not None:
            _print_drop(d)
        elif f.droppable:
            print_wrapped(
                f"to drop: --apply --drop {_shell_word(f.name)}", style="cyan", indent=INDENT
            )
        else:
            print_wrapped(f"not droppable: {f.not_droppable_reason}", style="yellow", indent=INDENT)
    for d in drops.values():
        out.print()
        out.print(f"[bold]{escape(d.name)}[/]", highlight=False)
        _print_drop(d)
    for t in report.locked_tables:
        out.print()
        print_wrapped(
            f"not checked: {qualified_name(t.schema_name, t.table_name)}: {t.reason}",
            indent=0,
            style="red",
        )
    if not report.findings and report.locked_tables:
        out.print(
            "no unused, duplicate, covered or invalid index in the tables checked; "
            f"{counted(len(report.locked_tables), 'table')} not checked (above)",
            highlight=False,
        )
    elif not report.findings:
        out.print("nothing to do: no unused, duplicate, covered or invalid index", highlight=False)
    elif not report.applied:
        out.print("\nreport only: nothing was changed", highlight=False)


def _print_drop(d: Any) -> None:
    colours = {"dropped": "green", "would drop": "cyan", "already gone": "green"}
    if d.status == "dropped":
        text = f"dropped CONCURRENTLY in {d.seconds or 0:.1f} s"
    elif d.status == "would drop":
        text = "would drop (dry run: add --apply)"
    else:
        text = f"{d.status}: {d.reason}"
    print_wrapped(text, style=colours.get(d.status, "red"), indent=INDENT)


def _shell_word(name: str) -> str:
    """The name as a shell word (quoted when it holds quotes or spaces)."""
    if re.fullmatch(r"[A-Za-z0-9_.]+", name):
        return name
    return "'" + name.replace("'", "'\\''") + "'"
