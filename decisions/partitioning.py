"""Which partitions to create, expire and rescue, and why. Pure: no I/O, no Prefect.

The planning half of partition rotation (pg_partman's `create_partition_time`,
`drop_partition_time` and `check_default`, as decisions). The I/O layer reads a table's children
(`ExistingPartition`) and the rows of its default partition per interval bucket (`DefaultRows`);
`plan_rotation` says what to create, expire and move, with the reason a person reads. A dry run
is exactly this plan.

* Intervals are aligned in the policy's time zone: days, weeks (Monday), months and years start
  at local midnight, computed in wall time and then converted, so a DST change never shifts a
  bound. Hours are absolute (a DST fall-back hour gets its own partition, named with a `b`).
* Children are matched by their bounds, never by their names, so a table partitioned by hand can
  be adopted. A child whose bounds do not lie on the policy's interval boundaries is reported and
  left alone: nothing is converted that the plan does not understand.
* Expired children (upper bound <= start of the current interval - retention) are archived,
  detached or dropped as the policy says, never the default partition and never the last child
  (counting the partitions the plan creates first; an applied run plans its expiry again from
  the catalog once they exist: `after_changes`).
* Hash-partitioned tables only need every remainder present (`plan_hash`).
"""

from __future__ import annotations

import calendar
import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from perfops.names import read_qualified

PG_MAX_IDENTIFIER = 63
DEFAULT_PREMAKE = 3
DEFAULT_MAX_CREATED_PER_RUN = 24
DEFAULT_MAX_FUTURE_INTERVALS = 12

Interval = Literal["hour", "day", "week", "month", "year"]
ExpiredAction = Literal["archive_then_drop", "detach_only", "drop"]
HealthKind = Literal["default_rows", "premade_short", "far_future_rows"]

_UNITS: tuple[Interval, ...] = ("hour", "day", "week", "month", "year")
_RETENTION = re.compile(r"\s*(\d+)\s*(hour|day|week|month|year)s?\s*", re.IGNORECASE)
_BLOCK_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_HOURS = {"hour": 1, "day": 24, "week": 168}
# Shortest and longest length of each unit in hours (calendar units vary; DST ignored here).
_MIN_HOURS = {"hour": 1, "day": 24, "week": 168, "month": 28 * 24, "year": 365 * 24}
_MAX_HOURS = {"hour": 1, "day": 24, "week": 168, "month": 31 * 24, "year": 366 * 24}
_MONTHS = {"month": 1, "year": 12}

S3_BLOCK_PREFIX = "s3-block:"


class PolicyError(ValueError):
    """A partition policy file that cannot be used (the message names the table and field)."""


# --------------------------------------------------------------------------- policies


def parse_retention(text: str) -> tuple[int, Interval]:
    """'12 months' -> (12, 'month'). Raises ValueError naming the accepted form."""
    match = _RETENTION.fullmatch(text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"retention {text!r} is not '<n> <unit>' with n >= 1 and unit one of "
            "hour(s), day(s), week(s), month(s), year(s) (e.g. '12 months')"
        )
    return int(match.group(1)), match.group(2).lower()  # type: ignore[return-value]


def _shorter_than(n: int, unit: Interval, interval: Interval) -> bool:
    """Whether `n unit` can be shorter than one `interval`."""
    if unit in _MONTHS and interval in _MONTHS:
        return n * _MONTHS[unit] < _MONTHS[interval]
    if unit in _HOURS and interval in _HOURS:
        return n * _HOURS[unit] < _HOURS[interval]
    return n * _MIN_HOURS[unit] < _MAX_HOURS[interval]


def split_table(value: str) -> tuple[str, str]:
    """`schema.table` as PostgreSQL reads it -> (schema, table) as stored in the catalog.

    Unquoted parts fold to lower case (`public.Audit_Logs` is `public.audit_logs`); a part in
    double quotes is kept as written, any character allowed (`"Audit Logs"`, with `""` for a
    quote). Everything downstream passes the names through `psycopg.sql.Identifier`.
    """
    read = read_qualified(value)
    if read is None:
        raise ValueError(
            f"table {value!r} must be schema-qualified, e.g. public.audit_logs or "
            '"My Schema"."Audit Logs" (quote a part that has capitals, spaces or dots)'
        )
    schema_name, table_name = read
    for name in (schema_name, table_name):
        if len(name.encode()) > PG_MAX_IDENTIFIER or "\x00" in name:
            raise ValueError(f"{name!r} is not a PostgreSQL identifier (at most 63 bytes)")
    return schema_name, table_name


