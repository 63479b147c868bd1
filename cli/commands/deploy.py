"""`perfops deploy`: `prefect deploy --all` that keeps what operators set on the server.

Around Prefect's own deploy it (1) keeps parameters, job variables, schedule states and a
deployment's pause that an operator changed in the UI or API (a three-way merge against what the
last `perfops deploy` applied, recorded in a Prefect variable per deployment), (2) turns a
schedule on only once the systems its deployment needs are configured (a block named by a
parameter, the deployment's job variables or the work pool's environment, or
`--configured SYSTEM`), and (3) makes the API refuse unknown top-level parameters (409 with the
name) instead of accepting them and crashing the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer
import yaml

from cli.support import JsonFlag, err, fail, out, print_json
from decisions.deployments import (
    REQUIREMENTS,
    SYSTEMS,
    Readiness,
    deployment_paused,
    deployment_readiness,
    match_schedules,
    merge_parameters,
    schedule_active,
    strict_schema,
)
from perfops.redaction import redact
from perfops.settings import PROJECT_DIR, apply_prefect_defaults

RECORD_PREFIX = "perfops-deploy-"
PART = "-part-"
# A Prefect variable holds at most 5,000 characters of JSON; a part is a string of its record's
# JSON text, whose quotes JSON escapes again (at most twice as long).
RECORD_INLINE_CHARS = 4500
RECORD_PART_CHARS = 2000


@dataclass
class Planned:
    """One deployment of prefect.yaml and what `perfops deploy` did to it."""

    name: str
    flow: str
    pool: str
    parameters: dict[str, Any]
    schedules: list[str]
    yaml_active: list[bool]
    yaml_paused: bool = False
    job_variables: dict[str, Any] = field(default_factory=dict)
    created: bool = False
    paused: bool = False
    active: list[bool] = field(default_factory=list)
    planned: list[bool] = field(default_factory=list)
    readiness: list[Readiness] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _schedule_key(schedule: dict[str, Any]) -> str:
    """One schedule's timing, the same for prefect.yaml's and the server's spelling of it
    (`interval: 600` in prefect.yaml is `600.0` on the server)."""
    inner = schedule.get("schedule", schedule)
    for kind in ("cron", "interval", "rrule"):
        value = inner.get(kind)
        if value is not None:
            if kind == "interval" and isinstance(value, int | float):
                value = f"{float(value):g}"
            return f"{kind} {value} {inner.get('timezone') or 'UTC'}"
    return json.dumps(inner, sort_keys=True)


def read_project(path: Path) -> list[Planned]:
    """The deployments prefect.yaml declares, with their parameters and schedules."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read {path}: {exc}")
    planned = []
    for entry in document.get("deployments") or []:
        flow = str(entry["entrypoint"]).rsplit(":", 1)[1]
        work_pool = entry.get("work_pool") or {}
        pool = work_pool.get("name", "")
        planned.append(
            Planned(
                name=entry["name"],
                flow=flow,
                pool=pool,
                parameters=entry.get("parameters") or {},
                schedules=[_schedule_key(s) for s in entry.get("schedules") or []],
                yaml_active=[bool(s.get("active", True)) for s in entry.get("schedules") or []],
                yaml_paused=bool(entry.get("paused", False)),
                job_variables=work_pool.get("job_variables") or {},
            )
        )
    return planned


