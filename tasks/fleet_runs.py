"""One flow over a fleet: the parent run fans out one child run per target, as Prefect subflow
runs in this process, and ends with a summary; and the slots every run that works on a database
holds (docs/fleet.md).

- Each child is the same flow called for one target, its run named `<flow>-<target>` and tagged
  `target:<name>` (and `cluster:<cluster>` when the fleet file names one), so the UI filters runs
  by target. The fleet file's `max_parallel` bounds the threads of one parent run.
- Exclusion and pacing per database, not per deployment (`database_slots`): a run that changes a
  database holds the Prefect global concurrency limit `perfops-db-<host>:<port>:<dbname>`
  (1 slot), a fleet child also `perfops-cluster-<cluster>` (`max_parallel_per_cluster` slots),
  both taken in one request (all or none, so two runs cannot deadlock each holding one). So two
  flows that change one database never overlap, whether run over a fleet or for one database,
  and different databases run side by side.
- Failures are isolated: a child that fails (an unreachable database, a missing block) fails its
  own run; the parent goes on and ends Failed with `1 of 3 targets failed: ...`.
- The parent leaves the fleet summary artifact (one row per target with a link to its run) and
  one event; the children leave their own per-target artifacts and events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from contextvars import copy_context
from pathlib import Path
from typing import Any, cast

from prefect import Flow, get_run_logger, tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_UI_URL
from prefect.states import State

from blocks import PostgresTarget
from decisions.fleet import (
    Fleet,
    FleetReport,
    Target,
    TargetRun,
    cluster_limit,
    database_limit,
    load_fleet,
)
from perfops.errors import ConfigurationError, PerfopsError
from perfops.redaction import one_line
from perfops.settings import get_settings
from tasks.records import emit, end_run, publish_table

# A run waits this long for its database's and its cluster's slots, then fails saying which.
SLOT_TIMEOUT_S = 3600.0


def load_selection(
    selection: str | list[str], fleet_file: str | None
) -> tuple[Fleet, list[Target]]:
    """The fleet file (`fleet_file`, else PERFOPS_FLEET_FILE, else deployments/fleet.yaml) and
    the targets `selection` names."""
    definition = load_fleet(Path(fleet_file) if fleet_file else get_settings().fleet_file)
    return definition, definition.select(selection)


def ensure_limits(wanted: dict[str, int]) -> None:
    """Create the global concurrency limits `wanted` (name -> slots), or set them to these values
    (the fleet file is the source of truth: an edit in the UI lasts until the next run)."""
    with get_client(sync_client=True) as client:
        for name, limit in wanted.items():
            try:
                existing = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with suppress(ObjectAlreadyExists):  # another run made it meanwhile
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=limit)
                    )
                continue
            if existing.limit != limit or not existing.active:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
                )


@contextmanager
def database_slots(
    target: PostgresTarget,
    *,
    changes: bool,
    fleet_target: str | None = None,
    fleet_file: str | None = None,
    timeout_s: float = SLOT_TIMEOUT_S,
) -> Iterator[float]:
    """Hold this run's slots while the block runs; yields the seconds it waited for them.

    A run that `changes` the database holds its database's limit (1 slot); a fleet child
    (`fleet_target`) also its cluster's (`max_parallel_per_cluster`). A read-only run outside a
    fleet holds nothing. No slot within `timeout_s` raises PerfopsError naming the limits."""
    resource = target.resource_id()
    wanted: dict[str, int] = {}
    if changes:
        wanted[database_limit(resource)] = 1
    if fleet_target:
        definition = load_fleet(Path(fleet_file) if fleet_file else get_settings().fleet_file)
        cluster = definition.target(fleet_target).cluster_for(resource)
        wanted[cluster_limit(cluster)] = definition.max_parallel_per_cluster
    if not wanted:
        yield 0.0
        return
    ensure_limits(wanted)
    logger = get_run_logger()
    names = ", ".join(wanted)
    started = time.monotonic()
    try:
        with concurrency(list(wanted), occupy=1, timeout_seconds=timeout_s, strict=True):
            waited = time.monotonic() - started
            logger.info("holding %s (waited %.1f s for it)", names, waited)
            yield waited
    except TimeoutError:
        raise PerfopsError(
            f"no slot of {names} within {timeout_s:.0f} s: another perfops run kept working on "
            "this database or its server (the Prefect UI's Concurrency page shows the holders)"
        ) from None


def _run_one(
    child: Flow[..., Any],
    target: Target,
    parameters: dict[str, Any],
    describe: Callable[[Any], str],
) -> TargetRun:
    started = time.monotonic()
    labels = [f"target:{target.name}"] + ([f"cluster:{target.cluster}"] if target.cluster else [])
    try:
        with tags(*labels):
            named = child.with_options(flow_run_name=f"{child.name}-{target.name}")
            state = cast("State[Any]", named(**parameters, return_state=True))
    except Exception as exc:  # noqa: BLE001 - one target's failure must not stop the others
        return TargetRun(
            target=target.name, result="not run", reason=one_line(exc, empty=type(exc).__name__)
        )
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        reason, changed = one_line(result, empty=type(result).__name__), ""
    else:
        reason, changed = state.message or str(state.name), describe(result)
    return TargetRun(
        target=target.name,
        result="done" if state.is_completed() else "failed",
        reason=reason,
        changed=changed,
        flow_run_id=str(state.state_details.flow_run_id),
        seconds=round(time.monotonic() - started, 3),
    )


def fan_out(
    child: Flow[..., Any],
    selection: str | list[str],
    fleet_file: str | None,
    parameters: dict[str, Any],
    *,
    artifact_key: str,
    event: str,
    dry_run: bool,
    describe: Callable[[Any], str] = lambda report: str(getattr(report, "summary", "")),
    system: str = "postgres",
    block_parameter: str = "postgres_block",
) -> FleetReport:
    """`run_over_fleet` for a flow whose children differ only by their block: each child gets
    `parameters`, the target's `system` block as `block_parameter`, `fleet_target` and
    `fleet_file`."""

    def for_target(target: Target) -> dict[str, Any]:
        block = target.blocks.get(system)  # type: ignore[call-overload]
        if block is None:
            raise ConfigurationError(f"no {system} block in the fleet file")
        return {
            **parameters,
            block_parameter: block,
            "fleet_target": target.name,
            "fleet_file": fleet_file,
        }

    return run_over_fleet(
        child,
        selection,
        fleet_file,
        for_target,
        describe,
        artifact_key=artifact_key,
        event=event,
        dry_run=dry_run,
    )


def run_over_fleet(
    child: Flow[..., Any],
    selection: str | list[str],
    fleet_file: str | None,
    parameters: Callable[[Target], dict[str, Any]],
    describe: Callable[[Any], str],
    *,
    artifact_key: str,
    event: str,
    dry_run: bool = False,
) -> FleetReport:
    """Run `child` once per selected target (`parameters(target)` gives its parameters; raising
    `PerfopsError` there reports the target not run), at most `max_parallel` at once, then
    publish the fleet summary (`artifact_key`) and `event`, and end Failed when a target failed.
    Call from inside the parent flow run."""
    logger = get_run_logger()
    started = time.monotonic()
    definition, targets = load_selection(selection, fleet_file)
    label = selection if isinstance(selection, str) else ", ".join(selection)
    logger.info(
        "%s over %d targets (%s), %d at once, %d per cluster",
        child.name,
        len(targets),
        label,
        definition.max_parallel,
        definition.max_parallel_per_cluster,
    )

    def one(target: Target) -> TargetRun:
        try:
            params = parameters(target)
        except PerfopsError as exc:
            return TargetRun(target=target.name, result="not run", reason=str(exc))
        return _run_one(child, target, params, describe)

    with ThreadPoolExecutor(max_workers=min(definition.max_parallel, len(targets))) as pool:
        # Each thread runs its child in a copy of this run's context: the child is a subflow of
        # this run (a context is entered by one thread at a time, so one copy per child).
        futures = [pool.submit(copy_context().run, one, t) for t in targets]
        runs = [f.result() for f in futures]

    report = FleetReport(
        flow=child.name,
        selection=label,
        dry_run=dry_run,
        targets=runs,
        seconds=round(time.monotonic() - started, 3),
    )
    for run in report.failed:
        logger.warning("%s %s: %s", run.target, run.result, run.reason)
    logger.info("%s in %.1f s", report.summary, report.seconds)
    ui_url = PREFECT_UI_URL.value()
    publish_table(
        artifact_key,
        report.artifact_rows(str(ui_url) if ui_url else None),
        f"{child.name} over the fleet {label}"
        + (" (dry run, nothing changed)" if dry_run else "")
        + f": {report.summary}. One row per target; each target's own artifact is "
        f"{artifact_key.removesuffix('-fleet')}-<target>.",
    )
    emit(
        event,
        f"perfops.fleet.{label}" if isinstance(selection, str) else "perfops.fleet.targets",
        {
            "flow": child.name,
            "targets": len(runs),
            "failed": [r.target for r in report.failed],
            "dry_run": dry_run,
            "seconds": report.seconds,
        },
        **{"perfops.outcome": "partial" if report.failed else "complete"},
    )
    return end_run(report, report.failure)
