"""Which indexes waste space and why: unused, duplicate, covered and invalid indexes. Pure: no
Prefect, no I/O.

From the index catalog (`tasks.postgres.indexes.IndexInfo` rows):

- **invalid**: `indisvalid` is false (a failed `CREATE INDEX CONCURRENTLY`, an interrupted
  `DROP INDEX CONCURRENTLY`): queries never use it, writes may still maintain it.
- **duplicate**: same table, method, key columns (with their operator class, collation and
  order), INCLUDE columns and predicate as another index. The one kept is, in order, the one
  backing a constraint, a unique one, a `NULLS NOT DISTINCT` one, the table's replica identity,
  one attached to a partitioned index (or one), one not reported unused, then the first by
  name; when all of them are reported unused, none is called a duplicate of another. A unique
  `NULLS NOT DISTINCT` index is never a duplicate of one without it (it also refuses a second
  NULL), nor a unique index a duplicate of a non-unique one.
- **covered**: a btree whose key columns are a strict prefix of another valid btree's on the same
  table with the same predicate (and whose INCLUDE columns the other has); never a unique index
  or one backing a constraint, and never covered by an index reported unused (the advice is then
  to keep the used narrow one and drop the unused wide one).
- **unused**: valid, no scans since the statistics were reset, at least `min_size_bytes`, not
  unique, not backing a constraint, not an index on a partitioned table (PostgreSQL keeps no
  scan counts for those: its partitions' indexes are reported each on its own).

A finding is reported but not droppable (with the reason and what to do instead) when its index
backs a constraint, is referenced by a foreign key, is the table's replica identity (dropping it
makes UPDATE and DELETE fail on a published table), or belongs to a partitioned index (`DROP
INDEX CONCURRENTLY` cannot drop a partitioned index, and a partition's index goes only with its
parent).

Each finding names the index to drop (`schema.index`, quoted where SQL needs it), the bytes it
wastes, and a reason naming the other index. Choosing what to drop from the names a person gave
(`select_drops`) is decided here too; the dropping itself is `tasks.postgres.index_changes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from perfops.names import schema_name

# The index catalog as `tasks.postgres.indexes` reads it (rows; no I/O here).


class IndexInfo(BaseModel):
    """One index as the catalog describes it."""

    schema_name: str
    table_name: str
    index_name: str
    columns: list[str]  # key columns in order; an expression appears as its text
    include_columns: list[str]
    method: str  # btree, hash, gin, gist, brin, ...
    predicate: str | None  # partial index WHERE clause, normalised by the server
    is_unique: bool
    is_primary: bool
    constraint_name: str | None  # the constraint it backs (primary key, unique, exclusion)
    is_valid: bool
    is_ready: bool
    size_bytes: int
    scans: int  # idx_scan since the last statistics reset
    definition: str  # pg_get_indexdef
    comment: str | None = None  # COMMENT ON INDEX: perfops' build record, or the owner's
    foreign_keys: str | None = None  # the foreign keys that reference the table through it
    is_replica_identity: bool = False  # REPLICA IDENTITY USING INDEX names it
    is_partitioned: bool = False  # an index on a partitioned table (no storage, no statistics)
    partition_of: str | None = None  # the partitioned index it is attached to, as SQL spells it


class IndexLocation(BaseModel):
    """Where an index is, read from pg_class alone in every schema (to place a name the catalog
    read, limited to `--schema`, did not find)."""

    schema_name: str
    index_name: str
    table_name: str


class LockedTable(BaseModel):
    """A table whose indexes could not be read because another session held a lock on it."""

    schema_name: str
    table_name: str
    index_names: list[str]  # read without the lock (pg_class), so a request can name them
    reason: str


class IndexCatalog(BaseModel):
    """The index catalog, the tables skipped because they were locked, and when the
    database's statistics (scan counts) were last reset (None: never)."""

    indexes: list[IndexInfo]
    locked_tables: list[LockedTable]
    stats_reset: datetime | None