class _TablePolicy(BaseModel):
    """What a range and a hash policy share: the table, schema-qualified, and its two parts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str

    @field_validator("table")
    @classmethod
    def _schema_qualified(cls, value: str) -> str:
        split_table(value)
        return value

    @property
    def schema_name(self) -> str:
        return split_table(self.table)[0]

    @property
    def table_name(self) -> str:
        return split_table(self.table)[1]


class PartitionPolicy(_TablePolicy):
    """How one range-partitioned table (partitioned by a timestamptz column) rotates.

    Defaults are conservative: 3 partitions made ahead, expired partitions archived before they
    are dropped, at most 24 partitions created per run.
    """

    table: str = Field(
        description="The partitioned table, schema-qualified (e.g. public.audit_logs)."
    )
    interval: Interval = Field(description="One partition per hour, day, week, month or year.")
    premake: int = Field(
        default=DEFAULT_PREMAKE,
        ge=0,
        le=365,
        description="Partitions kept ready ahead of the current interval.",
    )
    retention: str | None = Field(
        default=None,
        description="How long partitions are kept, '<n> <unit>' (e.g. '12 months'); a partition "
        "expires when its upper bound is at least this far before the current interval. "
        "None: keep forever. Must be at least one interval.",
    )
    expired_action: ExpiredAction = Field(
        default="archive_then_drop",
        description="What happens to an expired partition: archive_then_drop (dump, verify the "
        "checksum, then detach and drop), detach_only (detach and keep it as a plain table), "
        "drop (detach and drop, no archive).",
    )
    archive: str | None = Field(
        default=None,
        description="Where archive_then_drop writes dumps: 's3-block:NAME' for an S3Bucket block "
        "or a local folder path. Required when expired partitions are archived.",
    )
    timezone: str = Field(
        default="UTC",
        description="IANA time zone the interval boundaries are aligned in (e.g. Europe/Berlin).",
    )
    max_created_per_run: int = Field(
        default=DEFAULT_MAX_CREATED_PER_RUN,
        ge=1,
        description="At most this many partitions created per run; the rest wait for the next.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as UTC or Europe/Berlin"
            ) from None
        return value

    @field_validator("retention")
    @classmethod
    def _retention_form(cls, value: str | None) -> str | None:
        if value is not None:
            parse_retention(value)
        return value

    @field_validator("archive")
    @classmethod
    def _archive_form(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("archive is empty: give 's3-block:NAME' or a folder path")
        if value.startswith(S3_BLOCK_PREFIX) and not _BLOCK_NAME.fullmatch(
            value.removeprefix(S3_BLOCK_PREFIX)
        ):
            raise ValueError(
                f"archive {value!r}: an S3Bucket block name is lower case letters, digits and "
                "dashes, e.g. s3-block:perfops-archive"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PartitionPolicy:
        if self.retention is not None:
            n, unit = parse_retention(self.retention)
            if _shorter_than(n, unit, self.interval):
                raise ValueError(
                    f"retention {self.retention!r} is shorter than one interval "
                    f"({self.interval!r}): every partition would expire as soon as it is made; "
                    f"use at least '1 {self.interval}'"
                )
            if self.expired_action == "archive_then_drop" and self.archive is None:
                raise ValueError(
                    "expired_action 'archive_then_drop' needs archive ('s3-block:NAME' or a "
                    "folder path), or choose 'detach_only' or 'drop'"
                )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def retention_span(self) -> tuple[int, Interval] | None:
        """(n, unit) of the retention, or None to keep forever."""
        return None if self.retention is None else parse_retention(self.retention)

    @property
    def archive_block(self) -> str | None:
        """The S3Bucket block name when the archive is one."""
        if self.archive is not None and self.archive.startswith(S3_BLOCK_PREFIX):
            return self.archive.removeprefix(S3_BLOCK_PREFIX)
        return None

    @property
    def archive_folder(self) -> str | None:
        """The local folder when the archive is one."""
        return None if self.archive is None or self.archive_block else self.archive


class HashPolicy(_TablePolicy):
    """A hash-partitioned table that must have all `modulus` partitions."""

    table: str = Field(description="The partitioned table, schema-qualified (e.g. public.users).")
    modulus: int = Field(ge=2, le=1024, description="Number of hash partitions (e.g. 32).")


Policy = PartitionPolicy | HashPolicy


def load_policies(text: str) -> list[Policy]:
    """Policies from YAML: a list (or `policies:` holding one) of mappings, each with `table`
    and either `interval` (range) or `modulus` (hash). Raises `PolicyError` naming the table
    and the field.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"partition policies are not valid YAML: {exc}") from None
    if isinstance(data, dict) and set(data) == {"policies"}:
        data = data["policies"]
    if data is None:
        return []
    if not isinstance(data, list):
        raise PolicyError("partition policies must be a list (or `policies:` holding a list)")
    policies: list[Policy] = []
    for position, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            raise PolicyError(f"policy {position}: must be a mapping with `table`, got {entry!r}")
        where = f"policy {position} ({entry.get('table', 'no table')})"
        if ("interval" in entry) == ("modulus" in entry):
            raise PolicyError(
                f"{where}: give `interval` for a range-partitioned table or `modulus` for a "
                "hash-partitioned one (exactly one of them)"
            )
        model: type[Policy] = PartitionPolicy if "interval" in entry else HashPolicy
        try:
            policy = model.model_validate(entry)
        except ValidationError as exc:
            raise PolicyError(f"{where}: {_errors(exc)}") from None
        policies.append(policy)
    refuse_duplicates(policies, [f"policy {n}" for n in range(1, len(policies) + 1)])
    return policies


