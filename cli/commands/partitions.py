"""`perfops partitions ...`: partition rotation (flow rotate_partitions) and restore (flow
restore_partition)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cli.commands.fleet import FleetFileOption, FleetOption, run_fleet
from cli.support import (
    ApplyFlag,
    DsnOption,
    JsonFlag,
    PostgresBlockOption,
    VerboseFlag,
    fail,
    print_json,
    print_wrapped,
    quiet_prefect_console,
    run_flow,
    use_dsn,
)
from perfops.redaction import redact
from perfops.settings import apply_prefect_defaults

app = typer.Typer(no_args_is_help=True)

_FLAGS = {
    "table": "--table",
    "interval": "--interval",
    "premake": "--premake",
    "retention": "--retention",
    "expired_action": "--expired-action",
    "archive": "--archive",
    "timezone": "--timezone",
    "max_created_per_run": "--max-created",
    "lock_timeout_ms": "--lock-timeout-ms",
    "statement_timeout_ms": "--statement-timeout-ms",
}
_COLOURS = {
    "created": "green",
    "dropped": "green",
    "detached": "yellow",
    "failed": "red",
    "archived, not dropped": "red",
    "skipped": "yellow",
}


@app.callback()
def partitions() -> None:
    """Time-partitioned tables: create ahead, archive and drop expired partitions, restore."""


def _rotate_flow() -> Any:
    from flows.rotate_partitions import rotate_partitions

    return rotate_partitions


def _restore_flow() -> Any:
    from flows.restore_partition import restore_partition

    return restore_partition


def _bad(exc: ValidationError) -> typer.BadParameter:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    if not field:  # a check across fields: its message starts with the field it is about
        field = next((f for f in _FLAGS if message.startswith(f)), "")
    flag = _FLAGS.get(field, field)
    return typer.BadParameter(f"{flag + ': ' if flag else ''}{message}")


@app.command()
def rotate(
    dsn: DsnOption = None,
    postgres_block: PostgresBlockOption = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    table: Annotated[
        str | None,
        typer.Option(
            help="The partitioned table, schema.table (a bare name means public.NAME). Quote "
            'a part with capitals, spaces or dots, as in SQL: \'"My Schema"."Audit Logs"\'.',
            show_default=False,
        ),
    ] = None,
    interval: Annotated[
        str, typer.Option(help="One partition per hour, day, week, month or year.")
    ] = "month",
    premake: Annotated[
        int, typer.Option(min=0, max=365, help="Partitions kept ready after the current one.")
    ] = 3,
    retention: Annotated[
        str | None,
        typer.Option(
            help="Keep partitions this long, e.g. '12 months'. Default: keep everything.",
            show_default=False,
        ),
    ] = None,
    archive: Annotated[
        str | None,
        typer.Option(
            help="Where expired partitions are archived before the drop: s3://bucket/prefix "
            "(credentials and PERFOPS_S3_ENDPOINT_URL from the environment), s3-block:NAME, or "
            "a local folder.",
            show_default=False,
        ),
    ] = None,
    expired_action: Annotated[
        str,
        typer.Option(
            help="archive_then_drop (needs --archive), detach_only (keep as a plain table) or "
            "drop (no archive)."
        ),
    ] = "archive_then_drop",
    timezone: Annotated[
        str, typer.Option(help="IANA zone the interval boundaries align in.")
    ] = "UTC",
    max_created: Annotated[
        int, typer.Option(min=1, help="At most this many partitions per run.")
    ] = 24,
    policies: Annotated[
        Path | None,
        typer.Option(
            "--policies",
            help="A YAML file of policies (see deployments/partitions.yaml) instead of --table.",
            show_default=False,
        ),
    ] = None,
    lock_timeout_ms: Annotated[
        int,
        typer.Option(
            min=1, max=600_000, help="Every DDL statement gives up waiting for a lock after this."
        ),
    ] = 2_000,
    at: Annotated[
        datetime | None,
        typer.Option(
            help="Plan as if it were this time (ISO, with offset); for previews (a time after "
            "now is refused with --apply).",
            show_default=False,
        ),
    ] = None,
    apply: ApplyFlag = False,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Plan a rotation (always) and, with --apply, do it: create partitions ahead (moving rows
    waiting in the default partition into them), detach expired ones, archive them to Parquet
    with a verified SHA-256 manifest, and only then drop them (flow rotate_partitions).

    Without --apply nothing changes: the plan lists what would be created and expired, and why.
    """
    from decisions.partitioning import PartitionPolicy, PolicyError, load_policies

    # Prefect's settings before the flow module imports prefect (quiet console unless -v).
    apply_prefect_defaults()
    quiet_prefect_console(verbose)
    from decisions.partition_rotation import RotationSettings

    if (table is None) == (policies is None):
        raise typer.BadParameter("give either --table (with --interval etc.) or --policies FILE")
    chosen: list[Any] = []
    if policies is not None:
        try:
            chosen = load_policies(policies.read_text())
        except OSError as exc:
            raise typer.BadParameter(
                f"--policies: cannot read {policies}: {exc.strerror}"
            ) from None
        except PolicyError as exc:
            raise typer.BadParameter(f"--policies {policies}: {exc}") from None
    else:
        assert table is not None
        name = table if _qualified(table) else f"public.{table}"
        try:
            chosen = [
                PartitionPolicy(
                    table=name,
                    interval=interval,
                    premake=premake,
                    retention=retention,
                    expired_action=expired_action,
                    archive=archive,
                    timezone=timezone,
                    max_created_per_run=max_created,
                )
            ]
        except ValidationError as exc:
            raise _bad(exc) from None
    try:
        settings = RotationSettings(lock_timeout_ms=lock_timeout_ms)
    except ValidationError as exc:
        raise _bad(exc) from None
    if at is not None and (at.tzinfo is None or at.utcoffset() is None):
        raise typer.BadParameter("--at needs a UTC offset, e.g. 2026-12-01T00:00:00+00:00")
    if at is not None and apply and at > datetime.now(UTC):
        # a preview of a later day, applied today, would expire partitions still inside their
        # retention (and drop them, with expired_action drop)
        raise typer.BadParameter(
            f"--at {at.isoformat()} is in the future: it previews a later run; drop --apply "
            "(a later time applied now would expire partitions still inside their retention)"
        )
    if fleet:
        run_fleet(
            _rotate_flow,
            {"policies": chosen, "apply": apply, "settings": settings, "now": at},
            fleet=fleet,
            fleet_file=fleet_file,
            single={"--dsn": dsn, "--postgres-block": postgres_block},
            label="partition rotation",
            artifact_key="perfops-partitions-rotate-fleet",
            as_json=as_json,
            verbose=verbose,
        )
        return
    use_dsn(dsn)
    report = run_flow(
        _rotate_flow,
        {
            "postgres_block": postgres_block,
            "policies": chosen,
            "apply": apply,
            "settings": settings,
            "now": at,
        },
        verbose=verbose,
        label="rotating partitions" if apply else "planning partition rotation",
        show_progress=not as_json,
    )
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    if report.failed:
        fail(
            "some steps failed (see above and the perfops-partitions-rotate artifact); nothing "
            "was dropped without a verified archive"
        )


