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

import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from contextvars import ContextVar, copy_context
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import Flow, get_run_logger, tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.client.schemas.responses import DeploymentResponse
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import State

from blocks import PostgresTarget
from blocks.redis_target import redis_address
from blocks.resolve import resolve_postgres, resolve_redis, saved_block_names
from decisions.fleet import (
    Fleet,
    FleetReport,
    Target,
    TargetRun,
    cluster_limit,
    database_limit,
    load_fleet,
    share_count,
    share_runs_lost,
    share_runs_overdue,
    share_step,
    split_shares,
)
from perfops.errors import ConfigurationError, PerfopsError, RunFailed
from perfops.heartbeats import heartbeats
from perfops.redaction import one_line
from perfops.settings import get_settings
from tasks.records import emit, end_run, publish_table
from tasks.share_runs import (
    claim_window_s,
    give_up,
    share_run_states,
    start_share_run,
    take_back,
)

# The tag of a share's run: one part of a fleet run spread over the pool's workers.
SHARE_TAG = "perfops-fleet-share"
# How often a spread parent reads its shares' states.
SHARE_POLL_S = 1.0
# A share no worker took by the time share 1 is done (and the workers had two polls to take it:
# tasks.share_runs.claim_window_s) is cancelled saying this.
TAKEN_BACK = "no worker took this share in time: its parent ran its targets"
# A run waits this long for its database's and its cluster's slots, then fails saying which.
SLOT_TIMEOUT_S = 3600.0


def load_selection(
    selection: str | list[str], fleet_file: str | None
) -> tuple[Fleet, list[Target]]:
    """The fleet file (`fleet_file`, else PERFOPS_FLEET_FILE, else deployments/fleet.yaml) and
    the targets `selection` names. A file that cannot be read says which of the three named it."""
    if fleet_file:
        path, named_by = Path(fleet_file), "named by the flow's fleet_file parameter"
    else:
        path = get_settings().fleet_file
        named_by = (
            "named by PERFOPS_FLEET_FILE"
            if os.environ.get("PERFOPS_FLEET_FILE", "").strip()
            else "the default: the flow's fleet_file parameter or PERFOPS_FLEET_FILE names another"
        )
    definition = with_discovered(load_fleet(path, named_by))
    return definition, definition.select(selection)


def with_discovered(definition: Fleet) -> Fleet:
    """The fleet with the targets its `discover` entries find among the postgres blocks saved
    on the Prefect server (one listing); blocks left out are logged with the reason."""
    if not definition.discover:
        return definition
    fleet, skipped = definition.with_discovered(saved_block_names(PostgresTarget))
    for why in skipped:
        get_run_logger().warning("not a fleet target: %s", why)
    return fleet


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
def hold_slots(
    wanted: dict[str, int],
    timeout_s: float = SLOT_TIMEOUT_S,
    *,
    ensure: bool = True,
    held_by: str = "another perfops run kept working on this database or its server",
) -> Iterator[float]:
    """Hold one slot of each global concurrency limit `wanted` (name -> its slots; created or
    set first unless `ensure` is False) while the block runs, all taken in one request; yields
    the seconds it waited. No slot within `timeout_s` raises PerfopsError naming the limits."""
    if not wanted:
        yield 0.0
        return
    if ensure:
        ensure_limits(wanted)
    logger = get_run_logger()
    names = ", ".join(wanted)
    started = time.monotonic()
    acquired = False
    try:
        with concurrency(list(wanted), occupy=1, timeout_seconds=timeout_s, strict=True):
            acquired = True
            waited = time.monotonic() - started
            logger.info("holding %s (waited %.1f s for it)", names, waited)
            yield waited
    except TimeoutError:
        if acquired:  # the work's own timeout, not the wait for the slots
            raise
        raise PerfopsError(
            f"no slot of {names} within {timeout_s:.0f} s: {held_by} (the Prefect UI's "
            "Concurrency page shows the holders)"
        ) from None


@dataclass(frozen=True)
class _ChildRun:
    """What a fleet parent in this process set for the child run it is starting: the target
    and the slots it holds for it."""

    target: str
    slots: frozenset[str]