def refuse_duplicates(policies: Sequence[Policy], names: Sequence[str] | None = None) -> None:
    """Raise `PolicyError` when two policies name one table, however each spells it
    (`public.ev`, `"public"."ev"`, `ev`): one run would rotate it twice, by two rules."""
    seen: dict[tuple[str, str], int] = {}
    for position, policy in enumerate(policies):
        key = (policy.schema_name, policy.table_name)
        if key in seen:
            first = seen[key]
            label = names or [f"policy {n}" for n in range(1, len(policies) + 1)]
            raise PolicyError(
                f"{label[position]} ({policy.table}): table {policy.table} has more than one "
                f"policy (also {label[first]}, {policies[first].table}): keep one"
            )
        seen[key] = position


def _errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "policy"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- time


def _zone(tz: str | ZoneInfo) -> ZoneInfo:
    return tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)


def _aware(ts: datetime, what: str = "timestamp") -> datetime:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{what} {ts.isoformat()} has no time zone; pass an aware datetime")
    return ts


def _local_midnight(day: Any, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def floor_to_interval(ts: datetime, interval: Interval, tz: str | ZoneInfo = "UTC") -> datetime:
    """Start (in UTC) of the `interval` holding `ts`, aligned in time zone `tz`.

    Days, weeks (Monday) and months and years start at local midnight.
    """
    zone = _zone(tz)
    local = _aware(ts).astimezone(zone)
    if interval == "hour":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    day = local.date()
    if interval == "day":
        start = day
    elif interval == "week":
        start = day - timedelta(days=day.weekday())
    elif interval == "month":
        start = day.replace(day=1)
    elif interval == "year":
        start = day.replace(month=1, day=1)
    else:
        raise ValueError(f"unknown interval {interval!r}: one of {', '.join(_UNITS)}")
    return _local_midnight(start, zone)


def add_intervals(ts: datetime, interval: Interval, n: int, tz: str | ZoneInfo = "UTC") -> datetime:
    """`ts` moved by `n` intervals (negative: back), in UTC.

    Hours are absolute; days, weeks, months and years move the local wall time in `tz` (a month
    from Jan 31 is the last day of February), so local midnight stays local midnight across DST.
    """
    _aware(ts)
    if interval == "hour":
        return (ts + timedelta(hours=n)).astimezone(UTC)
    zone = _zone(tz)
    wall = ts.astimezone(zone).replace(tzinfo=None, fold=0)
    if interval == "day":
        wall += timedelta(days=n)
    elif interval == "week":
        wall += timedelta(weeks=n)
    elif interval in _MONTHS:
        months = wall.year * 12 + wall.month - 1 + n * _MONTHS[interval]
        year, month = divmod(months, 12)
        month += 1
        wall = wall.replace(
            year=year, month=month, day=min(wall.day, calendar.monthrange(year, month)[1])
        )
    else:
        raise ValueError(f"unknown interval {interval!r}: one of {', '.join(_UNITS)}")
    return wall.replace(tzinfo=zone).astimezone(UTC)


# How the start of each interval is written: for a person (`interval_label`) and in a partition's
# name (`_suffix`). strftime formats, but a week's are its ISO year and week (str.format).
_WRITTEN: dict[Interval, tuple[str, str]] = {
    "hour": ("%Y-%m-%d %H:00", "_p%Y_%m_%d_%H"),
    "day": ("%Y-%m-%d", "_p%Y_%m_%d"),
    "week": ("{year}-W{week:02d}", "_p{year}w{week:02d}"),
    "month": ("%Y-%m", "_p%Y_%m"),
    "year": ("%Y", "_p%Y"),
}


def _written(start: datetime, interval: Interval, tz: str | ZoneInfo, *, in_name: bool) -> str:
    """The interval starting at `start` as `_WRITTEN` says, local in `tz`; the second of two
    equal local hours (DST fall-back) is marked ` (2nd)`, or `b` in a name."""
    local = _aware(start).astimezone(_zone(tz))
    label, suffix = _WRITTEN.get(interval, _WRITTEN["year"])
    form = suffix if in_name else label
    if interval == "week":
        iso = local.isocalendar()
        return form.format(year=iso.year, week=iso.week)
    second = ("b" if in_name else " (2nd)") if interval == "hour" and local.fold else ""
    return local.strftime(form) + second


def interval_label(start: datetime, interval: Interval, tz: str | ZoneInfo = "UTC") -> str:
    """How a person names the interval starting at `start`: 2026-12, 2026-W49, 2026-12-05 13:00."""
    return _written(start, interval, tz, in_name=False)


def _suffix(start: datetime, interval: Interval, tz: str | ZoneInfo) -> str:
    return _written(start, interval, tz, in_name=True)


def fit_identifier(base: str, suffix: str) -> str:
    """`base + suffix`, with `base` cut and a short hash added to fit PostgreSQL's 63 bytes."""
    name = base + suffix
    if len(name.encode()) <= PG_MAX_IDENTIFIER:
        return name
    digest = hashlib.sha1(base.encode()).hexdigest()[:8]  # noqa: S324 - a name, not security
    room = PG_MAX_IDENTIFIER - len(suffix.encode()) - len(digest) - 1
    return f"{base.encode()[:room].decode(errors='ignore')}_{digest}{suffix}"


def partition_name(
    table_name: str, start: datetime, interval: Interval, tz: str | ZoneInfo = "UTC"
) -> str:
    """`audit_logs_p2026_12` (month), `_p2026_12_05` (day), `_p2026w49` (ISO week),
    `_p2026_12_05_13` (hour, local; the repeated DST hour gets a `b`), `_p2026` (year).

    `table_name` is the parent's bare name (children live in the parent's schema).
    """
    return fit_identifier(table_name, _suffix(start, interval, tz))


# --------------------------------------------------------------------------- what exists


def partition_label(schema_name: str | None, name: str) -> str:
    """A child as reports name it: its bare name when it lives in the parent's schema
    (`schema_name` None), `schema.name` when it lives elsewhere."""
    return name if schema_name is None else f"{schema_name}.{name}"


class ExistingPartition(BaseModel):
    """One child of a range-partitioned table, bounds parsed from pg_get_expr(relpartbound)."""

    name: str = Field(description="The child's table name (no schema).")
    schema_name: str | None = Field(
        default=None,
        description="The child's schema when it is not the parent's (None: the parent's). "
        "PostgreSQL lets a partition live in any schema; every step names it by both.",
    )
    lower: AwareDatetime | None = Field(default=None, description="FROM bound; None: MINVALUE.")
    upper: AwareDatetime | None = Field(default=None, description="TO bound; None: MAXVALUE.")
    is_default: bool = Field(default=False, description="The DEFAULT partition (no bounds).")
    rows_estimate: int = Field(default=0, ge=-1, description="pg_class.reltuples (-1 unknown).")

    @property
    def label(self) -> str:
        return partition_label(self.schema_name, self.name)


class DefaultRows(BaseModel):
    """Rows of the default partition whose key falls in the interval starting at `bucket_start`."""

    bucket_start: AwareDatetime
    rows: int = Field(ge=0)


# --------------------------------------------------------------------------- the plan


class PlannedPartition(BaseModel):
    name: str
    lower: datetime
    upper: datetime
    reason: str


class PlannedExpiry(BaseModel):
    name: str
    schema_name: str | None = Field(default=None, description="None: the parent's schema.")
    lower: datetime | None
    upper: datetime | None
    action: ExpiredAction
    reason: str

    @property
    def label(self) -> str:
        return partition_label(self.schema_name, self.name)


class KeptPartition(BaseModel):
    """An expired child kept anyway (the last child is never dropped)."""

    name: str
    schema_name: str | None = Field(default=None, description="None: the parent's schema.")
    lower: datetime | None
    upper: datetime | None
    reason: str

    @property
    def label(self) -> str:
        return partition_label(self.schema_name, self.name)


class PlannedRescue(BaseModel):
    bucket_start: datetime
    rows: int
    into_partition_name: str
    reason: str


class Gap(BaseModel):
    lower: datetime
    upper: datetime
    reason: str


class HealthFinding(BaseModel):
    kind: HealthKind
    detail: str


class RotationPlan(BaseModel):
    """Everything one rotation would do to one table, each with its reason, ordered by time."""

    table: str
    interval: Interval
    timezone: str
    current_start: datetime = Field(description="Start of the interval holding `now`.")
    retention_cutoff: datetime | None = Field(
        description="Children whose upper bound is at or before this expire. None: no retention."
    )
    create: list[PlannedPartition] = Field(default_factory=list)
    deferred: list[PlannedPartition] = Field(
        default_factory=list, description="Wanted but over max_created_per_run; a later run."
    )
    expire: list[PlannedExpiry] = Field(default_factory=list)
    kept: list[KeptPartition] = Field(default_factory=list)
    rescue: list[PlannedRescue] = Field(default_factory=list)
    gaps: list[Gap] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    health: list[HealthFinding] = Field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.create or self.expire or self.rescue)