DEFAULT_MIN_SIZE_BYTES = 1024 * 1024  # 1 MB: smaller unused indexes are not worth a change
DEFAULT_CATALOG_LOCK_TIMEOUT_MS = 1_000
DEFAULT_DROP_LOCK_TIMEOUT_MS = 5_000
DEFAULT_DROP_STATEMENT_TIMEOUT_MS = 600_000
DEFAULT_NEW_INDEX_GRACE_DAYS = 7
# The build record suggest_indexes leaves on each index it builds (COMMENT ON INDEX): PostgreSQL
# keeps no creation time, so this is how check_index_health knows an index is new.
BUILD_MARK = "perfops: built "


def build_comment(at: datetime) -> str:
    """The comment suggest_indexes puts on an index it built at `at`."""
    return f"{BUILD_MARK}{at.isoformat(timespec='seconds')} by suggest_indexes"


def built_at(comment: str | None) -> datetime | None:
    """When perfops built the index, from its comment; None when perfops did not build it (the
    catalog keeps no creation time) or the comment was changed."""
    if not comment or not comment.startswith(BUILD_MARK):
        return None
    stamp = comment.removeprefix(BUILD_MARK).split(" ", 1)[0]
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


FindingKind = Literal["invalid", "duplicate", "covered", "unused"]
_KIND_ORDER: dict[str, int] = {"invalid": 0, "duplicate": 1, "covered": 2, "unused": 3}
DropStatus = Literal["would drop", "dropped", "already gone", "not found", "refused", "failed"]


def schemas_without_indexes(indexes: Sequence[IndexInfo], schemas: Sequence[str] | None) -> str:
    """The asked schemas with no index (a typo, an empty schema), in one line; "" when each has
    one."""
    present = {i.schema_name for i in indexes}
    missing = [s for s in schemas or [] if s not in present]
    return f"no index in schemas {', '.join(missing)} (--schema)" if missing else ""


