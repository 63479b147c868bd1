"""The fleet: the targets perfops runs over (`deployments/fleet.yaml`), which of them a run
selects, and the report of a run over several targets (one row per target, the parent's
message: `1 of 3 targets failed: orders: cannot connect ...`).

A target is one database (and, later, its other systems): its blocks per system, labels (env,
team, tier, ...) and the PostgreSQL server (`cluster`) it lives on. A run selects targets by a
named fleet of the file (which lists targets, matches labels or a block-name prefix), `all`, a
`key=value` label, or a list of target names. A malformed file fails with an error naming the
file, the line and the field (`deployments/fleet.yaml line 9, targets[1].cluster: ...`).

Pure: the only I/O is `load_fleet`, which reads one file.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from decisions.yaml_models import parse_model
from perfops.errors import ConfigurationError

# Target names key Prefect artifacts (`perfops-stats-refresh-<target>`: lowercase letters,
# digits and dashes only), concurrency limits and run names.
TARGET_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# A saved block's name as Prefect allows it (lowercase letters, digits, dashes), never empty: an
# empty name is no name, and a flow given none loads PERFOPS_<SYSTEM>_BLOCK, PERFOPS_DSN or the
# demo database instead: another database than the target's.
BLOCK_NAME = r"^[a-z0-9-]+$"
SYSTEMS = ("postgres", "prometheus", "redis", "archive")
DEFAULT_MAX_PARALLEL = 4
DEFAULT_MAX_PARALLEL_PER_CLUSTER = 2
ALL = "all"
MAX_SPREAD = 32
# How long a spread fleet run waits for its shares, from their start, by default (4 h).
DEFAULT_SHARE_TIMEOUT_S = 14400
AUTOSCALING = "autoscaling"
FAILED_SHOWN = 3

TargetName = Annotated[str, Field(pattern=TARGET_NAME)]
LabelKey = Annotated[str, Field(pattern=LABEL)]
BlockName = Annotated[str, Field(pattern=BLOCK_NAME)]
System = Literal["postgres", "prometheus", "redis", "archive"]


class FleetFileError(ConfigurationError):
    """The fleet file itself is wrong: it cannot be read, is no YAML, fails validation, or a
    named fleet lists targets the fleet does not have. What names the file (`--fleet-file`,
    PERFOPS_FLEET_FILE, a flow's `fleet_file`) is to fix, not the selection (`--fleet`)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScalingGroup(_Model):
    """An Auto Scaling group a target scales (`scale_predictively` over a fleet)."""

    group: str = Field(min_length=1, description="The Auto Scaling group's name.")
    region: str | None = Field(
        default=None, description="AWS region (default: AWS_REGION on the worker)."
    )
    endpoint_url: str | None = Field(default=None, description="Endpoint override (moto).")
    credentials_block: BlockName | None = Field(
        default=None, description="prefect-aws AwsCredentials block (default: boto3's chain)."
    )

    @property
    def key(self) -> str:
        """The key of the group's scaling state (`scaling_key`)."""
        return scaling_key(self.group, self.region, self.endpoint_url, self.credentials_block)

    @property
    def region_given(self) -> str | None:
        """The region the fleet file gives: `region`, else that of AWS's regional endpoint in
        `endpoint_url`; None when the worker's AWS_REGION decides."""
        return self.region or scaling_endpoint(self.endpoint_url)[1]


def scaling_key(
    group: str,
    region: str | None = None,
    endpoint_url: str | None = None,
    credentials_block: str | None = None,
) -> str:
    """The key of a group's scaling state: its Redis lock, decision state, history and tuned
    policy, its chart, and the `group` of its runs and records.

    The group's name behind whichever of endpoint (host:port), credentials block (the account)
    and region is configured, so groups of one name in two regions or accounts never share a
    lock or a state: `api`, `eu-west-1/api`, `prod-aws/eu-west-1/api`. A group configured by
    its name alone keeps the plain name (the key perfops always used). The endpoint is keyed
    without its user and password, lowercased (`scaling_endpoint`); AWS's own regional
    endpoint (`autoscaling.<region>.amazonaws.com`) is the region's, not an endpoint of its own.
    """
    endpoint, endpoint_region = scaling_endpoint(endpoint_url)
    if endpoint is None and endpoint_region is not None and region in (None, endpoint_region):
        region = endpoint_region
    elif endpoint is None and endpoint_region is not None:  # another region's endpoint
        endpoint = f"autoscaling.{endpoint_region}.amazonaws.com"
    return "/".join(part for part in (endpoint, credentials_block, region, group) if part)


# AWS's own Auto Scaling endpoint of a region (boto3's default for it).
_AWS_ENDPOINT = re.compile(r"^autoscaling\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


def scaling_endpoint(endpoint_url: str | None) -> tuple[str | None, str | None]:
    """(the endpoint as it keys a group: `host:port`, lowercased, without user and password;
    the region of AWS's own regional endpoint, which keys nothing of its own). (None, None)
    without an endpoint."""
    if not endpoint_url:
        return None, None
    parts = urlsplit(endpoint_url if "//" in endpoint_url else f"//{endpoint_url}")
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:  # not a number: keep it, as written, for the key
        port_text: str | None = parts.netloc.rpartition("@")[2].rpartition(":")[2].lower()
    else:
        port_text = str(port) if port is not None else None
    default_port = port_text in (None, "443" if parts.scheme != "http" else "80")
    aws = _AWS_ENDPOINT.match(host)
    if aws is not None and default_port:
        return None, aws.group(1)
    if not host:
        return endpoint_url.rpartition("@")[2].lower() or None, None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return (f"{host}:{port_text}" if port_text else host), None


class Target(_Model):
    """One target: a database and the blocks that reach its systems, or an Auto Scaling group
    (with the Prometheus and Redis blocks its scaling reads)."""

    name: TargetName = Field(
        description="Short name (lowercase letters, digits, dashes): run names, tags, artifact "
        "keys and concurrency limits carry it."
    )
    blocks: dict[System, BlockName] = Field(
        default_factory=dict,
        description="Saved block per system, e.g. {postgres: perfops-postgres-orders}.",
    )
    autoscaling: ScalingGroup | None = Field(
        default=None, description="The Auto Scaling group this target scales, if any."
    )
    labels: dict[LabelKey, str] = Field(
        default_factory=dict, description="Free labels such as env, team, tier."
    )
    cluster: TargetName | None = Field(
        default=None,
        description="The PostgreSQL server (cluster) the database lives on; targets on one "
        "cluster share its limit max_parallel_per_cluster. None: the host:port of its DSN.",
    )

    @model_validator(mode="after")
    def _something(self) -> Target:
        if not self.blocks and self.autoscaling is None:
            raise ValueError(
                "give blocks (e.g. {postgres: perfops-postgres-orders}) or autoscaling"
            )
        return self

    def has(self, system: str) -> bool:
        """Whether a flow working on `system` (a block's system, or `autoscaling`) applies."""
        return self.autoscaling is not None if system == AUTOSCALING else system in self.blocks

    def cluster_for(self, resource: str) -> str:
        """The cluster this target counts against: `cluster`, else the server (`host:port`)
        of its database's event resource id."""
        return self.cluster or server_of(resource)


class FleetSelector(_Model):
    """A named fleet in the file: the targets it lists, or those matching every label given and
    the block-name prefix (both, when both are given)."""

    targets: list[TargetName] | None = Field(default=None, description="These targets, by name.")
    labels: dict[LabelKey, str] | None = Field(
        default=None, description="Targets having all these labels."
    )
    block_prefix: str | None = Field(
        default=None,
        min_length=1,
        description="Targets with a block whose name starts with this (e.g. perfops-postgres-eu-).",
    )

    @model_validator(mode="after")
    def _one_way(self) -> FleetSelector:
        if self.targets is not None and (self.labels or self.block_prefix):
            raise ValueError("give either targets, or labels and/or block_prefix, not both")
        if self.targets is None and not self.labels and not self.block_prefix:
            raise ValueError("give targets, labels or block_prefix")
        return self

    def matches(self, target: Target) -> bool:
        if self.targets is not None:
            return target.name in self.targets
        if self.labels and any(target.labels.get(k) != v for k, v in self.labels.items()):
            return False
        prefix = self.block_prefix
        return prefix is None or any(b.startswith(prefix) for b in target.blocks.values())


class Discovery(_Model):
    """Targets found on the Prefect server instead of listed: one per saved PostgreSQL block
    whose name starts with `block_prefix`, named after the rest of the block's name
    (`perfops-postgres-eu-orders` with prefix `perfops-postgres-eu-`: target `orders`)."""

    block_prefix: str = Field(min_length=1, description="Saved postgres blocks starting so.")
    labels: dict[LabelKey, str] = Field(
        default_factory=dict, description="Labels every discovered target gets."
    )
    cluster: TargetName | None = Field(
        default=None, description="Their PostgreSQL server (default: each DSN's host:port)."
    )


def discovered_targets(
    discovery: Discovery,
    block_names: Sequence[str],
    taken: Iterable[str],
    reserved: Iterable[str] = (ALL,),
) -> tuple[list[Target], list[str]]:
    """The targets `discovery` finds among the saved postgres `block_names`, and why any block
    with the prefix was left out (its rest is no valid target name, a target of the file or an
    earlier discovery already has that name: the file wins, or it is `reserved`: `all` and the
    file's fleets, which a run selecting that name would run instead of this one database)."""
    used = set(taken)
    selections = set(reserved)
    found: list[Target] = []
    skipped: list[str] = []
    for block in sorted(block_names):
        if not block.startswith(discovery.block_prefix):
            continue
        name = block.removeprefix(discovery.block_prefix).lower()
        if not re.fullmatch(TARGET_NAME, name):
            skipped.append(f"{block}: {name!r} is no target name (lowercase letters, digits, -)")
            continue
        if name in used:
            skipped.append(f"{block}: a target {name!r} exists already")
            continue
        if name in selections:
            skipped.append(
                f"{block}: {name!r} names "
                + ("every target" if name == ALL else f"the fleet {name!r}")
                + f": a run selecting {name!r} would run that, not this database"
            )
            continue
        used.add(name)
        found.append(
            Target(
                name=name,
                blocks={"postgres": block},
                labels=dict(discovery.labels),
                cluster=discovery.cluster,
            )
        )
    return found, skipped


class Fleet(_Model):
    """`deployments/fleet.yaml`: the targets, the named fleets and the fleet-wide limits."""

    max_parallel: int = Field(
        default=DEFAULT_MAX_PARALLEL,
        ge=1,
        le=64,
        description="Targets a run works on at once, fleet-wide.",
    )
    max_parallel_per_cluster: int = Field(
        default=DEFAULT_MAX_PARALLEL_PER_CLUSTER,
        ge=1,
        le=64,
        description="Targets on one PostgreSQL server worked on at once, by all perfops runs "
        "(a Prefect global concurrency limit per cluster).",
    )
    spread: int | Literal["auto"] = Field(
        default=1,
        description="Shares one fleet run started from a deployment is split into, each share "
        "a run of the same deployment that any worker of its work pool can take (a number, or "
        "`auto`: the pool's online workers); 1 runs every child in the parent's process.",
    )
    share_timeout_s: int = Field(
        default=DEFAULT_SHARE_TIMEOUT_S,
        ge=60,
        le=7 * 86400,
        description="Seconds a spread run waits for its shares, from their start: then a "
        "share no worker started is run by the parent, and one still running is cancelled and "
        "its targets reported not run, so the parent never waits forever.",
    )
    targets: list[Target] = Field(default_factory=list)
    discover: list[Discovery] = Field(
        default_factory=list,
        description="Targets found on the Prefect server by block-name prefix, added to targets "
        "when a run or `perfops fleet list` reads the fleet.",
    )
    fleets: dict[TargetName, FleetSelector] = Field(
        default_factory=dict, description="Named selections, e.g. prod: {labels: {env: prod}}."
    )

    @model_validator(mode="after")
    def _some_targets(self) -> Fleet:
        if not self.targets and not self.discover:
            raise ValueError("list targets, or discover them by block_prefix (or both)")
        return self

    def with_discovered(self, block_names: Sequence[str]) -> tuple[Fleet, list[str]]:
        """This fleet with the targets its `discover` entries find among `block_names` (the
        saved postgres blocks), and why any block with a prefix was left out."""
        added: list[Target] = []
        skipped: list[str] = []
        for discovery in self.discover:
            found, why = discovered_targets(
                discovery,
                block_names,
                [t.name for t in (*self.targets, *added)],
                [ALL, *self.fleets],
            )
            added += found
            skipped += why
        return self.model_copy(update={"targets": [*self.targets, *added]}), skipped

    @field_validator("spread")
    @classmethod
    def _spread_bounds(cls, spread: int | str) -> int | str:
        if isinstance(spread, int) and not 1 <= spread <= MAX_SPREAD:
            raise ValueError(f"spread is a number of shares from 1 to {MAX_SPREAD}, or auto")
        return spread

    @field_validator("targets")
    @classmethod
    def _unique(cls, targets: list[Target]) -> list[Target]:
        if any(t.name == ALL for t in targets):
            raise ValueError(
                f"a target may not be called {ALL!r}: a run selecting {ALL!r} runs every target"
            )
        twice = sorted(n for n, c in Counter(t.name for t in targets).items() if c > 1)
        if twice:
            raise ValueError(f"target names must be unique: {', '.join(twice)} given twice")
        by_key: dict[str, list[str]] = {}
        by_group: dict[str, list[Target]] = {}
        for t in targets:
            if t.autoscaling is not None:
                by_key.setdefault(t.autoscaling.key, []).append(t.name)
                by_group.setdefault(t.autoscaling.group, []).append(t)
        same = [f"{' and '.join(names)} ({key})" for key, names in by_key.items() if len(names) > 1]
        if same:
            raise ValueError(
                "targets scale the same Auto Scaling group and would share its lock and state: "
                f"{'; '.join(same)}; keep one target per group (groups of one name in other "
                "regions or accounts: give each its region, endpoint_url or credentials_block)"
            )
        unsure = [
            (group, listed)
            for group, listed in by_group.items()
            if len(listed) > 1
            and any(t.autoscaling and not t.autoscaling.region_given for t in listed)
        ]
        if unsure:
            group, listed = unsure[0]
            without = [t.name for t in listed if t.autoscaling and not t.autoscaling.region_given]
            raise ValueError(
                f"targets {' and '.join(t.name for t in listed)} scale Auto Scaling groups named "
                f"{group!r} and {', '.join(without)} gives no region (the worker's AWS_REGION "
                "would decide), so perfops cannot tell whether they are one group (which must "
                "have one target: one lock and state) or groups of one name in two regions: "
                "give each of them its region"
            )
        return targets

    @field_validator("fleets")
    @classmethod
    def _known(
        cls, fleets: dict[str, FleetSelector], info: ValidationInfo
    ) -> dict[str, FleetSelector]:
        names = {t.name for t in info.data.get("targets") or []}
        for fleet_name, selector in fleets.items():
            if fleet_name == ALL or fleet_name in names:
                raise ValueError(
                    f"fleet {fleet_name!r}: a fleet may not be called 'all' or like a target"
                )
            unknown = [n for n in selector.targets or [] if n not in names]
            if unknown and names and not info.data.get("discover"):  # discovered: known later
                raise ValueError(
                    f"fleet {fleet_name!r} names unknown targets: {', '.join(unknown)}"
                )
        return fleets

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise ConfigurationError(f"no target {name!r} in the fleet; targets: {self._names()}")

    def _names(self) -> str:
        shown = [t.name for t in self.targets[:20]]
        more = len(self.targets) - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more > 0 else "")

    def select(self, selection: str | list[str]) -> list[Target]:
        """The targets a run works on, in the file's order.

        `selection`: a named fleet of the file, `all`, a label `key=value`, a target's name, or
        a list of target names. Nothing selected, or an unknown name, raises ConfigurationError.
        """
        if isinstance(selection, list):
            wanted = [self.target(n) for n in dict.fromkeys(selection)]
            if not wanted:
                raise ConfigurationError("no targets given: name at least one")
            return wanted
        if selection == ALL:
            return list(self.targets)
        if selection in self.fleets:
            have = {t.name for t in self.targets}
            gone = [n for n in self.fleets[selection].targets or [] if n not in have]
            if gone:  # a fleet that discovers targets is checked here, once they are found
                raise FleetFileError(
                    f"fleet {selection!r} names targets the fleet does not have (neither "
                    f"listed nor discovered): {', '.join(gone)}; targets: {self._names()}"
                )
            chosen = [t for t in self.targets if self.fleets[selection].matches(t)]
            if not chosen:
                raise ConfigurationError(f"fleet {selection!r} selects no target")
            return chosen
        key, eq, value = selection.partition("=")
        if eq:
            chosen = [t for t in self.targets if t.labels.get(key.strip()) == value.strip()]
            if not chosen:
                raise ConfigurationError(f"no target has the label {selection!r}")
            return chosen
        if any(t.name == selection for t in self.targets):
            return [self.target(selection)]
        fleets = ", ".join(self.fleets) or "none defined"
        raise ConfigurationError(
            f"{selection!r} is neither a fleet ({fleets}), 'all', a label key=value nor a "
            f"target ({self._names()})"
        )


def parse_fleet(text: str, source: str = "<string>") -> Fleet:
    """Parse and validate fleet YAML; errors (`FleetFileError`) name `source`, the line and the
    field."""
    try:
        return parse_model(
            Fleet, text, source, expected="a mapping with targets (and fleets, max_parallel)"
        )
    except ConfigurationError as exc:
        raise FleetFileError(str(exc)) from None


NAMED_BY_DEFAULT = "PERFOPS_FLEET_FILE or --fleet-file names it"


def load_fleet(path: Path | str, named_by: str = NAMED_BY_DEFAULT) -> Fleet:
    """Read and validate a fleet file. Any error is a `FleetFileError`; one that cannot be read
    says `named_by` (where the path came from: `--fleet-file`, PERFOPS_FLEET_FILE, a flow's
    `fleet_file`, the default)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetFileError(
            f"cannot read the fleet file {path}: {exc.strerror} ({named_by}; see docs/fleet.md)"
        ) from None
    return parse_fleet(text, str(path))


# Characters Prefect refuses in a global concurrency limit's name.
_BANNED = "/%&><"


def _limit_name(raw: str) -> str:
    """`raw` as a Prefect global concurrency limit name: banned characters become `_`, and then
    a short hash of `raw` keeps two names that differ only there apart."""
    clean = "".join("_" if c in _BANNED else c for c in raw)
    if clean == raw:
        return raw
    return f"{clean}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"


# `perfops.postgres.<host>:<port>/<dbname>` (blocks.postgres.database_address normalises it):
# the host may be a socket directory with slashes, so the address splits at `:<port>/`.
_RESOURCE = re.compile(r"^(?P<server>.*?:[0-9,]+)/(?P<dbname>.*)$")


def _database_of(resource: str) -> tuple[str, str]:
    """(`host:port`, dbname) of a database's event resource id; neither ever empty."""
    address = resource.removeprefix("perfops.postgres.")
    found = _RESOURCE.match(address)
    if found is None:
        server, _, dbname = address.partition("/")
    else:
        server, dbname = found["server"], found["dbname"]
    return server or "unknown-server", dbname or "unknown-database"


def database_limit(resource: str) -> str:
    """The global concurrency limit (1 slot) a run holds while it changes a database, named
    after the database itself (`perfops.postgres.db1:5432/orders` ->
    `perfops-db-db1:5432:orders`), so a fleet child and a single-database run of any flow
    exclude each other, whatever the target or the block is called."""
    server, dbname = _database_of(resource)
    return _limit_name(f"perfops-db-{server}:{dbname}")


def load_target_limit(base_url: str) -> str:
    """The global concurrency limit (1 slot) a load test holds while it sends load to a target,
    named after the target's host and port (`https://staging.example.com` ->
    `perfops-load-staging.example.com:443`): two load tests of one target never overlap (each
    would measure the other's load), whether run by the deployment, the CLI or the API."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "unknown-host").rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return _limit_name(f"perfops-load-{host}:{port}")


def server_of(resource: str) -> str:
    """`host:port` of a database's event resource id (a Unix socket's directory and port,
    `/var/run/postgresql:5432`)."""
    return _database_of(resource)[0]


def cluster_limit(cluster: str) -> str:
    """The global concurrency limit of one PostgreSQL server (cluster)."""
    return _limit_name(f"perfops-cluster-{cluster}")


# --- a run over several targets ------------------------------------------------------------

TargetResult = Literal["done", "failed", "not run"]


class TargetRun(_Model):
    """What one target's child run did."""

    target: str
    result: TargetResult
    reason: str = Field(description="The child run's state message, or why it did not run.")
    changed: str = Field(default="", description="What the child run found and changed.")
    flow_run_id: str | None = None
    seconds: float | None = Field(default=None, description="The child run's own time.")
    waited: float | None = Field(
        default=None, description="Seconds the target waited for its slots before its run."
    )