# Set by `_run_one` around the child's call (a subflow runs in the caller's thread and
# context): no run from the API or the UI can set it, whatever parameters it is given.
_CHILD_RUN: ContextVar[_ChildRun | None] = ContextVar("perfops_fleet_child_run", default=None)


def _started_for(fleet_target: str | None) -> _ChildRun | None:
    child = _CHILD_RUN.get()
    if fleet_target is None or child is None or child.target != fleet_target:
        return None
    return child


def verified_fleet_target(fleet_target: str | None) -> str | None:
    """`fleet_target` when this run is that target's child, started by a fleet parent in this
    process, else None: a run given `fleet_target` by hand (an API or UI run) is a single run,
    holding its database's slot, keyed and checked as one (logged)."""
    if fleet_target is None or _started_for(fleet_target) is not None:
        return fleet_target
    get_run_logger().warning(
        "fleet_target %r ignored: this run was not started by a fleet parent for that target, "
        "so it runs as a single run (its own database slot, artifact and checks)",
        fleet_target,
    )
    return None


@contextmanager
def database_slots(
    target: PostgresTarget, *, changes: bool, fleet_target: str | None = None
) -> Iterator[float]:
    """A run that `changes` the database holds its database's limit (1 slot) while the block
    runs, so two perfops runs never change one database at once; yields the seconds waited.
    A fleet child holds nothing itself when its parent (in this process, for `fleet_target`)
    took that slot before the child run started; any other run takes it here, whatever its
    parameters say. A read-only run holds nothing."""
    if not changes:
        yield 0.0
        return
    limit = database_limit(target.resource_id())
    child = _started_for(fleet_target)
    if child is not None and limit in child.slots:
        yield 0.0
        return
    with hold_slots({limit: 1}) as waited:
        yield waited


def fleet_slots(
    definition: Fleet, target: Target, *, changes: bool, system: str = "postgres"
) -> dict[str, int]:
    """The slots a fleet child needs, taken by the parent before the child starts: its
    cluster's (`max_parallel_per_cluster`) and, when it `changes` the database, the database's
    (1). Loads the target's block to know which database and server it is."""
    block = target.blocks.get(system)  # type: ignore[call-overload]
    if block is None:
        raise ConfigurationError(f"no {system} block in the fleet file")
    if system == "redis":  # a cache: paced per Redis server; its flows need no exclusion
        address, _ = redis_address(resolve_redis(block).value.url)
        return {
            cluster_limit(target.cluster or f"redis-{address}"): definition.max_parallel_per_cluster
        }
    resource = resolve_postgres(block).value.resource_id()
    wanted = {cluster_limit(target.cluster_for(resource)): definition.max_parallel_per_cluster}
    if changes:
        wanted[database_limit(resource)] = 1
    return wanted


def _run_one(
    child: Flow[..., Any],
    target: Target,
    parameters: dict[str, Any],
    slots: dict[str, int],
    describe: Callable[[Any], str],
) -> TargetRun:
    labels = [f"target:{target.name}"] + ([f"cluster:{target.cluster}"] if target.cluster else [])
    waited: float | None = None
    try:
        # heartbeats off: the parent's run beats for this process; each child's would add up
        # to 1 s to it (perfops.heartbeats)
        with hold_slots(slots, ensure=False) as waited, tags(*labels), heartbeats(False):
            started = time.monotonic()
            named = child.with_options(flow_run_name=f"{child.name}-{target.name}")
            token = _CHILD_RUN.set(_ChildRun(target.name, frozenset(slots)))
            try:
                state = cast("State[Any]", named(**parameters, return_state=True))
            finally:
                _CHILD_RUN.reset(token)
            seconds = round(time.monotonic() - started, 3)
    except Exception as exc:  # noqa: BLE001 - one target's failure must not stop the others
        return TargetRun(
            target=target.name,
            result="not run",
            reason=one_line(exc, empty=type(exc).__name__),
            waited=waited,
        )
    try:
        result = state.result(raise_on_failure=False)
        if isinstance(result, RunFailed):  # its work failed: the message says what, its report
            reason, changed = state.message or str(result), describe(result.report)
        elif isinstance(result, BaseException):
            reason, changed = one_line(result, empty=type(result).__name__), ""
        else:
            reason, changed = state.message or str(state.name), describe(result)
    except Exception as exc:  # noqa: BLE001 - an unreadable result fails this target only
        reason, changed = f"its result could not be read: {_error(exc)}", ""
    return TargetRun(
        target=target.name,
        result="done" if state.is_completed() else "failed",
        reason=reason,
        changed=changed,
        flow_run_id=str(state.state_details.flow_run_id),
        seconds=seconds,
        waited=round(waited, 3) if waited is not None else None,
    )