class IndexHealthSettings(BaseModel):
    """Tunables of `check_index_health` (all optional; the defaults suit a production database)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_size_bytes: int = Field(
        default=DEFAULT_MIN_SIZE_BYTES,
        ge=0,
        le=2**50,
        description="Report an unused index only from this size on (bytes, default 1 MB). "
        "Duplicate, covered and invalid indexes are reported at any size.",
    )
    schemas: list[str] | None = Field(
        default=None,
        description="Only these schemas (default, or empty: every schema but the system ones).",
    )
    catalog_lock_timeout_ms: int = Field(
        default=DEFAULT_CATALOG_LOCK_TIMEOUT_MS,
        ge=1,
        le=60_000,
        description="How long reading one table's index definitions may wait for a lock held by "
        "another session before that table is skipped (default 1,000 ms).",
    )
    drop_lock_timeout_ms: int = Field(
        default=DEFAULT_DROP_LOCK_TIMEOUT_MS,
        ge=1,
        le=600_000,
        description="lock_timeout of each DROP INDEX CONCURRENTLY, which also waits for the "
        "transactions using the table to finish (default 5,000 ms).",
    )
    new_index_grace_days: int = Field(
        default=DEFAULT_NEW_INDEX_GRACE_DAYS,
        ge=0,
        le=365,
        description="An index suggest_indexes built (its build record, a COMMENT ON INDEX) is "
        "not reported unused until it is this many days old: it has had no time to be used.",
    )
    drop_statement_timeout_ms: int = Field(
        default=DEFAULT_DROP_STATEMENT_TIMEOUT_MS,
        ge=1_000,
        le=86_400_000,
        description="statement_timeout of each DROP INDEX CONCURRENTLY (default 600,000 ms).",
    )

    @field_validator("schemas")
    @classmethod
    def _empty_is_all(cls, value: list[str] | None) -> list[str] | None:
        """An empty list (a cleared field in the UI's form) means every schema, as None does; a
        name may be quoted as perfops prints it (`"Mixed Case"`)."""
        return [schema_name(s) for s in value] if value else None


class IndexFinding(BaseModel):
    """An index that wastes space, and why."""

    kind: FindingKind
    name: str  # schema.index as SQL spells it (what `--drop` takes)
    schema_name: str
    table_name: str
    index_name: str
    table: str  # schema.table as SQL spells it
    definition: str  # pg_get_indexdef, re-checked before a drop
    size_bytes: int  # the space it wastes
    scans: int
    reason: str  # every reason that applies, most important first
    other_index: str | None = None  # the index kept in its place (duplicate, covered)
    other_schema: str | None = None
    other_index_name: str | None = None
    other_definition: str | None = None
    droppable: bool = True
    not_droppable_reason: str | None = None


class DropOutcome(BaseModel):
    """What happened (or would happen) to one index named for dropping."""

    requested: str  # the name as given
    name: str  # schema.index as SQL spells it (the request when it named nothing)
    status: DropStatus
    reason: str
    size_bytes: int = 0
    seconds: float | None = None


class DropPlan(BaseModel):
    """Each requested name's outcome so far, and the findings to drop (when applying)."""

    outcomes: list[DropOutcome]
    to_drop: list[IndexFinding]


def maybe_double_quote_name(name: str) -> str:
    """`name` with double quotes where SQL needs them (pglast's rules, imported on first use:
    pglast loads in ~0.1 s and the CLI should not pay that for commands that never parse SQL)."""
    from pglast.stream import maybe_double_quote_name as quote

    return str(quote(name))


def qualified_name(schema: str, name: str) -> str:
    """`schema.name` with double quotes where SQL needs them."""
    return f"{maybe_double_quote_name(schema)}.{maybe_double_quote_name(name)}"


@dataclass(frozen=True)
class _Shape:
    """What makes two indexes interchangeable (the key parts keep opclass, collation, order)."""

    keys: tuple[str, ...]
    include: frozenset[str]
    method: str
    predicate: str | None
    # A unique index that also refuses a second NULL: stricter than one without, so never kept
    # as the same (it is not part of the shape: the plain one is its duplicate, not vice versa).
    nulls_not_distinct: bool = field(default=False, compare=False)


def index_shape(index: IndexInfo) -> _Shape:
    """Key parts as SQL (`name text_pattern_ops`, `a COLLATE "C" DESC`), parsed from the index
    definition; the catalog's column list alone drops operator class, collation and order."""
    from pglast import ast, parse_sql
    from pglast.parser import ParseError
    from pglast.stream import RawStream

    keys: tuple[str, ...] = tuple(index.columns)
    include = frozenset(index.include_columns)
    nulls_not_distinct = "NULLS NOT DISTINCT" in index.definition.upper()
    try:
        statement = parse_sql(index.definition)[0].stmt
    except (ParseError, IndexError):
        statement = None  # fall back to the catalog's column texts
    if isinstance(statement, ast.IndexStmt):
        keys = tuple(RawStream()(p) for p in statement.indexParams or ())
        include = frozenset(RawStream()(p) for p in statement.indexIncludingParams or ())
        nulls_not_distinct = bool(statement.nulls_not_distinct)
    return _Shape(keys, include, index.method, index.predicate, nulls_not_distinct)


def classify_indexes(
    indexes: Sequence[IndexInfo],
    *,
    min_size_bytes: int = DEFAULT_MIN_SIZE_BYTES,
    stats_reset: datetime | None = None,
    now: datetime | None = None,
    grace: timedelta = timedelta(days=DEFAULT_NEW_INDEX_GRACE_DAYS),
) -> list[IndexFinding]:
    """Every unused, duplicate, covered or invalid index, most wasted bytes first; an index that
    is several of these is one finding with every reason. An index perfops built less than
    `grace` before `now` (its build record) is not reported unused: it is new, not unused."""
    shapes = {_key(i): index_shape(i) for i in indexes}
    reasons: dict[tuple[str, str], list[tuple[FindingKind, str]]] = {}  # index -> [(kind, why)]
    others: dict[tuple[str, str], IndexInfo] = {}
    by_key = {_key(i): i for i in indexes}

    def add(
        index: IndexInfo, kind: FindingKind, reason: str, other: IndexInfo | None = None
    ) -> None:
        reasons.setdefault(_key(index), []).append((kind, reason))
        if other is not None and _key(index) not in others:
            others[_key(index)] = other

    def unused(index: IndexInfo) -> bool:
        """Reported unused below (so a person may drop it): never kept in another's place."""
        if not (
            index.is_valid
            and index.scans == 0
            and index.size_bytes >= min_size_bytes
            and not index.is_unique
            and not index.is_primary
            and not index.constraint_name
            and not index.is_partitioned  # no scan counts are kept for it: always 0
        ):
            return False
        built = built_at(index.comment)
        return not (built is not None and now is not None and now - built < grace)

    to_drop_unused = {_key(i) for i in indexes if unused(i)}

    for index in indexes:
        if not index.is_valid:
            maintained = "writes still maintain it" if index.is_ready else "writes skip it"
            add(
                index,
                "invalid",
                f"invalid (a failed CREATE INDEX CONCURRENTLY or an interrupted DROP INDEX "
                f"CONCURRENTLY): queries never use it, {maintained}",
            )

    valid = [i for i in indexes if i.is_valid]
    groups: dict[tuple[str, str, _Shape], list[IndexInfo]] = {}
    for index in valid:
        groups.setdefault((index.schema_name, index.table_name, shapes[_key(index)]), []).append(
            index
        )
    dropped_as_duplicate: set[tuple[str, str]] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        # Keep a used one where the flags allow: the index kept must not itself be advised away.
        keeper, *rest = sorted(
            members,
            key=lambda i: (
                *_keep_order(i)[:3],
                not shapes[_key(i)].nulls_not_distinct,
                not i.is_replica_identity,
                # one that cannot be dropped on its own (a partitioned index, or a partition's
                # attached one) is kept, so the copy that can go is the one reported
                i.partition_of is None and not i.is_partitioned,
                _key(i) in to_drop_unused,
                i.index_name,
            ),
        )
        if _key(keeper) in to_drop_unused:
            continue  # all of them unused: each is reported unused, none kept for another
        for index in rest:
            if _stricter(index, shapes[_key(index)], keeper, shapes[_key(keeper)]):
                continue  # it enforces more than the one kept (a constraint's): not a duplicate
            dropped_as_duplicate.add(_key(index))
            add(
                index,
                "duplicate",
                f"duplicate of {_describe(keeper, shapes[_key(keeper)])}"
                + (" (kept: it backs a constraint)" if keeper.constraint_name else ""),
                keeper,
            )

    candidates = [i for i in valid if i.method == "btree" and _key(i) not in dropped_as_duplicate]
    for index in candidates:
        if index.is_unique or index.constraint_name:
            continue
        shape = shapes[_key(index)]
        covering = [
            other
            for other in candidates
            if other is not index
            and _key(other) not in to_drop_unused  # advised away itself: it covers nothing
            and (other.schema_name, other.table_name) == (index.schema_name, index.table_name)
            and _covers(shapes[_key(other)], shape)
        ]
        if covering:
            # The widest covering index: no other candidate covers it in turn.
            best = min(covering, key=lambda o: (-len(shapes[_key(o)].keys), o.index_name))
            add(index, "covered", f"covered by {_describe(best, shapes[_key(best)])}", best)

    for index in valid:
        if _key(index) in to_drop_unused:  # (an index perfops built within `grace` is new)
            built = built_at(index.comment)
            since = (
                f"statistics reset on {stats_reset:%Y-%m-%d}"
                if stats_reset
                else "statistics began (never reset)"
            )
            add(
                index,
                "unused",
                f"unused: no scans on this server since {since}, "
                f"{format_bytes(index.size_bytes)} >= {format_bytes(min_size_bytes)}"
                + (f"; built by perfops on {built:%Y-%m-%d}" if built else ""),
            )

    findings = []
    for key, found in reasons.items():
        index = by_key[key]
        found.sort(key=lambda kr: _KIND_ORDER[kr[0]])
        kind = found[0][0]
        other = others.get(key)
        blocked = _not_droppable(index)
        findings.append(
            IndexFinding(
                kind=kind,
                name=qualified_name(index.schema_name, index.index_name),
                schema_name=index.schema_name,
                table_name=index.table_name,
                index_name=index.index_name,
                table=qualified_name(index.schema_name, index.table_name),
                definition=index.definition,
                size_bytes=index.size_bytes,
                scans=index.scans,
                reason="; ".join(r for _, r in found),
                other_index=qualified_name(other.schema_name, other.index_name) if other else None,
                other_schema=other.schema_name if other else None,
                other_index_name=other.index_name if other else None,
                other_definition=other.definition if other else None,
                droppable=blocked is None,
                not_droppable_reason=blocked,
            )
        )
    findings.sort(key=lambda f: (-f.size_bytes, _KIND_ORDER[f.kind], f.name))
    return findings


def _not_droppable(index: IndexInfo) -> str | None:
    """Why dropping the index itself is wrong even when it wastes space (None: it may go)."""
    table = qualified_name(index.schema_name, index.table_name)
    if index.constraint_name:
        return (
            f"backs constraint {maybe_double_quote_name(index.constraint_name)}: drop the "
            "constraint with ALTER TABLE if it is redundant, not the index"
        )
    if index.foreign_keys:
        return (
            f"foreign key {index.foreign_keys} references {table} through it: DROP INDEX "
            "fails while it does (drop the foreign key, drop the index, re-create the key)"
        )
    if index.is_replica_identity:
        return (
            f"it is the replica identity of {table} (logical replication finds rows by it; "
            "without it UPDATE and DELETE fail on a published table): ALTER TABLE "
            f"{table} REPLICA IDENTITY USING INDEX another (or DEFAULT) first"
        )
    if index.is_partitioned:
        return (
            f"it is the index of partitioned table {table}: DROP INDEX CONCURRENTLY cannot drop "
            "it; drop it with DROP INDEX (it takes its partitions' indexes and locks the table)"
        )
    if index.partition_of:
        return (
            f"it is a partition of index {index.partition_of}: it goes only with that index "
            "(DROP INDEX on the partitioned index)"
        )
    return None


def _stricter(index: IndexInfo, shape: _Shape, keeper: IndexInfo, kept: _Shape) -> bool:
    """`index` refuses rows `keeper` accepts: unique where the kept one is not, or NULLS NOT
    DISTINCT where the kept one lets NULLs repeat. Dropping it would lose that rule."""
    return (index.is_unique and not keeper.is_unique) or (
        shape.nulls_not_distinct and not kept.nulls_not_distinct
    )


def _key(index: IndexInfo) -> tuple[str, str]:
    return (index.schema_name, index.index_name)


def _keep_order(index: IndexInfo) -> tuple[bool, bool, bool, str]:
    """Among identical indexes, keep the constraint's, then a unique one, then the first name."""
    return (
        index.constraint_name is None,
        not index.is_primary,
        not index.is_unique,
        index.index_name,
    )


def _covers(wide: _Shape, narrow: _Shape) -> bool:
    """`wide` serves every lookup `narrow` serves: its keys start with all of narrow's (strictly
    more), same predicate, and narrow's INCLUDE columns are among wide's columns."""
    n = len(narrow.keys)
    return (
        wide.predicate == narrow.predicate
        and len(wide.keys) > n
        and wide.keys[:n] == narrow.keys
        and narrow.include <= (set(wide.keys) | wide.include)
    )


def _describe(index: IndexInfo, shape: _Shape) -> str:
    """`agents_name_team_idx (name, team)` (the other index is always on the same table)."""
    return f"{maybe_double_quote_name(index.index_name)} ({', '.join(shape.keys)})"


def wasted_bytes(findings: Iterable[IndexFinding]) -> int:
    return sum(f.size_bytes for f in findings)


def format_bytes(size: int) -> str:
    """Like pg_size_pretty: 512 bytes, 16 kB, 1.2 MB, 3 GB (powers of 1024)."""
    value = float(size)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            if unit == "bytes":
                return f"{int(value)} bytes"
            return f"{value:.1f}".removesuffix(".0") + f" {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def resolve_name(requested: str, indexes: Iterable[Any]) -> list[Any]:
    """Indexes (objects with `schema_name`, `index_name`) that `requested` names: `schema.index`
    as written or as SQL quotes it; else a bare index name, in any schema."""
    rows = list(indexes)
    qualified = [
        i
        for i in rows
        if requested
        in (f"{i.schema_name}.{i.index_name}", qualified_name(i.schema_name, i.index_name))
    ]
    if qualified:
        return qualified
    return [i for i in rows if requested in (i.index_name, maybe_double_quote_name(i.index_name))]


@dataclass(frozen=True)
class _LockedIndex:
    schema_name: str
    index_name: str
    table_name: str
    reason: str


def select_drops(
    findings: Sequence[IndexFinding],
    indexes: Sequence[IndexInfo],
    names: Sequence[str],
    *,
    apply: bool,
    locked_tables: Sequence[LockedTable] = (),
    min_size_bytes: int = DEFAULT_MIN_SIZE_BYTES,
    elsewhere: Sequence[IndexLocation] = (),
    schemas: Sequence[str] = (),
) -> DropPlan:
    """Decide, for each name a person gave, whether its index may be dropped.

    Only findings can be dropped, and only those not backing a constraint; one that matches
    several is ambiguous. A name the catalog read (limited to `schemas`) did not find is placed
    with `elsewhere` (every index of the database, by name): one outside `schemas` is refused,
    naming `--schema`; one in no schema is "not found" (already dropped, or misspelt: this run
    cannot tell which; it does not fail the run, so a rerun after a drop completes). A
    duplicate or covered index whose kept index (`other_index`) is asked to be dropped too is
    refused: dropping both would leave nothing in their place.
    Without `apply` each droppable finding is "would drop"; with it, the finding goes into
    `to_drop` for `tasks.postgres.index_changes.drop_indexes`, which re-checks it under a lock.
    """
    locked = [
        _LockedIndex(t.schema_name, name, t.table_name, t.reason)
        for t in locked_tables
        for name in t.index_names
    ]
    outcomes: list[DropOutcome] = []
    to_drop: list[IndexFinding] = []
    dropping: list[tuple[int, IndexFinding]] = []  # (its outcome, the finding) of each would-drop
    seen: set[str] = set()
    for requested in names:
        matches = resolve_name(requested, indexes) or resolve_name(requested, locked)
        if not matches:
            outcomes.append(_unmatched(requested, elsewhere, schemas))
            continue
        if len(matches) > 1:
            spelled = ", ".join(
                sorted(qualified_name(m.schema_name, m.index_name) for m in matches)
            )
            outcomes.append(
                DropOutcome(
                    requested=requested,
                    name=requested,
                    status="refused",
                    reason=f"ambiguous: it names {spelled}; give schema.index",
                )
            )
            continue
        match = matches[0]
        name = qualified_name(match.schema_name, match.index_name)
        if name in seen:
            continue
        seen.add(name)
        if isinstance(match, _LockedIndex):
            outcomes.append(
                DropOutcome(
                    requested=requested,
                    name=name,
                    status="failed",
                    reason=f"not checked: {match.reason}; nothing dropped, try again later",
                )
            )
            continue
        finding = next((f for f in findings if f.name == name), None)
        if finding is None:
            outcomes.append(
                DropOutcome(
                    requested=requested,
                    name=name,
                    status="refused",
                    reason=f"not a finding of this check ({_why_kept(match, min_size_bytes)}): "
                    "perfops drops only findings",
                    size_bytes=match.size_bytes,
                )
            )
            continue
        if not finding.droppable:
            outcomes.append(
                DropOutcome(
                    requested=requested,
                    name=name,
                    status="refused",
                    reason=finding.not_droppable_reason or "not droppable",
                    size_bytes=finding.size_bytes,
                )
            )
            continue
        outcomes.append(
            DropOutcome(
                requested=requested,
                name=name,
                status="would drop",
                reason=f"{finding.kind}: {finding.reason}",
                size_bytes=finding.size_bytes,
            )
        )
        dropping.append((len(outcomes) - 1, finding))
    # An index dropped as a duplicate or as covered relies on the other index staying: when that
    # one is asked to go too, dropping both would leave nothing serving those lookups.
    going = {f.name for _, f in dropping}
    for at, finding in dropping:
        if finding.other_index is not None and finding.other_index in going:
            outcomes[at] = outcomes[at].model_copy(
                update={
                    "status": "refused",
                    "reason": f"{finding.kind}: it is {finding.kind} only while "
                    f"{finding.other_index} stays, and {finding.other_index} is to be dropped "
                    "in this run too: dropping both leaves nothing serving those lookups; "
                    "drop one, then check again",
                }
            )
        elif apply:
            to_drop.append(finding)
    return DropPlan(outcomes=outcomes, to_drop=to_drop)


def _unmatched(
    requested: str, elsewhere: Sequence[IndexLocation], schemas: Sequence[str]
) -> DropOutcome:
    """A name the catalog read did not find: outside the schemas checked, or nowhere."""
    found = resolve_name(requested, elsewhere)
    if found:
        where = ", ".join(sorted(qualified_name(f.schema_name, f.index_name) for f in found))
        checked = ", ".join(dict.fromkeys(schemas)) if schemas else "all"
        add = " ".join(f"--schema {s}" for s in sorted({f.schema_name for f in found}))
        return DropOutcome(
            requested=requested,
            name=requested,
            status="refused",
            reason=f"{where} is outside the schemas checked ({checked}; --schema): not "
            f"checked, so not dropped; add {add} to check it",
        )
    return DropOutcome(
        requested=requested,
        name=requested,
        status="not found",
        reason=f"no index named {requested} in the database: nothing to drop (already dropped "
        "by an earlier run, or a misspelt name: check it)",
    )


def _why_kept(index: IndexInfo, min_size_bytes: int) -> str:
    """Why an index is not a finding, most telling first."""
    if index.constraint_name:
        return f"it backs constraint {maybe_double_quote_name(index.constraint_name)}"
    if index.is_unique:
        return "it is unique: it enforces something"
    if index.scans:
        return f"it was scanned {index.scans:,} times"
    if index.size_bytes < min_size_bytes:
        return (
            f"unused but {format_bytes(index.size_bytes)}, below the "
            f"{format_bytes(min_size_bytes)} threshold"
        )
    return "nothing wrong with it"


def finding_rows(
    findings: Sequence[IndexFinding],
    outcomes: Sequence[DropOutcome],
    locked_tables: Sequence[LockedTable] = (),
) -> list[dict[str, Any]]:
    """The report as table rows: each finding with what was done about it and why, then drop
    requests that matched no finding, then tables that could not be read. Columns: the index,
    the result (report only, would drop, dropped...) and the reason, then the details."""
    by_name = {o.name: o for o in outcomes}
    rows: list[dict[str, Any]] = []
    for f in findings:
        outcome = by_name.pop(f.name, None)
        if outcome is not None:
            action = _action(outcome)
        elif f.droppable:
            action = f"report only (to drop: --apply --drop {f.name})"
        else:
            action = f"report only ({f.not_droppable_reason})"
        rows.append(
            {
                "index": f.name,
                "result": action,
                "reason": f.reason,
                "kind": f.kind,
                "table": f.table,
                "wasted": format_bytes(f.size_bytes),
                "size_bytes": f.size_bytes,
                "scans": f.scans,
            }
        )
    for o in by_name.values():
        rows.append(
            {
                "index": o.name,
                "result": o.status,
                "reason": o.reason,
                "kind": "drop request",
                "table": "",
                "wasted": format_bytes(o.size_bytes) if o.size_bytes else "",
                "size_bytes": o.size_bytes,
                "scans": "",
            }
        )
    for t in locked_tables:
        rows.append(
            {
                "index": ", ".join(qualified_name(t.schema_name, n) for n in t.index_names),
                "result": "skipped",
                "reason": t.reason,
                "kind": "not checked",
                "table": qualified_name(t.schema_name, t.table_name),
                "wasted": "",
                "size_bytes": 0,
                "scans": "",
            }
        )
    return rows


def _action(outcome: DropOutcome) -> str:
    if outcome.status == "dropped":
        return f"dropped CONCURRENTLY in {outcome.seconds or 0:.1f} s"
    if outcome.status == "would drop":
        return "would drop (dry run: add --apply)"
    return f"{outcome.status}: {outcome.reason}"