class FleetReport(_Model):
    """The parent run's report: one row per target, in the fleet's order."""

    flow: str
    selection: str
    dry_run: bool = False
    targets: list[TargetRun]
    seconds: float = 0.0

    @property
    def failed(self) -> list[TargetRun]:
        return [t for t in self.targets if t.result != "done"]

    @property
    def summary(self) -> str:
        done = len(self.targets) - len(self.failed)
        return f"{done} of {len(self.targets)} targets done" + (
            f", {len(self.failed)} failed" if self.failed else ""
        )

    @property
    def failure(self) -> str | None:
        """The parent's Failed message (`1 of 3 targets failed: orders: cannot connect ...`),
        or None when every target is done."""
        return targets_message([(t.target, t.reason) for t in self.failed], self.targets, "failed")

    def artifact_rows(self, ui_url: str | None = None) -> list[dict[str, object]]:
        """The fleet summary table: target, result, reason, what changed, the child run."""
        base = (ui_url or "").rstrip("/")
        return [
            {
                "target": t.target,
                "result": t.result,
                "reason": t.reason,
                "changed": t.changed,
                "run": f"{base}/runs/flow-run/{t.flow_run_id}" if t.flow_run_id else "",
                "seconds": t.seconds if t.seconds is not None else "",
                "waited": t.waited if t.waited is not None else "",
            }
            for t in self.targets
        ]


