"""One flow over a fleet: the parent run fans out one child run per target, as Prefect subflow
runs in this process, and ends with a summary (docs/fleet.md).

- Each child is the same flow called for one target, its run named `<flow>-<target>` and tagged
  `target:<name>` and `cluster:<cluster>`, so the UI filters runs by target.
- Exclusion and pacing per target, not per deployment: a child starts only once it holds a slot
  of two Prefect global concurrency limits, `perfops-target-<name>` (limit 1: two perfops runs
  never work on one database at once) and `perfops-cluster-<cluster>` (limit
  `max_parallel_per_cluster`: one PostgreSQL server is not hammered). Both are taken in one
  request (all or none). The fleet file's `max_parallel` bounds the threads of one parent run.
- Failures are isolated: a child that fails (an unreachable database, a missing block) fails its
  own run; the parent goes on and ends Failed with `1 of 3 targets failed: ...`.
- The parent leaves the fleet summary artifact (one row per target with a link to its run) and
  one event; the children leave their own per-target artifacts and events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
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

from decisions.fleet import (
    Fleet,
    FleetReport,
    Target,
    TargetRun,
    cluster_limit,
    load_fleet,
    target_limit,
)
from perfops.errors import PerfopsError
from perfops.redaction import one_line
from perfops.settings import get_settings
from tasks.records import emit, end_run, publish_table

# A child waits this long for its target's and its cluster's slots, then is reported not run.
SLOT_TIMEOUT_S = 3600.0


def load_selection(
    selection: str | list[str], fleet_file: str | None
) -> tuple[Fleet, list[Target]]:
    """The fleet file (`fleet_file`, else PERFOPS_FLEET_FILE, else deployments/fleet.yaml) and
    the targets `selection` names."""
    definition = load_fleet(Path(fleet_file) if fleet_file else get_settings().fleet_file)
    return definition, definition.select(selection)


def ensure_limits(targets: list[Target], per_cluster: int) -> None:
    """Create the targets' and clusters' global concurrency limits, or set them to the fleet
    file's values (the file is the source of truth: an edit in the UI lasts until the next run)."""
    wanted = {target_limit(t): 1 for t in targets}
    wanted.update({cluster_limit(t): per_cluster for t in targets})
    with get_client(sync_client=True) as client:
        for name, limit in wanted.items():
            try:
                existing = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with suppress(ObjectAlreadyExists):  # another parent made it meanwhile
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=limit)
                    )
                continue
            if existing.limit != limit or not existing.active:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
                )


def _run_one(
    child: Flow[..., Any],
    target: Target,
    parameters: dict[str, Any],
    describe: Callable[[Any], str],
    slot_timeout_s: float,
) -> TargetRun:
    started = time.monotonic()
    try:
        with (
            concurrency(
                [target_limit(target), cluster_limit(target)],
                occupy=1,
                timeout_seconds=slot_timeout_s,
                strict=True,
            ),
            tags(f"target:{target.name}", f"cluster:{target.cluster_name}"),
        ):
            named = child.with_options(flow_run_name=f"{child.name}-{target.name}")
            state = cast("State[Any]", named(**parameters, return_state=True))
    except TimeoutError:
        return TargetRun(
            target=target.name,
            result="not run",
            reason=f"no slot of {target_limit(target)} / {cluster_limit(target)} within "
            f"{slot_timeout_s:.0f} s (another run held it)",
        )
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
    slot_timeout_s: float = SLOT_TIMEOUT_S,
) -> FleetReport:
    """Run `child` once per selected target (`parameters(target)` gives its parameters; raising
    `PerfopsError` there reports the target not run), at most `max_parallel` at once, then
    publish the fleet summary (`artifact_key`) and `event`, and end Failed when a target failed.
    Call from inside the parent flow run."""
    logger = get_run_logger()
    started = time.monotonic()
    definition, targets = load_selection(selection, fleet_file)
    label = selection if isinstance(selection, str) else ", ".join(selection)
    ensure_limits(targets, definition.max_parallel_per_cluster)
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
        return _run_one(child, target, params, describe, slot_timeout_s)

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
