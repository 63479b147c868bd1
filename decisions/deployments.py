"""What `perfops deploy` decides around `prefect deploy --all`: which outside systems each
deployment needs and whether they are configured, which parameters and schedule states an
operator changed on the server (kept across redeploys), and the strict parameter schema.

Pure: the caller reads prefect.yaml, the server's deployments, the work pool's environment and
the saved blocks, and applies what these functions return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_MISSING: Any = object()


@dataclass(frozen=True)
class System:
    """How a flow finds one outside system: a block named by a parameter or by a
    `PERFOPS_*_BLOCK` variable, else connection settings in `PERFOPS_*` variables."""

    name: str
    block_type: str
    block_parameters: tuple[str, ...]
    block_variable: str
    settings_variables: tuple[str, ...]
    create_hint: str


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System(
            "postgres",
            "perfops-postgres-target",
            ("postgres_block",),
            "PERFOPS_POSTGRES_BLOCK",
            ("PERFOPS_DSN",),
            "python deployments/create_blocks.py postgres",
        ),
        System(
            "prometheus",
            "perfops-prometheus-source",
            ("prometheus_block", "metrics_block"),
            "PERFOPS_PROMETHEUS_BLOCK",
            ("PERFOPS_PROMETHEUS_URL",),
            "python deployments/create_blocks.py prometheus",
        ),
        System(
            "redis",
            "perfops-redis-target",
            ("redis_block",),
            "PERFOPS_REDIS_BLOCK",
            ("PERFOPS_REDIS_URL",),
            "python deployments/create_blocks.py redis",
        ),
        System(
            "archive",
            "s3-bucket",
            ("s3_block",),
            "PERFOPS_S3_BLOCK",
            ("PERFOPS_S3_BUCKET",),
            "python deployments/create_blocks.py s3",
        ),
        System(
            "slack",
            "perfops-slack-escalation-target",
            ("slack_block",),
            "PERFOPS_SLACK_BLOCK",
            ("PERFOPS_SLACK_TOKEN",),
            "python deployments/create_blocks.py slack",
        ),
        System(
            "email",
            "email-server-credentials",
            ("email_block",),
            "PERFOPS_EMAIL_BLOCK",
            ("PERFOPS_SMTP_HOST",),
            "python deployments/create_blocks.py email",
        ),
        System(
            "load_target",
            "perfops-load-target",
            ("target_block",),
            "PERFOPS_LOAD_TARGET_BLOCK",
            ("PERFOPS_LOAD_TARGET_URL",),
            "LoadTarget(base_url=..., allowed_hosts=[...]).save(NAME) (docs/load-tests.md)",
        ),
    )
}

# What each deployment needs before its schedule may run unattended. Without them a flow falls
# back to its embedded default (the local demo database, a CSV trace, files under out/), which on
# a worker means failures on every run or, worse, work done on the wrong thing. docs/deployments.md
# shows the same table; tests/decisions/test_deployments.py checks it covers prefect.yaml.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "check_connections": (),
    "suggest_indexes": ("postgres",),
    "find_slow_queries": ("postgres",),
    "check_index_health": ("postgres",),
    "refresh_stale_statistics": ("postgres",),
    "rotate_partitions": ("postgres",),
    "generate_weekly_report": ("prometheus", "email"),
    "evaluate_slos": ("prometheus", "slack", "redis"),
    "acknowledge_alert": ("slack", "redis"),
    "scale_predictively": ("prometheus", "redis"),
    "tune_scaling": ("prometheus", "redis"),
    "apply_scaling_schedule": (),
    "run_load_test": ("load_target", "postgres"),
    "run_load_share": ("load_target",),
    "invalidate_cache": ("redis",),
    "warm_cache": ("redis", "postgres"),
    "collect_cache_stats": ("redis",),
}


# The systems a fleet run of a deployment (its `targets` parameter set) reaches through each
# target's own block in the fleet file (docs/fleet.md), not through one block for the
# deployment: a missing block fails that target's child run, named, not the schedule.
FLEET_SYSTEMS: dict[str, tuple[str, ...]] = {
    "suggest_indexes": ("postgres",),
    "find_slow_queries": ("postgres",),
    "check_index_health": ("postgres",),
    "refresh_stale_statistics": ("postgres",),
    "rotate_partitions": ("postgres",),
    "invalidate_cache": ("redis",),
    "warm_cache": ("redis",),
    "collect_cache_stats": ("redis",),
}


@dataclass(frozen=True)
class Readiness:
    """Whether one system is configured for one deployment, and how (or what is missing)."""

    system: str
    configured: bool
    how: str


def system_readiness(
    system: str,
    parameters: Mapping[str, Any],
    pool_env: Mapping[str, str],
    saved_blocks: Mapping[str, set[str]],
    assumed: set[str] | frozenset[str] = frozenset(),
    deployment_env: Mapping[str, str] | None = None,
) -> Readiness:
    """Is `system` configured for a deployment with these parameters on a work pool whose job
    environment is `pool_env`? `saved_blocks` maps a block type slug to the saved names;
    `assumed` are systems the operator says the workers' own environment configures;
    `deployment_env` the deployment's own job variables' `env`, which override the pool's."""
    spec = SYSTEMS[system]
    saved = saved_blocks.get(spec.block_type, set())
    named = [
        (f"parameter {p}", str(parameters[p])) for p in spec.block_parameters if parameters.get(p)
    ]
    own = deployment_env or {}
    if own.get(spec.block_variable):
        named.append((f"job variable {spec.block_variable}", own[spec.block_variable]))
    elif pool_env.get(spec.block_variable):
        named.append((f"work pool variable {spec.block_variable}", pool_env[spec.block_variable]))
    if named:
        where, block = named[0]
        if block in saved:
            return Readiness(system, True, f"block {block!r} ({where})")
        listing = ", ".join(sorted(saved)) or "none saved"
        return Readiness(
            system,
            False,
            f"{where} names {spec.block_type} block {block!r}, which does not exist "
            f"(saved: {listing})",
        )
    for variable in spec.settings_variables:
        if own.get(variable):
            return Readiness(system, True, f"job variable {variable}")
        if pool_env.get(variable):
            return Readiness(system, True, f"work pool variable {variable}")
    if system in assumed:
        return Readiness(system, True, "the workers' environment (--configured)")
    return Readiness(
        system,
        False,
        f"not configured: set {spec.block_variable} in the work pool's environment "
        f"(block: {spec.create_hint}) or pass --configured {system} when the workers' own "
        "environment has it",
    )