def share_count(
    spread: int | Literal["auto"],
    online_workers: int,
    targets: int,
    deployment_limit: int | None = None,
    *,
    cancels_new: bool = False,
) -> int:
    """How many shares a fleet run is split into: `spread` (or, for `auto`, the work pool's
    online workers), never more than the targets, at least 1.

    The shares are runs of the parent's own deployment, so its concurrency limit
    (`deployment_limit`, None: none) counts them, and the parent holds one of its slots: at
    most `deployment_limit` shares in all (the parent's and limit - 1 others), so a limit of 1
    runs every target in the parent, where a share would wait for the slot its own parent
    holds. A limit that cancels the runs over it (`cancels_new`) also gives 1: a share it
    cancelled would leave its targets not run."""
    wanted = online_workers if spread == "auto" else spread
    if deployment_limit is not None:
        wanted = min(wanted, 1 if cancels_new else deployment_limit)
    return max(1, min(wanted, targets, MAX_SPREAD))


def split_shares(targets: Sequence[Target], shares: int) -> list[list[Target]]:
    """`targets` dealt round robin into `shares` lists, in the fleet's order: each share gets
    about as many targets and a mix of clusters (the per-cluster slots stay shared by all)."""
    count = max(1, min(shares, len(targets)))
    return [list(targets[i::count]) for i in range(count)]