_ACTION_TEXT: dict[ExpiredAction, str] = {
    "archive_then_drop": (
        "detach, archive to {archive}, verify the checksum and row count, then drop"
    ),
    "detach_only": "detach and keep it as a standalone table",
    "drop": "detach and drop (no archive)",
}


def _iso(ts: datetime | None, zone: ZoneInfo, missing: str) -> str:
    return missing if ts is None else ts.astimezone(zone).isoformat()


def _bounds(child: ExistingPartition, zone: ZoneInfo) -> str:
    return f"[{_iso(child.lower, zone, 'MINVALUE')}, {_iso(child.upper, zone, 'MAXVALUE')})"


def _covers(child: ExistingPartition, lower: datetime, upper: datetime) -> bool:
    return (child.lower is None or child.lower <= lower) and (
        child.upper is None or upper <= child.upper
    )


def _overlaps(child: ExistingPartition, lower: datetime, upper: datetime) -> bool:
    return (child.lower is None or child.lower < upper) and (
        child.upper is None or lower < child.upper
    )


def _sort_key(child: ExistingPartition) -> tuple[datetime, datetime, str]:
    low = datetime.min.replace(tzinfo=UTC)
    high = datetime.max.replace(tzinfo=UTC)
    return (child.lower or low, child.upper or high, child.label)