def _run_targets(
    child: Flow[..., Any],
    definition: Fleet,
    targets: list[Target],
    parameters: Callable[[Fleet, Target], tuple[dict[str, Any], dict[str, int]]],
    describe: Callable[[Any], str],
) -> list[TargetRun]:
    """One child run per target in this process, each started once it holds its slots, at
    most `max_parallel` at once."""

    def prepare(target: Target) -> tuple[dict[str, Any], dict[str, int]] | TargetRun:
        try:
            return parameters(definition, target)
        except PerfopsError as exc:
            return TargetRun(target=target.name, result="not run", reason=one_line(exc))
        except Exception as exc:  # noqa: BLE001 - one target's bad block must not stop the others
            return TargetRun(
                target=target.name,
                result="not run",
                reason=f"cannot prepare its run from its blocks: {_error(exc)}",
            )

    with ThreadPoolExecutor(max_workers=min(definition.max_parallel, len(targets))) as pool:
        # Each thread works in a copy of this run's context, so its child is a subflow of this
        # run (a context is entered by one thread at a time, so one copy per call).
        prepared = [
            f.result() for f in [pool.submit(copy_context().run, prepare, t) for t in targets]
        ]
        # Every limit the children hold, made or set once, before any child starts.
        ensure_limits(
            {n: k for p in prepared if not isinstance(p, TargetRun) for n, k in p[1].items()}
        )
        futures = [
            p
            if isinstance(p, TargetRun)
            else pool.submit(copy_context().run, _run_one, child, t, p[0], p[1], describe)
            for t, p in zip(targets, prepared, strict=True)
        ]
        return [f if isinstance(f, TargetRun) else f.result() for f in futures]


def _error(exc: BaseException) -> str:
    """An unexpected error in one line, redacted, with its type (`ValueError: Port out of
    range 0-65535`)."""
    return f"{type(exc).__name__}: {one_line(exc, empty='')}".rstrip(": ")


def _is_share() -> bool:
    """Whether this run is one share of a spread fleet run (started by its parent)."""
    return SHARE_TAG in (runtime_flow_run.tags or [])


def _shares_wanted(definition: Fleet, targets: int) -> int:
    """How many shares this run splits its targets into: the fleet's `spread` for a parent
    run started from a deployment (its shares are runs of that deployment), within the
    deployment's concurrency limit, which this run holds a slot of (`share_count`), else 1."""
    if definition.spread == 1 or targets < 2 or _is_share():
        return 1
    logger = get_run_logger()
    deployment_id = runtime_deployment.id
    if deployment_id is None:
        logger.info(
            "spread %s: not a deployment run, so every target runs in this process",
            definition.spread,
        )
        return 1
    online = 0
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
        limit, cancels_new = deployment_limit(deployment)
        if definition.spread == "auto":
            pool = deployment.work_pool_name
            online = sum(
                1
                for w in (client.read_workers_for_work_pool(pool) if pool else [])
                if str(w.status).upper().endswith("ONLINE")
            )
    count = share_count(definition.spread, online, targets, limit, cancels_new=cancels_new)
    if limit is not None and count == 1:
        logger.info(
            "spread %s: deployment %s has concurrency_limit %d%s and this run holds one of its "
            "slots, so every target runs in this process (a share would wait for that slot)",
            definition.spread,
            deployment.name,
            limit,
            " (cancel_new)" if cancels_new else "",
        )
    return count


def deployment_limit(deployment: DeploymentResponse) -> tuple[int | None, bool]:
    """The deployment's concurrency limit (None: none, or inactive), and whether it cancels
    the runs over it (collision strategy CANCEL_NEW) rather than queueing them."""
    gcl = deployment.global_concurrency_limit
    if gcl is None or not gcl.active:
        return None, False
    options = deployment.concurrency_options
    cancels = (
        options is not None and options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    )
    return gcl.limit, cancels