def share_runs_lost(targets: Sequence[Target], share: str, state: str, why: str) -> list[TargetRun]:
    """The rows of a share's targets when the share run left no report (it crashed, or was
    cancelled before it ran): each target not run, saying which share and why."""
    reason = f"its share run {share} ended {state}" + (f": {why}" if why else "")
    return [TargetRun(target=t.name, result="not run", reason=reason) for t in targets]


# The state a deployment's concurrency limit keeps a run in while its slots are held.
AWAITING_SLOT = "AwaitingConcurrencySlot"
_FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})

ShareStep = Literal["collect", "take back", "wait", "give up"]


def share_step(state_type: str | None, *, claimable: bool, overdue: bool) -> ShareStep:
    """What a spread parent does next with one share run, by its state's type (`COMPLETED`,
    `SCHEDULED`, ...; None: the run no longer exists):

    - `collect` its rows once the run is final;
    - `take back` (and run its targets itself) a run no worker has started, once the workers
      had their time (`claimable`: the parent's own share is done and the claim window has
      passed) or the fleet's `share_timeout_s` is over (`overdue`). A run the server keeps
      Scheduled (AwaitingConcurrencySlot: its deployment's concurrency limit is full, perhaps
      with the parent itself) counts as not started;
    - `give up` on a run that is still running, or gone, once `overdue`: its targets are
      reported not run, so the parent never waits forever;
    - else `wait`.
    """
    if state_type is None:
        return "give up"
    if state_type in _FINAL_STATES:
        return "collect"
    if state_type == "SCHEDULED" and (claimable or overdue):
        return "take back"
    return "give up" if overdue else "wait"


