"""The weekly report's Fleet section: read every selected target (docs/fleet.md, "The weekly
report over a fleet") and build the table, worst first (decisions.report_fleet).

Per target, in up to the fleet file's `max_parallel` threads: its `postgres` block and
`fetch_database_figures` (read-only); its `prometheus` block, when it has one, with the report's
own queries for the week and the one before; and the week's perfops events about its database.
A block that does not load or a system that does not answer makes the target unreachable, with
the reason; the other targets are still read. The report only reads, so it takes no target or
cluster concurrency slot (as `perfops fleet list`).

Week over week, the PostgreSQL figures are compared with the fleet table archived with last
week's report (`reports/weekly/<week>/data/fleet.csv`), when that report's manifest lists one.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from datetime import datetime

from blocks import PostgresTarget, PrometheusSource
from blocks.resolve import ArchiveStore, load_block
from decisions.fleet import Target
from decisions.report_archive import MANIFEST
from decisions.report_fleet import (
    FleetView,
    TargetFigures,
    build_view,
    events_of,
    reported_targets,
    selection_label,
)
from decisions.report_fleet import previous_figures as parse_previous
from decisions.reporting import RecordedEvent, ReportConfig, ReportWeek, assemble_week, evaluate
from perfops.errors import PerfopsError
from perfops.redaction import one_line, redact
from tasks.fleet_runs import load_selection
from tasks.postgres.report_figures import fetch_database_figures
from tasks.prometheus.report import query_report_figures
from tasks.storage import get_object, object_exists, read_report_manifest


def _load(block_type: type[PostgresTarget] | type[PrometheusSource], name: str) -> object:
    try:
        return load_block(block_type, name)
    except PerfopsError as exc:
        raise _Unreachable(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - one target's problem must not hide the others
        raise _Unreachable(
            f"cannot load block {name!r}: {one_line(exc, empty=type(exc).__name__)}"
        ) from None


class _Unreachable(Exception):
    """A target's system could not be read; the message says why."""


def _postgres(
    figures: TargetFigures, name: str, config: ReportConfig, events: list[RecordedEvent]
) -> None:
    target = _load(PostgresTarget, name)
    assert isinstance(target, PostgresTarget)
    resource = target.resource_id()
    figures.events = events_of(events, resource)
    # Without a cluster in the fleet file: the server the database lives on (host:port).
    figures.cluster = figures.cluster or resource.removeprefix("perfops.postgres.").split("/")[0]
    try:
        figures.database = fetch_database_figures(target, config.fleet.slow_statement_ms)
    except Exception as exc:  # noqa: BLE001 - reported as the target's reason
        raise _Unreachable(one_line(exc, empty=type(exc).__name__)) from None


def _prometheus(figures: TargetFigures, name: str, config: ReportConfig, this: ReportWeek) -> None:
    source = _load(PrometheusSource, name)
    assert isinstance(source, PrometheusSource)
    current_raw, previous_raw, _ = query_report_figures(
        source, f"block {name}", config, this, charts=False
    )
    errors = [r.error for r in current_raw.values() if r.error]
    if errors and len(errors) == len(current_raw):
        raise _Unreachable(redact(f"{source.url}: {errors[0]}"))
    current = assemble_week(this.label, current_raw, config)
    previous = assemble_week(this.previous().label, previous_raw, config)
    figures.checks = evaluate(current, previous, config)
    figures.missing_sections = current.missing


def read_target(
    target: Target, config: ReportConfig, this: ReportWeek, events: list[RecordedEvent]
) -> TargetFigures:
    """Everything the Fleet section shows about one target; never raises for the target's own
    problems (they become its `unreachable` reasons)."""
    figures = TargetFigures(target=target.name, labels=target.labels, cluster=target.cluster or "")
    if "postgres" in target.blocks:
        try:
            _postgres(figures, target.blocks["postgres"], config, events)
        except _Unreachable as exc:
            figures.unreachable.append(f"postgres: {exc}")
    if "prometheus" in target.blocks:
        try:
            _prometheus(figures, target.blocks["prometheus"], config, this)
        except _Unreachable as exc:
            figures.unreachable.append(f"prometheus: {exc}")
    return figures


FLEET_TABLE = "data/fleet.csv"


def _last_week(store: ArchiveStore, prefix: str) -> tuple[bytes | None, str]:
    """Last week's archived fleet table (under `prefix`, last week's folder), and what the
    comparison is with. The folder's manifest says what is part of last week's report: a fleet
    table it does not list (left there by an earlier run of that week) is not read."""
    key = f"{prefix}/{FLEET_TABLE}"
    try:
        if object_exists(store, f"{prefix}/{MANIFEST}"):
            entry = read_report_manifest(store, prefix).files.get(FLEET_TABLE)
            if entry is None:
                return None, (
                    f"nothing to compare with (last week's report, {prefix}/{MANIFEST}, "
                    "has no fleet table)"
                )
            data = get_object(store, key)
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                return None, (
                    f"nothing to compare with: {key} is not the fleet table {prefix}/{MANIFEST} "
                    "lists (its SHA-256 differs)"
                )
            return data, f"the fleet table archived with last week's report ({key})"
        # Archived before manifests: a complete report has its index.html (written last).
        if not object_exists(store, f"{prefix}/index.html"):
            return None, f"nothing to compare with (no report archived at {prefix}/)"
        if not object_exists(store, key):
            return None, f"nothing to compare with (no fleet table at {key})"
        return get_object(store, key), f"the fleet table archived with last week's report ({key})"
    except PerfopsError as exc:
        return None, f"nothing to compare with: cannot read {key}: {one_line(exc)}"


def read_fleet_view(
    selection: list[str] | str,
    fleet_file: str | None,
    config: ReportConfig,
    this: ReportWeek,
    events: list[RecordedEvent],
    store: ArchiveStore,
    previous_prefix: str,
    read_at: datetime,
) -> FleetView:
    """Read every target `selection` names (`max_parallel` at once) and build the Fleet section,
    worst first. `previous_prefix` is last week's archive folder (its fleet table, as its
    manifest lists it)."""
    definition, selected = load_selection(selection, fleet_file)
    label = selection_label(selection)
    targets = reported_targets(selected, label)  # caches and groups alone: nothing to read
    with ThreadPoolExecutor(max_workers=min(definition.max_parallel, len(targets))) as pool:
        # Each thread runs in a copy of this run's context, so its task runs belong to the run.
        futures = [
            pool.submit(copy_context().run, read_target, t, config, this, events) for t in targets
        ]
        gathered = [f.result() for f in futures]
    data, compared_with = _last_week(store, previous_prefix)
    return build_view(
        label,
        read_at,
        gathered,
        config.fleet,
        parse_previous(data),
        compared_with,
    )