def _run_spread(
    child: Flow[..., Any],
    definition: Fleet,
    shares: list[list[Target]],
    parameters: Callable[[Fleet, Target], tuple[dict[str, Any], dict[str, int]]],
    describe: Callable[[Any], str],
    artifact_key: str,
) -> list[TargetRun]:
    """The targets split into shares: shares 2..N started as runs of this run's deployment
    (any worker of the pool takes each), share 1 run here; then each share's rows read back
    from its artifact. A share no worker has started by the time share 1 is done, and after
    the pool's workers had two polls to take it (`claim_window_s`), is taken back (claimed as
    Pending, so no worker starts it too, then cancelled; a share the server keeps waiting for
    its deployment's concurrency slot counts as not started) and run here. After the fleet's
    `share_timeout_s` the parent stops waiting (`share_step`): a share still running is
    cancelled and its targets reported not run."""
    logger = get_run_logger()
    count = len(shares)
    own_parameters = dict(runtime_flow_run.parameters)
    started: list[tuple[str, str, list[Target]]] = []
    for number, share in enumerate(shares[1:], start=2):
        name = f"{child.name}-share-{number}-of-{count}"
        run_id = start_share_run(
            cast("UUID", runtime_deployment.id),
            {**own_parameters, "targets": [t.name for t in share]},
            name,
            SHARE_TAG,
        )
        started.append((run_id, name, share))
    now = time.monotonic()
    claimable_at = now + claim_window_s()
    overdue_at = now + definition.share_timeout_s
    logger.info(
        "spread over %d shares: share 1 (%d targets) here, %s started for any worker",
        count,
        len(shares[0]),
        ", ".join(name for _, name, _ in started),
    )
    runs = _run_targets(child, definition, shares[0], parameters, describe)
    waiting = list(started)
    while waiting:
        states = share_run_states([i for i, _, _ in waiting])
        still: list[tuple[str, str, list[Target]]] = []
        for run_id, name, share in waiting:
            state = states.get(run_id)
            now = time.monotonic()
            step = share_step(
                state.type.value if state is not None else None,
                claimable=now >= claimable_at,
                overdue=now >= overdue_at,
            )
            if step == "collect" and state is not None:
                runs += _share_rows(run_id, name, share, state, artifact_key)
            elif step == "take back" and take_back(run_id, TAKEN_BACK):
                logger.info(
                    "no worker started %s (%s): running its %d targets here",
                    name,
                    state.name if state is not None else "gone",
                    len(share),
                )
                runs += _run_targets(child, definition, share, parameters, describe)
            elif step == "give up":
                rows = share_runs_overdue(
                    share,
                    name,
                    state.name if state is not None else None,
                    definition.share_timeout_s,
                )
                logger.warning("%s: %s", name, rows[0].reason)
                if state is not None:
                    give_up(run_id, rows[0].reason)
                runs += rows
            else:
                still.append((run_id, name, share))
        waiting = still
        if waiting:
            time.sleep(SHARE_POLL_S)
    return runs


def _share_rows(
    run_id: str, name: str, share: list[Target], state: State[Any], artifact_key: str
) -> list[TargetRun]:
    """The rows a finished share run published (`<artifact_key>-share`), or, when it left
    none (crashed, cancelled) or they cannot be read, each of its targets not run, saying
    why."""
    try:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[f"{artifact_key}-share"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]),
                ),
                limit=1,
            )
        if not found:
            return share_runs_lost(share, name, str(state.name), state.message or "")
        data = found[0].data
        rows = json.loads(data) if isinstance(data, str) else data
        return [TargetRun.model_validate(row) for row in rows or []]
    except Exception as exc:  # noqa: BLE001 - the other shares' rows still count
        why = f"its rows could not be read: {_error(exc)}"
        return share_runs_lost(share, name, str(state.name), why)