def deployment_readiness(
    deployment: str,
    parameters: Mapping[str, Any],
    pool_env: Mapping[str, str],
    saved_blocks: Mapping[str, set[str]],
    assumed: set[str] | frozenset[str] = frozenset(),
    deployment_env: Mapping[str, str] | None = None,
) -> list[Readiness]:
    """One `Readiness` per system the deployment needs (none for an unknown deployment). A
    fleet deployment (`targets` set) gets the systems of FLEET_SYSTEMS from each target's
    block in the fleet file, so they need no block of their own."""
    targets = parameters.get("targets")
    by_fleet = FLEET_SYSTEMS.get(deployment, ()) if targets not in (None, "", []) else ()
    return [
        Readiness(
            s,
            True,
            f"each target's {s} block in the fleet file (parameter targets={targets!r}; "
            "PERFOPS_FLEET_FILE or the fleet_file parameter names the file)",
        )
        if s in by_fleet
        else system_readiness(s, parameters, pool_env, saved_blocks, assumed, deployment_env)
        for s in REQUIREMENTS.get(deployment, ())
    ]


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Flatten nested dicts to {path: leaf}; lists and empty dicts are leaves."""
    if isinstance(value, Mapping) and value:
        out: dict[tuple[str, ...], Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, (*prefix, str(key))))
        return out
    return {prefix: value}


def _nest(leaves: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path, value in sorted(leaves.items(), key=lambda item: len(item[0])):
        node = root
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[path[-1]] = value
    return root


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def merge_parameters(
    last_yaml: Mapping[str, Any] | None,
    applied: Mapping[str, Any] | None,
    yaml: Mapping[str, Any],
    server: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], list[str]]:
    """Three-way merge of a deployment's parameters, value by value (nested dicts by key).

    `yaml` is what prefect.yaml says now and `last_yaml` what it said at the last `perfops
    deploy`; `server` is what the deployment holds now and `applied` what the last `perfops
    deploy` left there. A value the operator changed on the server (server != applied) is kept
    unless prefect.yaml changed the same value too (then prefect.yaml wins and a note says so);
    a value only prefect.yaml changed is taken from it, and a value neither changed stays as
    the last deploy left it (an operator's value kept then is kept again). Without a record of
    the last deploy,
    every server value that differs from prefect.yaml is taken as the operator's and kept.
    Returns (merged parameters, notes for the operator)."""
    if server is None:
        return dict(yaml), []
    new, old = _leaves(dict(yaml)), _leaves(dict(last_yaml if last_yaml is not None else yaml))
    theirs = _leaves(dict(server))
    before = _leaves(dict(applied)) if applied is not None else None
    merged: dict[tuple[str, ...], Any] = {}
    notes: list[str] = []
    for path in sorted({*new, *old, *theirs}):
        ours_now, ours_then = new.get(path, _MISSING), old.get(path, _MISSING)
        server_now = theirs.get(path, _MISSING)
        if before is None:
            operator_changed = server_now is not _MISSING and server_now != ours_now
        else:
            operator_changed = server_now != before.get(path, _MISSING)
        yaml_changed = ours_now != ours_then
        if operator_changed and not yaml_changed:
            value = server_now
            if server_now is not _MISSING:
                shown = "unset" if ours_now is _MISSING else repr(ours_now)
                notes.append(
                    f"kept {_dotted(path)}={server_now!r} set on the server (prefect.yaml: {shown})"
                )
        elif operator_changed and yaml_changed and server_now != ours_now:
            value = ours_now
            notes.append(
                f"prefect.yaml changed {_dotted(path)} to "
                f"{'unset' if ours_now is _MISSING else repr(ours_now)}: it replaces "
                f"{server_now!r} set on the server"
            )
        elif before is not None and not operator_changed and not yaml_changed:
            value = server_now  # as the last deploy left it: an operator's value it kept too
        else:
            value = ours_now
        if value is not _MISSING:
            merged[path] = value
    return _nest({p: v for p, v in merged.items() if p}), notes


def schedule_active(
    planned: bool,
    server: bool | None,
    applied: bool | None,
    ready: bool = True,
    last_planned: bool | None = None,
) -> tuple[bool, str | None]:
    """Whether one schedule ends active. `planned` is what this deploy wants (prefect.yaml's
    `active` and the systems it needs) and `last_planned` what the last `perfops deploy` wanted
    (None if unknown); `server` the schedule's state before the deploy (None for a new one) and
    `applied` what the last `perfops deploy` set (None if unknown). A schedule an operator
    paused or resumed keeps that state, on every later deploy until the plan itself changes;
    with no record, a paused one stays paused. A schedule whose deployment is not `ready` (its
    systems not configured) stays off whatever its state was: every run would fail.
    Returns (active, a note when the operator's state wins over the plan)."""
    if not ready:
        return False, None
    if server is None:
        return planned, None
    operator_changed = server != applied if applied is not None else not server
    kept = operator_changed or (applied is not None and last_planned == planned)
    if kept and server != planned:
        state = "active" if server else "paused"
        return server, f"kept {state} as set on the server"
    return planned, None


def match_schedules(
    planned: list[str], server: list[tuple[str, bool]]
) -> dict[str, tuple[bool, str | None]]:
    """The state each of prefect.yaml's schedules (`planned`, by key: `cron 23 3 * * * UTC`)
    had on the server before the deploy: {key: (active, the server's key when it differs)}.
    A schedule is found by its key; a schedule an operator edited on the server (its cron or
    time zone changed, so its key is no longer prefect.yaml's) is paired, in order, with a
    prefect.yaml schedule found nowhere else, so a pause set with the edit is not lost when
    `prefect deploy` puts prefect.yaml's timing back. Schedules found nowhere are left out
    (new ones)."""
    found: dict[str, tuple[bool, str | None]] = {
        key: (active, None) for key, active in server if key in planned
    }
    edited = [(key, active) for key, active in server if key not in planned]
    unmatched = [key for key in planned if key not in found]
    for key, (old_key, active) in zip(unmatched, edited, strict=False):
        found[key] = (active, old_key)
    return found


def deployment_paused(
    planned: bool, server: bool | None, applied: bool | None, last_planned: bool | None = None
) -> tuple[bool, str | None]:
    """Whether the deployment ends paused. `planned` is prefect.yaml's `paused` (default
    False) and `last_planned` what it said at the last `perfops deploy` (None if unknown);
    `server` the deployment's `paused` before the deploy (None for a new one) and `applied`
    what the last `perfops deploy` left (None if unknown). `prefect deploy` always un-pauses a
    deployment, so one an operator paused (the toggle on its page in the UI, which stops every
    schedule of it at once) is paused again, on every later deploy until the operator resumes
    it or prefect.yaml's `paused` changes; with no record, a paused one stays paused.
    Returns (paused, a note when the operator's state wins over prefect.yaml)."""
    active, note = schedule_active(
        not planned,
        None if server is None else not server,
        None if applied is None else not applied,
        last_planned=None if last_planned is None else not last_planned,
    )
    if note is not None:
        note = f"kept {'running' if active else 'paused'} as set on the server"
    return not active, note


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter schema with unknown top-level parameters refused: Prefect's generated
    schema refuses unknown nested keys (409) but accepts unknown top-level ones, and such a run
    then crashes at start with no reason given."""
    return {**schema, "additionalProperties": False}