def plan_rotation(
    policy: PartitionPolicy,
    now: datetime,
    existing: list[ExistingPartition],
    default_rows: list[DefaultRows],
    max_future_intervals: int = DEFAULT_MAX_FUTURE_INTERVALS,
    *,
    after_changes: bool = False,
) -> RotationPlan:
    """What one rotation of `policy.table` would do at `now`, given its children and the rows
    waiting in its default partition. Deterministic; nothing is read or written.

    An expired child is kept when it is the last child: not when this plan creates newer ones
    first (they are created before anything expires, and the run plans its expiry again from
    the catalog once they exist). `after_changes`: the children are those a run left after
    creating its partitions (nothing more is created before the expiry: the last child is kept
    whatever is still missing), and the findings say what is left for a later run (the report
    of an applied run describes the state it leaves, not the one it found)."""
    if max_future_intervals < 0:
        raise ValueError(f"max_future_intervals must be >= 0, got {max_future_intervals}")
    interval, zone, tz = policy.interval, policy.zone, policy.timezone

    def label(ts: datetime) -> str:
        return interval_label(ts, interval, zone)

    def step(ts: datetime, n: int) -> datetime:
        return add_intervals(ts, interval, n, zone)

    def aligned(ts: datetime) -> bool:
        return floor_to_interval(ts, interval, zone) == ts

    current = floor_to_interval(_aware(now, "now"), interval, zone)
    span = policy.retention_span
    cutoff = None if span is None else add_intervals(current, span[1], -span[0], zone)
    plan = RotationPlan(
        table=policy.table,
        interval=interval,
        timezone=tz,
        current_start=current,
        retention_cutoff=cutoff,
    )
    default = next((c for c in existing if c.is_default), None)
    children = sorted((c for c in existing if not c.is_default), key=_sort_key)
    # New children go in the parent's schema: only a name taken there blocks one.
    names = {c.name for c in existing if c.schema_name is None}

    # Which children the plan understands: bounded, on interval boundaries in the policy's zone.
    adopted: list[ExistingPartition] = []
    for child in children:
        if child.lower is None or child.upper is None:
            plan.problems.append(
                f"cannot adopt: child {child.label} has bounds {_bounds(child, zone)}, unbounded "
                f"(MINVALUE/MAXVALUE), not aligned to {interval} in {tz}; left alone"
            )
        elif not (aligned(child.lower) and aligned(child.upper)):
            plan.problems.append(
                f"cannot adopt: child {child.label} has bounds {_bounds(child, zone)} not aligned "
                f"to {interval} in {tz}; left alone"
            )
        else:
            adopted.append(child)

    # Gaps and overlaps between non-default children, in order.
    reach: ExistingPartition | None = None
    for child in children:
        if reach is not None and reach.upper is not None:
            if child.lower is not None and reach.upper < child.lower:
                where = (
                    f"rows in it go to the default partition {default.label}"
                    if default
                    else "inserts in it fail (no default partition)"
                )
                plan.gaps.append(
                    Gap(
                        lower=reach.upper,
                        upper=child.lower,
                        reason=f"no child covers [{_iso(reach.upper, zone, '')}, "
                        f"{_iso(child.lower, zone, '')}) between {reach.label} and "
                        f"{child.label}: {where}",
                    )
                )
            elif child.lower is None or child.lower < reach.upper:
                plan.problems.append(
                    f"overlapping ranges: child {child.label} {_bounds(child, zone)} overlaps "
                    f"{reach.label} {_bounds(reach, zone)}"
                )
        if reach is None or (
            reach.upper is not None and (child.upper is None or child.upper > reach.upper)
        ):
            reach = child

    # Wanted partitions: the current interval, `premake` ahead, then buckets holding default rows.
    wanted: dict[datetime, tuple[int, str]] = {}  # lower -> (priority, reason)

    def blocked(lower: datetime, upper: datetime) -> str | None:
        """Why a partition for [lower, upper) cannot be created, or None if it can."""
        name = partition_name(policy.table_name, lower, interval, zone)
        for child in children:
            if _overlaps(child, lower, upper):
                return f"it would overlap child {child.label} {_bounds(child, zone)}"
        if name in names:
            return f"the name {name} is taken by a child with other bounds"
        return None

    def covering(lower: datetime, upper: datetime) -> ExistingPartition | None:
        return next((c for c in children if _covers(c, lower, upper)), None)

    for i in range(policy.premake + 1):
        lower, upper = step(current, i), step(current, i + 1)
        if covering(lower, upper) is not None:
            continue
        why_not = blocked(lower, upper)
        if why_not is not None:
            plan.problems.append(
                f"cannot create {partition_name(policy.table_name, lower, interval, zone)} "
                f"for {label(lower)}: {why_not}"
            )
            continue
        if i == 0:
            reason = f"current {interval} {label(lower)}: no child covers it"
        else:
            reason = f"premake {i} of {policy.premake}: {interval} {label(lower)} is not covered"
        wanted[lower] = (i, reason)

    # Rows in the default partition, merged per aligned bucket.
    buckets: dict[datetime, int] = {}
    for entry in default_rows:
        start = floor_to_interval(entry.bucket_start, interval, zone)
        buckets[start] = buckets.get(start, 0) + entry.rows
    far_limit = step(current, max_future_intervals + 1)
    destinations: dict[datetime, str] = {}  # bucket -> existing child name
    unrescued: dict[datetime, str] = {}  # bucket -> why not
    for start, rows in sorted(buckets.items()):
        if rows <= 0:
            continue
        upper = step(start, 1)
        if start >= far_limit:
            unrescued[start] = "far-future"
            continue
        holder = covering(start, upper)
        if holder is not None:
            destinations[start] = holder.label
            continue
        if start in wanted:
            continue
        if cutoff is not None and upper <= cutoff:
            unrescued[start] = (
                f"{label(start)} is past retention (ends at or before "
                f"{_iso(cutoff, zone, '')}): no partition is made for it; not moved"
            )
            continue
        why_not = blocked(start, upper)
        if why_not is not None:
            unrescued[start] = f"no partition can be made for {label(start)}: {why_not}; not moved"
            continue
        wanted[start] = (
            policy.premake + 1 + len(wanted),
            f"{rows} rows in the default partition belong to {interval} {label(start)}",
        )

    # Cap: the current interval first, then premade ones, then buckets with rows waiting.
    by_priority = sorted(wanted.items(), key=lambda item: (item[1][0], item[0]))
    keep = {lower for lower, _ in by_priority[: policy.max_created_per_run]}
    for lower, (_, reason) in sorted(wanted.items()):
        item = PlannedPartition(
            name=partition_name(policy.table_name, lower, interval, zone),
            lower=lower,
            upper=step(lower, 1),
            reason=reason,
        )
        if lower in keep:
            plan.create.append(item)
        else:
            item.reason = (
                f"{reason}; over max_created_per_run={policy.max_created_per_run}, "
                "a later run creates it"
            )
            plan.deferred.append(item)
    planned = {p.lower: p.name for p in plan.create}

    # Rescue and report default rows, in time order.
    for start, rows in sorted(buckets.items()):
        if rows <= 0:
            continue
        target = destinations.get(start) or planned.get(start)
        if start in unrescued and unrescued[start] == "far-future":
            plan.health.append(
                HealthFinding(
                    kind="far_future_rows",
                    detail=f"{rows} rows in the default partition for {interval} {label(start)}, "
                    f"more than {max_future_intervals} {interval}s after {label(current)}: not "
                    "rescued (likely bad timestamps; check the writer's clock)",
                )
            )
            continue
        if target is not None:
            made = "existing" if start in destinations else "new"
            plan.rescue.append(
                PlannedRescue(
                    bucket_start=start,
                    rows=rows,
                    into_partition_name=target,
                    reason=f"{rows} rows in the default partition belong to {interval} "
                    f"{label(start)}: move them into {made} partition {target}",
                )
            )
            detail = (
                f"the next run moves them to {target}"
                if after_changes
                else f"this run moves them to {target}"
            )
        elif start in unrescued:
            detail = unrescued[start]
        else:
            detail = "its partition waits for a later run (max_created_per_run); not moved yet"
        plan.health.append(
            HealthFinding(
                kind="default_rows",
                detail=f"{rows} rows in the default partition belong to {interval} "
                f"{label(start)}: {detail}",
            )
        )

    # Premade partitions running short (before this run creates any; after_changes: still).
    ready = sum(
        1 for i in range(1, policy.premake + 1) if covering(step(current, i), step(current, i + 1))
    )
    if ready < policy.premake:
        coming = sum(1 for p in plan.create if p.lower > current)
        plan.health.insert(
            0,
            HealthFinding(
                kind="premade_short",
                detail=f"{ready} of {policy.premake} {interval}s after {label(current)} have a "
                + (
                    f"partition ready after this run; the next run creates {coming}"
                    if after_changes
                    else f"partition ready; this run creates {coming}"
                ),
            ),
        )

    # Expiry: adopted children that ended at or before the cutoff; never the last child.
    if cutoff is not None:
        expired = [c for c in adopted if c.upper is not None and c.upper <= cutoff]
        spared: ExistingPartition | None = None
        if expired and len(expired) == len(children) and (after_changes or not plan.create):
            spared = expired.pop()
            plan.kept.append(
                KeptPartition(
                    name=spared.name,
                    schema_name=spared.schema_name,
                    lower=spared.lower,
                    upper=spared.upper,
                    reason=f"expired (ends {_iso(spared.upper, zone, '')} <= cutoff "
                    f"{_iso(cutoff, zone, '')}) but it is the last child: never drops the "
                    "last child",
                )
            )
        action = _ACTION_TEXT[policy.expired_action].format(archive=policy.archive)
        for child in expired:
            plan.expire.append(
                PlannedExpiry(
                    name=child.name,
                    schema_name=child.schema_name,
                    lower=child.lower,
                    upper=child.upper,
                    action=policy.expired_action,
                    reason=f"ends {_iso(child.upper, zone, '')} <= cutoff "
                    f"{_iso(cutoff, zone, '')} ({label(current)} minus {policy.retention}): "
                    f"{action}",
                )
            )
    return plan