def _print(text: str, *, indent: int = 2, style: str | None = None) -> None:
    print_wrapped(redact(text), indent=indent, style=style)


def _print_report(report: Any) -> None:
    _print(f"partitions on {report.target}", indent=0, style="bold")
    _print(f"{report.summary} in {report.seconds:.1f} s")
    for t in report.tables:
        _print(t.table, indent=2, style="bold")
        if t.error:
            _print(f"error: {t.error}", indent=4, style="red")
            continue
        created = {c.name: c for c in t.created}
        if t.plan:
            for p in t.plan.create:
                c = created.get(p.name)
                status = c.status if c else "would create"
                extra = f" ({c.detail})" if c and c.detail else ""
                _print(f"{status}: {p.name}{extra}", indent=4, style=_COLOURS.get(status, "cyan"))
                _print(p.reason, indent=6, style="dim")
            for r in t.plan.rescue:
                _print(f"rescue: {r.reason}", indent=4)
        if t.state:  # an applied run: the table as it left it
            for g in t.state.gaps:
                _print(f"gap: {g.reason}", indent=4, style="yellow")
            for h in t.state.health:
                _print(f"health ({h.kind}): {h.detail}", indent=4, style="yellow")
            for k in t.state.kept:
                _print(f"kept: {k.name}: {k.reason}", indent=4)
        if t.hash_plan:
            _print(f"hash: {t.hash_plan.reason}", indent=4)
            for c in t.created:
                _print(f"{c.status}: {c.name}", indent=4, style=_COLOURS.get(c.status))
        for e in t.expired:
            rows = f", {e.rows:,} rows" if e.rows is not None else ""
            where = f" -> {e.uri}" if e.uri else ""
            _print(
                f"{e.status}: {e.partition}{rows}{where}",
                indent=4,
                style=_COLOURS.get(e.status, "cyan"),
            )
            if e.detail:
                _print(e.detail, indent=6, style="dim")
        for problem in t.problems:
            _print(f"problem: {problem}", indent=4, style="yellow")
    if report.dry_run:
        _print("dry run: nothing was changed; rerun with --apply to do this", indent=0)