def share_runs_overdue(
    targets: Sequence[Target], share: str, state: str | None, timeout_s: float
) -> list[TargetRun]:
    """The rows of a share's targets when the parent gave up on the share run after the
    fleet's `share_timeout_s`: each target not run, saying which share and in what state."""
    if state is None:
        reason = f"its share run {share} no longer exists (deleted before it reported)"
    else:
        reason = (
            f"its share run {share} was still {state} after {timeout_s:.0f} s (the fleet's "
            "share_timeout_s): the parent stopped waiting and cancelled it; its run shows what "
            "it did"
        )
    return [TargetRun(target=t.name, result="not run", reason=reason) for t in targets]


def targets_message(
    which: Sequence[tuple[str, str]], of: Sequence[object], what: str
) -> str | None:
    """`1 of 3 targets failed: orders: cannot connect ...` for the (target, reason) pairs
    `which` out of `of`, the first FAILED_SHOWN named; None when `which` is empty."""
    if not which:
        return None
    shown = "; ".join(f"{name}: {reason}" for name, reason in which[:FAILED_SHOWN])
    more = f"; and {len(which) - FAILED_SHOWN} more" if len(which) > FAILED_SHOWN else ""
    return f"{len(which)} of {len(of)} targets {what}: {shown}{more}"


def keyed(artifact_key: str, fleet_target: str | None) -> str:
    """A run's artifact key: `perfops-slow-queries`, or per target in a fleet
    (`perfops-slow-queries-orders`), so the UI's latest artifact is per database."""
    return f"{artifact_key}-{fleet_target}" if fleet_target else artifact_key


def target_labels(fleet_target: str | None) -> dict[str, str]:
    """The event labels naming a fleet run's target (`perfops.target`); none outside a fleet."""
    return {"perfops.target": fleet_target} if fleet_target else {}