def fan_out(
    child: Flow[..., Any],
    selection: str | list[str],
    fleet_file: str | None,
    parameters: dict[str, Any],
    *,
    artifact_key: str,
    event: str,
    dry_run: bool,
    changes: bool,
    describe: Callable[[Any], str] = lambda report: str(getattr(report, "summary", "")),
    system: str = "postgres",
    block_parameter: str = "postgres_block",
    block_given: str | None = None,
) -> FleetReport:
    """`run_over_fleet` for a flow whose children differ only by their block: each child gets
    `parameters`, the target's `system` block as `block_parameter`, and `fleet_target`; it
    holds its cluster's slot and, when it `changes` the database, the database's.
    `block_given`: the flow's own `block_parameter` as the run was given it; a fleet run takes
    each target's block from the fleet file, so one given too is refused (the CLI refuses the
    same), not silently ignored."""
    if block_given is not None:
        raise ConfigurationError(
            f"{block_parameter}={block_given!r} names one target's block, but targets="
            f"{selection!r} runs over the fleet, each target with its own from the fleet file: "
            f"give one of them"
        )

    def for_target(definition: Fleet, target: Target) -> tuple[dict[str, Any], dict[str, int]]:
        slots = fleet_slots(definition, target, changes=changes, system=system)
        block = target.blocks[system]  # type: ignore[index]
        return {**parameters, block_parameter: block, "fleet_target": target.name}, slots

    return run_over_fleet(
        child,
        selection,
        fleet_file,
        for_target,
        describe,
        artifact_key=artifact_key,
        event=event,
        dry_run=dry_run,
        system=system,
    )


def scaling_parameters(target: Target) -> dict[str, Any]:
    """A scaling flow's fleet child's parameters for `target`'s Auto Scaling group (the
    children of scale_predictively and tune_scaling get the same): `group`, the key of the
    group's state (`eu-west-1/api`, `decisions.fleet.scaling_key`: groups of one name in two
    regions or accounts keep apart, and a group's decisions read the tuning stored under its
    own key), the target's Prometheus and Redis blocks, and `fleet_target`."""
    if target.autoscaling is None:
        raise ConfigurationError(f"target {target.name} has no autoscaling group in the fleet file")
    return {
        "group": target.autoscaling.key,
        "metrics_block": target.blocks.get("prometheus"),
        "redis_block": target.blocks.get("redis"),
        "fleet_target": target.name,
    }


def run_over_fleet(
    child: Flow[..., Any],
    selection: str | list[str],
    fleet_file: str | None,
    parameters: Callable[[Fleet, Target], tuple[dict[str, Any], dict[str, int]]],
    describe: Callable[[Any], str],
    *,
    artifact_key: str,
    event: str,
    dry_run: bool = False,
    system: str | None = None,
) -> FleetReport:
    """Run `child` once per selected target (`parameters(fleet, target)` gives its parameters
    and the slots it holds; raising `PerfopsError` there reports the target not run), each
    started once it holds its slots, at most `max_parallel` at once, then
    publish the fleet summary (`artifact_key`) and `event`, and end Failed when a target failed.
    With `system`, only the selected targets that have it (`Target.has`) are run.
    Call from inside the parent flow run."""
    logger = get_run_logger()
    started = time.monotonic()
    definition, targets = load_selection(selection, fleet_file)
    if system is not None:  # a flow over databases leaves Auto Scaling groups out, and back
        targets = [t for t in targets if t.has(system)]
        if not targets:
            raise ConfigurationError(f"no target of the selection has {system} in the fleet file")
    label = selection if isinstance(selection, str) else ", ".join(selection)
    logger.info(
        "%s over %d targets (%s), %d at once, %d per cluster",
        child.name,
        len(targets),
        label,
        definition.max_parallel,
        definition.max_parallel_per_cluster,
    )

    shares = split_shares(targets, _shares_wanted(definition, len(targets)))
    if len(shares) == 1:
        runs = _run_targets(child, definition, targets, parameters, describe)
    else:
        runs = _run_spread(child, definition, shares, parameters, describe, artifact_key)
        order = {t.name: i for i, t in enumerate(targets)}  # the fleet's order, as unspread
        runs.sort(key=lambda r: order.get(r.target, len(order)))
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
    if _is_share():  # its parent reads these rows back and publishes the fleet's summary
        publish_table(
            f"{artifact_key}-share",
            [run.model_dump(mode="json") for run in runs],
            f"{child.name}: one share of the fleet run over {label}: {report.summary}. "
            f"The fleet's summary is {artifact_key}, on the parent run.",
        )
        return end_run(report, report.failure)
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