# --------------------------------------------------------------------------- hash


class HashPlan(BaseModel):
    """Remainders a hash-partitioned table lacks, the names to create them under, and problems."""

    table: str
    modulus: int
    missing: list[int] = Field(default_factory=list)
    names: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    reason: str = ""


def hash_partition_name(table_name: str, remainder: int, modulus: int) -> str:
    """`user_activities_h07` for remainder 7 of 32 (zero-padded to the widest remainder)."""
    width = len(str(modulus - 1))
    return fit_identifier(table_name, f"_h{remainder:0{width}d}")


def plan_hash(
    policy: HashPolicy, existing_remainders: list[int], existing_modulus: int | None
) -> HashPlan:
    """Which of the `policy.modulus` hash partitions are missing. A table whose children use a
    different modulus is reported, not converted."""
    plan = HashPlan(table=policy.table, modulus=policy.modulus)
    if existing_modulus is not None and existing_modulus != policy.modulus:
        plan.problems.append(
            f"cannot plan {policy.table}: its partitions use modulus {existing_modulus}, the "
            f"policy says {policy.modulus}; changing the modulus needs a rebuild (not done here)"
        )
        plan.reason = "modulus mismatch: nothing planned"
        return plan
    present = set()
    for remainder in existing_remainders:
        if not 0 <= remainder < policy.modulus:
            plan.problems.append(
                f"remainder {remainder} is outside 0..{policy.modulus - 1} for modulus "
                f"{policy.modulus}"
            )
        elif remainder in present:
            plan.problems.append(f"remainder {remainder} appears more than once")
        present.add(remainder)
    plan.missing = [r for r in range(policy.modulus) if r not in present]
    plan.names = [hash_partition_name(policy.table_name, r, policy.modulus) for r in plan.missing]
    have = policy.modulus - len(plan.missing)
    plan.reason = (
        f"all {policy.modulus} partitions exist"
        if not plan.missing
        else f"{have} of {policy.modulus} partitions exist; create remainders "
        + ", ".join(str(r) for r in plan.missing)
    )
    return plan