@app.command()
def restore(
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="The archive: s3://bucket/.../PARTITION.parquet (or its .manifest.json) or a "
            "local path to either.",
        ),
    ],
    table: Annotated[
        str | None,
        typer.Option(
            help="schema.table to create (default: the archived partition's own name).",
            show_default=False,
        ),
    ] = None,
    attach: Annotated[
        bool,
        typer.Option(
            "--attach",
            help="Attach the restored table back to its parent with its original bounds.",
        ),
    ] = False,
    dsn: DsnOption = None,
    postgres_block: PostgresBlockOption = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Load an archived partition back: verify the manifest's and the object's SHA-256 and the
    row count, load it into a new table in one transaction, and optionally reattach it
    (flow restore_partition)."""
    if not source.startswith("s3://"):
        _check_local_archive(source)
    use_dsn(dsn)
    report = run_flow(
        _restore_flow,
        {"source": source, "table": table, "attach": attach, "postgres_block": postgres_block},
        verbose=verbose,
        label="restoring partition",
        show_progress=not as_json,
    )
    if as_json:
        print_json(report)
        return
    _print(
        f"restored {report.rows:,} rows into {report.table} (SHA-256 {report.sha256[:12]}... "
        "verified)" + (f", attached to {report.attached_to}" if report.attached_to else ""),
        indent=0,
    )


def _check_local_archive(source: str) -> None:
    """A local archive is a .parquet file with its .manifest.json beside it: both must exist
    (checked before Prefect starts; an s3:// archive is checked by the flow)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise typer.BadParameter(f"the archive {source} does not exist", param_hint="--from")
    if path.is_dir():
        raise typer.BadParameter(
            f"{source} is a folder; name the archive's .parquet file in it", param_hint="--from"
        )
    stem = str(path).removesuffix(".manifest.json").removesuffix(".parquet")
    parquet, manifest = Path(stem + ".parquet"), Path(stem + ".manifest.json")
    for part, what in ((parquet, "Parquet file"), (manifest, "manifest")):
        if not part.is_file():
            raise typer.BadParameter(
                f"the archive's {what} {part} does not exist (an archive is restored from its "
                ".parquet file and the .manifest.json written beside it)",
                param_hint="--from",
            )


def _qualified(table: str) -> bool:
    from decisions.partitioning import split_table

    try:
        split_table(table)
    except ValueError:
        return False
    return True