class PrefectApi:
    """The few Prefect REST calls `perfops deploy` makes (URL and key from Prefect's settings)."""

    def __init__(self) -> None:
        from prefect.settings import get_current_settings

        # The environment first: Prefect's settings object is read once, at import.
        api = get_current_settings().api
        key = os.environ.get("PREFECT_API_KEY") or (
            api.key.get_secret_value() if api.key is not None else None
        )
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = os.environ.get("PREFECT_API_URL") or str(api.url or "")
        self.http = httpx.Client(base_url=self.url.rstrip("/") + "/", headers=headers, timeout=30)

    def _ok(self, response: httpx.Response, what: str) -> Any:
        if response.status_code >= 400:
            fail(f"Prefect API refused {what}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def deployment(self, flow: str, name: str) -> dict[str, Any] | None:
        found = self.http.get(f"deployments/name/{flow}/{name}")
        return None if found.status_code == 404 else self._ok(found, f"reading {flow}/{name}")

    def _variable(self, variable: str) -> Any:
        found = self.http.get(f"variables/name/{variable}")
        if found.status_code == 404:
            return None
        return self._ok(found, f"reading variable {variable}")["value"]

    def record(self, name: str) -> dict[str, Any] | None:
        value = self._variable(f"{RECORD_PREFIX}{name}")
        if isinstance(value, dict) and isinstance(value.get("parts"), int):  # a large record
            text = "".join(
                str(self._variable(f"{RECORD_PREFIX}{name}{PART}{n}") or "")
                for n in range(1, value["parts"] + 1)
            )
            try:
                value = json.loads(text)
            except ValueError:  # a part lost or edited: as if there were no record
                return None
        return value if isinstance(value, dict) else None

    def _save(self, variable: str, value: Any) -> None:
        body = {"name": variable, "value": value, "tags": ["perfops"]}
        if self.http.get(f"variables/name/{variable}").status_code == 404:
            self._ok(self.http.post("variables/", json=body), f"creating variable {variable}")
        else:
            self._ok(
                self.http.patch(f"variables/name/{variable}", json=body),
                f"updating variable {variable}",
            )

    def save_record(self, name: str, value: dict[str, Any]) -> None:
        """The record in one variable, or, past Prefect's 5,000 characters a variable holds
        (parameters an operator set on the server: a list of keys, many policies), its JSON
        text in parts `<variable>-part-N` and `{"parts": N}` in the variable itself."""
        text = json.dumps(value, sort_keys=True)
        if len(text) <= RECORD_INLINE_CHARS:
            self._save(f"{RECORD_PREFIX}{name}", value)
            return
        parts = [text[i : i + RECORD_PART_CHARS] for i in range(0, len(text), RECORD_PART_CHARS)]
        for n, part in enumerate(parts, start=1):
            self._save(f"{RECORD_PREFIX}{name}{PART}{n}", part)
        self._save(f"{RECORD_PREFIX}{name}", {"parts": len(parts)})

    def pool_env(self, pool: str) -> dict[str, str]:
        found = self.http.get(f"work_pools/{pool}")
        if found.status_code == 404:
            return {}
        template = self._ok(found, f"reading work pool {pool}").get("base_job_template") or {}
        env = template.get("variables", {}).get("properties", {}).get("env", {}).get("default")
        return {str(k): str(v) for k, v in (env or {}).items() if v is not None}

    def set_pool_env(self, pool: str, updates: dict[str, str]) -> None:
        """Merge `updates` into the work pool's job environment (every run on it gets them)."""
        found = self.http.get(f"work_pools/{pool}")
        if found.status_code == 404:
            fail(
                f"work pool {pool!r} does not exist: prefect work-pool create {pool} --type process"
            )
        template = self._ok(found, f"reading work pool {pool}")["base_job_template"]
        env = template["variables"]["properties"].setdefault("env", {"type": "object"})
        env["default"] = {**(env.get("default") or {}), **updates}
        self._ok(
            self.http.patch(f"work_pools/{pool}", json={"base_job_template": template}),
            f"updating work pool {pool}",
        )

    def update(self, deployment_id: str, body: dict[str, Any]) -> None:
        self._ok(self.http.patch(f"deployments/{deployment_id}", json=body), "the update")

    def set_schedule(self, deployment_id: str, schedule_id: str, active: bool) -> None:
        self._ok(
            self.http.patch(
                f"deployments/{deployment_id}/schedules/{schedule_id}", json={"active": active}
            ),
            "the schedule update",
        )


def _prefect_deploy(names: list[str]) -> None:
    args = [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy"]
    args += [a for n in names for a in ("--name", n)] if names else ["--all"]
    result = subprocess.run(
        args, cwd=PROJECT_DIR, capture_output=True, text=True, check=False, env=os.environ.copy()
    )
    if result.returncode != 0:
        fail(f"prefect deploy failed:\n{(result.stdout + result.stderr)[-3000:]}")


def _apply(
    api: PrefectApi,
    item: Planned,
    before: dict[str, Any] | None,
    record: dict[str, Any] | None,
    pool_env: dict[str, str],
    saved: dict[str, set[str]],
    assumed: set[str],
    dry_run: bool,
) -> None:
    after = before if dry_run else api.deployment(item.flow, item.name)
    item.created = before is None
    server = before.get("parameters") if before else None
    merged, item.notes = merge_parameters(
        record.get("yaml") if record else None,
        record.get("applied") if record else None,
        item.parameters,
        server,
    )
    # Job variables set on the deployment (its Edit page in the UI: `env` names a block for
    # this deployment only) are kept the same way: prefect deploy resets them to prefect.yaml's,
    # and the run then took the work pool's block, another database.
    job_records = (record or {}).get("job_variables") or {}
    server_jobs = before.get("job_variables") or {} if before else None
    job_variables, _ = merge_parameters(
        job_records.get("yaml"), job_records.get("applied"), item.job_variables, server_jobs
    )
    # The notes name the values; a secret an operator put there is shown as a hash of it.
    _, job_notes = merge_parameters(
        _masked(job_records.get("yaml")),
        _masked(job_records.get("applied")),
        _masked(item.job_variables) or {},
        _masked(server_jobs),
    )
    item.notes += [f"job variables: {redact(note)}" for note in job_notes]
    env = job_variables.get("env")
    own_env = (
        {str(k): str(v) for k, v in env.items() if v is not None} if isinstance(env, dict) else {}
    )
    item.readiness = deployment_readiness(item.name, merged, pool_env, saved, assumed, own_env)
    ready = all(r.configured for r in item.readiness)
    gated = bool(REQUIREMENTS.get(item.name))
    previous = match_schedules(
        item.schedules,
        [(_schedule_key(s), bool(s.get("active"))) for s in (before or {}).get("schedules", [])],
    )
    applied = (record or {}).get("schedules") or {}
    last_planned = (record or {}).get("planned") or {}
    item.planned = []
    current = {_schedule_key(s): s for s in (after or {}).get("schedules", [])}
    item.active = []
    for key, yaml_active in zip(item.schedules, item.yaml_active, strict=True):
        planned = ready if gated else yaml_active
        server_active, edited = previous.get(key, (None, None))
        # what the last deploy did to this schedule: under its key, else (prefect.yaml changed
        # its timing since) under the key of the server's schedule it replaces
        was = key if key in applied or edited is None else edited
        active, note = schedule_active(
            planned, server_active, applied.get(was), ready, last_planned.get(was)
        )
        if edited is not None:
            item.notes.append(
                f"schedule {key}: replaces {edited} set on the server (prefect.yaml's timing "
                f"wins; its {'active' if server_active else 'paused'} state carries over)"
            )
        item.planned.append(planned)
        if note:
            item.notes.append(f"schedule {key}: {note}")
        item.active.append(active)
        if not dry_run and key in current and current[key].get("active") != active:
            api.set_schedule(after["id"], current[key]["id"], active)  # type: ignore[index]
    item.paused, note = deployment_paused(
        item.yaml_paused,
        before.get("paused", False) if before else None,
        record.get("paused") if record else None,
        record.get("planned_paused") if record else None,
    )
    if note:
        item.notes.append(f"deployment: {note}")
    if dry_run or after is None:
        return
    api.update(
        after["id"],
        {
            "parameters": merged,
            "parameter_openapi_schema": strict_schema(after["parameter_openapi_schema"]),
            # prefect deploy un-paused it: an operator's pause (the UI's toggle) is put back
            "paused": item.paused,
            "job_variables": job_variables,
        },
    )
    api.save_record(
        item.name,
        {
            "yaml": item.parameters,
            "applied": merged,
            "schedules": dict(zip(item.schedules, item.active, strict=True)),
            "planned": dict(zip(item.schedules, item.planned, strict=True)),
            "paused": item.paused,
            "planned_paused": item.yaml_paused,
            "job_variables": {"yaml": item.job_variables, "applied": job_variables},
        },
    )


def deploy(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Deployments to deploy (default: all in prefect.yaml)."),
    ] = None,
    configured: Annotated[
        list[str] | None,
        typer.Option(
            "--configured",
            help=f"A system the workers' own environment configures ({', '.join(SYSTEMS)}); "
            "repeat for several.",
        ),
    ] = None,
    pool_env: Annotated[
        list[str] | None,
        typer.Option(
            "--pool-env",
            help="NAME=VALUE set in the work pool's job environment before deploying, e.g. "
            "PERFOPS_POSTGRES_BLOCK=perfops-postgres (block names and settings, never secrets: job "
            "variables are stored in clear); repeat for several.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would be deployed and kept; change nothing."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Deploy prefect.yaml's deployments (prefect deploy) keeping what operators set.

    Parameters, job variables, schedule states and a deployment's pause changed on the server
    since the last `perfops deploy` are kept (a note says so; prefect.yaml wins where it
    changed the same value). A schedule starts only once its deployment's systems are
    configured: a block named by a parameter or by `PERFOPS_<SYSTEM>_BLOCK` in the
    deployment's job variables or the work pool's environment, `PERFOPS_...` connection settings
    there, or `--configured SYSTEM` (docs/deployments.md). Unknown top-level parameters are
    refused by the API (409).
    """
    assumed = set(configured or [])
    unknown = assumed - set(SYSTEMS)
    if unknown:
        err.print(
            f"perfops: --configured {', '.join(sorted(unknown))}: unknown system "
            f"(one of {', '.join(SYSTEMS)})"
        )
        raise typer.Exit(2)
    updates = _pool_updates(pool_env or [])
    apply_prefect_defaults()
    api = PrefectApi()
    if not api.url:
        err.print(
            "perfops: PREFECT_API_URL is not set: perfops deploy writes to your Prefect server "
            "(e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api)"
        )
        raise typer.Exit(2)
    project = read_project(PROJECT_DIR / "prefect.yaml")
    wanted = set(names or [])
    missing = wanted - {p.name for p in project}
    if missing:
        err.print(f"perfops: not in prefect.yaml: {', '.join(sorted(missing))}")
        raise typer.Exit(2)
    chosen = [p for p in project if not wanted or p.name in wanted]
    try:
        before = {p.name: api.deployment(p.flow, p.name) for p in chosen}
    except httpx.TransportError as exc:
        fail(f"cannot reach the Prefect API at {api.url}: {exc}")
    records = {p.name: api.record(p.name) for p in chosen}
    if updates and not dry_run:
        for pool in sorted({p.pool for p in chosen}):
            api.set_pool_env(pool, updates)
    if not dry_run:
        _prefect_deploy(sorted(wanted))
    # Read once for all deployments: each pool's job environment, the saved blocks by type.
    from blocks.resolve import saved_block_names  # imports prefect: not at CLI start-up

    # --pool-env values count too (a dry run has not written them: its plan must show them).
    pool_envs = {pool: {**api.pool_env(pool), **updates} for pool in {p.pool for p in chosen}}
    needed = {s for p in chosen for s in REQUIREMENTS.get(p.name, ())}
    saved = {SYSTEMS[s].block_type: set(saved_block_names(SYSTEMS[s].block_type)) for s in needed}
    for item in chosen:
        _apply(
            api,
            item,
            before[item.name],
            records[item.name],
            pool_envs[item.pool],
            saved,
            assumed,
            dry_run,
        )
    _report(chosen, dry_run, as_json)


SECRET_MARKERS = ("DSN", "TOKEN", "PASSWORD", "SECRET", "KEY")


def _masked(job_variables: dict[str, Any] | None) -> dict[str, Any] | None:
    """Job variables with each `env` value that is or names a secret replaced by a short hash
    of it (two values stay apart, and the merge decides on them the same way)."""
    if not job_variables or not isinstance(job_variables.get("env"), dict):
        return job_variables
    env = {
        k: f"<hidden {hashlib.sha256(str(v).encode()).hexdigest()[:8]}>"
        if any(m in str(k).upper() for m in SECRET_MARKERS) or carries_secret(str(v))
        else v
        for k, v in job_variables["env"].items()
    }
    return {**job_variables, "env": env}


def _pool_updates(pairs: list[str]) -> dict[str, str]:
    """--pool-env NAME=VALUE pairs, refusing malformed ones and secrets (exit 2)."""
    updates: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            err.print(f"perfops: --pool-env {pair!r}: expected NAME=VALUE")
            raise typer.Exit(2)
        if any(marker in name.upper() for marker in SECRET_MARKERS):
            err.print(
                f"perfops: --pool-env {name}: looks like a secret; job variables are stored in "
                "clear, so secrets go into a block (deployments/create_blocks.py) and the pool "
                "names the block (e.g. PERFOPS_POSTGRES_BLOCK=prod)"
            )
            raise typer.Exit(2)
        if carries_secret(value):
            err.print(
                f"perfops: --pool-env {name.strip()}: its value holds a password (a URL's "
                "user:password@, or password=...); job variables are stored in clear, so put "
                "the connection in a block (deployments/create_blocks.py) and give the pool "
                "the block's name (e.g. PERFOPS_REDIS_BLOCK=prod)"
            )
            raise typer.Exit(2)
        updates[name.strip()] = value
    return updates


def carries_secret(value: str) -> bool:
    """Whether a job variable's value holds a secret: a password `redact` would hide (a URL's
    user:password@, libpq's password=..., a secret this process knows), or a URL whose user
    part has a password."""
    if redact(value) != value:
        return True
    try:
        return urlsplit(value.strip()).password is not None
    except ValueError:  # not a URL (a bad port, brackets): redact covered it
        return False


def _report(chosen: list[Planned], dry_run: bool, as_json: bool) -> None:
    if as_json:
        print_json([asdict(p) for p in chosen])
        return
    verb = "would deploy" if dry_run else "deployed"
    for item in chosen:
        states = ", ".join("on" if a else "off" for a in item.active)
        shown = f"schedule {states}" if states else "no schedule"
        if item.paused:  # no schedule of a paused deployment runs, whatever its own state
            shown = f"deployment paused ({shown})"
        out.print(f"{verb} {item.name}: {shown}")
        for r in item.readiness:
            out.print(f"  {r.system}: {'ok, ' if r.configured else ''}{r.how}")
        for note in item.notes:
            out.print(f"  {note}")
    waiting = [
        p.name
        for p in chosen
        if p.schedules and p.readiness and not all(r.configured for r in p.readiness)
    ]
    if waiting:
        out.print(
            f"{len(waiting)} schedule(s) left off until their systems are configured: "
            f"{', '.join(waiting)} (docs/deployments.md)"
        )
