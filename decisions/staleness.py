"""Which tables need fresh planner statistics, and why. Pure: no I/O, no Prefect.

A table is stale when the rows modified since its last ANALYZE reach `analyze_threshold` of its
rows (`n_mod_since_analyze / max(reltuples or n_live_tup, 1)`), or when it was never analyzed, or
when its change counters were reset since its last ANALYZE (statistics exist but no analyze time:
`pg_stat_reset()`, a crash or a failover); then the changes before the reset are unknown, and
PostgreSQL's documentation advises an ANALYZE.
Optionally a table whose dead tuples reach `vacuum_dead_ratio` of all its tuples gets
`VACUUM (ANALYZE)` instead. Every table gets one decision with the reason a person reads
("12.0% of rows changed since last analyze >= 10%", "fresh: 2.1% < 10%"), most stale first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from perfops.names import display_name, names_table, quote_ident, schema_name
from perfops.wording import no_table_matches, tables_here

DEFAULT_ANALYZE_THRESHOLD = 0.1
DEFAULT_PARALLELISM = 2
DEFAULT_LOCK_TIMEOUT_MS = 2_000
DEFAULT_STATEMENT_TIMEOUT_MS = 600_000
DEFAULT_BATCH_SIZE = 200

Action = Literal["analyze", "vacuum-analyze", "skip"]
# Why: stale, never analyzed, change counters reset, dead tuples (act); fresh, small, excluded,
# over max_tables, partitioned parent whose partitions changed too little (skip).
Code = Literal[
    "never-analyzed",
    "counters-reset",
    "stale",
    "dead-tuples",
    "fresh",
    "small",
    "excluded",
    "over-max-tables",
    "partitioned",
    "with-parent",
]


class TableStats(BaseModel):
    """One table's statistics counters, as pg_stat_user_tables and pg_class report them."""

    relid: int = Field(description="pg_class oid; identifies the table across queries.")
    schema_name: str
    table_name: str
    relkind: Literal["r", "m", "p"] = Field(
        default="r", description="r table, m materialized view, p partitioned table."
    )
    ancestors: list[int] = Field(
        default_factory=list,
        description="The partitioned tables it is a partition of (relids, nearest first).",
    )
    n_live_tup: int = 0
    n_dead_tup: int = 0
    n_mod_since_analyze: int = 0
    reltuples: float = Field(
        default=-1, description="Row estimate from the last VACUUM/ANALYZE; -1 when never."
    )
    size_bytes: int = Field(default=0, description="relpages x block size (no lock taken).")
    last_analyze: datetime | None = None
    last_autoanalyze: datetime | None = None
    analyze_count: int = 0
    autoanalyze_count: int = 0
    has_statistics: bool = Field(
        default=False,
        description="pg_stats has rows for it (statistics exist even if their time was reset).",
    )

    @property
    def name(self) -> str:
        return display_name(self.schema_name, self.table_name)

    @property
    def rows(self) -> float:
        """Rows the planner believes the table has (the live count when never estimated)."""
        return self.reltuples if self.reltuples > 0 else float(self.n_live_tup)

    @property
    def change_ratio(self) -> float:
        """Rows modified since the last analyze, as a fraction of the table's rows."""
        return self.n_mod_since_analyze / max(self.rows, 1.0)

    @property
    def dead_ratio(self) -> float:
        """Dead tuples as a fraction of all tuples."""
        return self.n_dead_tup / max(self.n_live_tup + self.n_dead_tup, 1)

    @property
    def never_analyzed(self) -> bool:
        return (
            self.last_analyze is None and self.last_autoanalyze is None and not self.has_statistics
        )

    @property
    def counters_reset(self) -> bool:
        """Analyzed once (pg_stats has its statistics) but no analyze time is recorded: the
        change counters were reset since (pg_stat_reset(), a crash, a failover), so
        `n_mod_since_analyze` counts only the changes since the reset."""
        return self.last_analyze is None and self.last_autoanalyze is None and self.has_statistics


class StatisticsPolicy(BaseModel):
    """What counts as stale, what to leave alone, and how hard to work. Defaults are safe for a
    daily run: ANALYZE only, 2 connections, 2 s lock_timeout per table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    analyze_threshold: float = Field(
        default=DEFAULT_ANALYZE_THRESHOLD,
        gt=0,
        le=1,
        description="ANALYZE a table when rows modified since its last analyze reach this "
        "fraction of its rows (0.1 = 10%, autovacuum's default scale factor).",
    )
    min_rows: int = Field(
        default=0,
        ge=0,
        description="Leave tables with fewer estimated rows than this alone (0: judge all).",
    )
    vacuum_dead_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Also VACUUM (ANALYZE) tables whose dead tuples reach this fraction of all "
        "tuples (e.g. 0.2). None: never VACUUM, ANALYZE only.",
    )
    include_schemas: list[str] | None = Field(
        default=None,
        description="Only these schemas (exact names). None or empty: every user schema.",
    )
    exclude_schemas: list[str] = Field(
        default_factory=list, description="Never these schemas (exact names)."
    )
    include_tables: list[str] | None = Field(
        default=None,
        description="Only tables whose schema.table matches one of these (exact or glob, "
        "e.g. public.orders, sales.*; without a dot, the table name in any schema: orders). "
        "None or empty: every table. A run where none matches fails, naming them.",
    )
    exclude_tables: list[str] = Field(
        default_factory=list,
        description="Never tables whose schema.table matches one of these (exact or glob; "
        "without a dot, the table name in any schema).",
    )
    max_tables: int | None = Field(
        default=None,
        ge=1,
        description="At most this many tables per run, most stale first; the rest wait for the "
        "next run. None: no limit.",
    )
    parallelism: int = Field(
        default=DEFAULT_PARALLELISM,
        ge=1,
        le=8,
        description="Tables analyzed at once, each on its own connection.",
    )
    lock_timeout_ms: int = Field(
        default=DEFAULT_LOCK_TIMEOUT_MS,
        ge=1,
        le=600_000,
        description="Per statement: give up on a table locked by another session after this "
        "long, report it and go on.",
    )
    statement_timeout_ms: int = Field(
        default=DEFAULT_STATEMENT_TIMEOUT_MS,
        ge=1_000,
        le=86_400_000,
        description="Per statement: stop an ANALYZE or VACUUM that runs longer than this.",
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        ge=1,
        le=5_000,
        description="Tables per Prefect task run (one task per batch, never one per table).",
    )

    @field_validator("include_schemas", "include_tables")
    @classmethod
    def _empty_is_all(cls, value: list[str] | None) -> list[str] | None:
        """An empty list (a cleared field in the UI's form) means every one, as None does."""
        return value or None

    @field_validator("include_schemas", "exclude_schemas")
    @classmethod
    def _quoted_schemas(cls, value: list[str] | None) -> list[str] | None:
        """A schema may be named as stored or quoted as perfops prints it (`"Mixed Case"`)."""
        return [schema_name(s) for s in value] if value is not None else None


class Decision(BaseModel):
    """What to do with one table, and why."""

    table: TableStats
    action: Action
    code: Code
    reason: str

    @property
    def acts(self) -> bool:
        return self.action != "skip"


def percent(fraction: float) -> str:
    """0.1204 -> '12.0%'."""
    return f"{fraction * 100:.1f}%"


def threshold_percent(fraction: float) -> str:
    """0.1 -> '10%', 0.125 -> '12.5%'."""
    return f"{round(fraction * 100, 2):g}%"


def _matches(t: TableStats, patterns: Iterable[str]) -> bool:
    """`schema.table` against patterns: the name as stored or as PostgreSQL reads it
    (`"Sales"."Events"`, the form errors list; `perfops.names`), or a glob over either form, a
    pattern without a dot on the table name in any schema (`orders`, `audit_*`)."""
    raw = f"{t.schema_name}.{t.table_name}"
    shown = display_name(t.schema_name, t.table_name)
    return any(
        names_table(p, t.schema_name, t.table_name)
        or any(
            fnmatchcase(whole if "." in p else bare, p)
            for whole, bare in ((raw, t.table_name), (shown, quote_ident(t.table_name)))
        )
        for p in patterns
    )


def _excluded(t: TableStats, policy: StatisticsPolicy) -> str | None:
    """Why a policy filter leaves the table out, or None."""
    if policy.include_schemas is not None and t.schema_name not in policy.include_schemas:
        return "excluded: schema not in include_schemas"
    if t.schema_name in policy.exclude_schemas:
        return "excluded: schema in exclude_schemas"
    if policy.include_tables is not None and not _matches(t, policy.include_tables):
        return "excluded: table not in include_tables"
    if _matches(t, policy.exclude_tables):
        return "excluded: table in exclude_tables"
    return None


class FilterMiss(BaseModel):
    """The include filters' names that select no table: a typo, or a schema or table that is
    not there. Said in the report; when they leave nothing to select, a single database's run
    fails (`error`) and a fleet's database has nothing to do."""

    schemas: list[str] = []  # include_schemas without a table
    tables: list[str] = []  # include_tables patterns matching no table of the schemas read
    error: str = ""  # when no table is selected at all: what was asked, what is there

    @property
    def nothing(self) -> bool:
        """Every name of an include filter missed: no table is selected."""
        return bool(self.error)

    @property
    def text(self) -> str | None:
        """One line for the report, the artifact and the log; None when every name selects."""
        parts = []
        if self.schemas:
            parts.append(f"no table in include_schemas {', '.join(self.schemas)} (--schema)")
        if self.tables:
            parts.append(no_table_matches(self.tables))
        return "; ".join(parts) or None


def filter_miss(stats: Sequence[TableStats], policy: StatisticsPolicy) -> FilterMiss:
    """Which include_schemas / include_tables names select no table of `stats` (the tables of
    the schemas read)."""
    present = {t.schema_name for t in stats}
    schemas = [s for s in policy.include_schemas or [] if s not in present]
    tables = [p for p in policy.include_tables or [] if not any(_matches(t, [p]) for t in stats)]
    if policy.include_schemas and len(schemas) == len(policy.include_schemas):
        error = (
            f"no table in include_schemas {', '.join(schemas)} (--schema): check the names "
            "(exact and case-sensitive)"
        )
    elif policy.include_tables and len(tables) == len(policy.include_tables):
        names = [display_name(t.schema_name, t.table_name) for t in stats]
        error = (
            f"{no_table_matches(tables)}: {tables_here(names)}; give schema.table, a table name "
            "or a glob like sales.*"
        )
    else:
        error = ""
    return FilterMiss(schemas=schemas, tables=tables, error=error)


def _judge(t: TableStats, policy: StatisticsPolicy) -> Decision:
    """The decision for one table, before ordering and `max_tables`."""
    threshold = threshold_percent(policy.analyze_threshold)
    excluded = _excluded(t, policy)
    if excluded:
        return Decision(table=t, action="skip", code="excluded", reason=excluded)
    if policy.min_rows and t.rows < policy.min_rows:
        return Decision(
            table=t,
            action="skip",
            code="small",
            reason=f"small: {t.rows:,.0f} rows < min_rows {policy.min_rows:,}",
        )
    if t.relkind == "p":
        if t.never_analyzed:
            return Decision(
                table=t,
                action="analyze",
                code="never-analyzed",
                reason="never analyzed (partitioned table: ANALYZE samples all its partitions)",
            )
        if t.counters_reset:  # its partitions' counters were reset with it: nothing to go by
            return Decision(
                table=t,
                action="analyze",
                code="counters-reset",
                reason="partitioned table whose change counters were reset since its last "
                "analyze (pg_stat_reset, a crash or a failover): the changes before the reset "
                "are unknown",
            )
        # Autovacuum never analyzes a partitioned table; its change count is read from its
        # partitions (tasks.postgres.tables.fetch_table_stats).
        ratio = t.change_ratio
        share = f"{percent(ratio)} of its partitions' rows new or changed since its last analyze"
        if ratio >= policy.analyze_threshold:
            return Decision(
                table=t,
                action="analyze",
                code="stale",
                reason=f"partitioned table: {share} >= {threshold} (autovacuum never analyzes "
                "it; ANALYZE samples all its partitions)",
            )
        return Decision(
            table=t,
            action="skip",
            code="partitioned",
            reason=f"partitioned table: {share} < {threshold}",
        )
    vacuum = policy.vacuum_dead_ratio is not None and t.dead_ratio >= policy.vacuum_dead_ratio
    dead_reason = (
        f"dead tuples {percent(t.dead_ratio)} >= {threshold_percent(policy.vacuum_dead_ratio)}"
        if vacuum and policy.vacuum_dead_ratio is not None
        else ""
    )
    action: Action = "vacuum-analyze" if vacuum else "analyze"
    if t.never_analyzed:
        reason = "never analyzed" + (f"; {dead_reason}" if dead_reason else "")
        return Decision(table=t, action=action, code="never-analyzed", reason=reason)
    ratio = t.change_ratio
    if t.counters_reset:
        reason = (
            "change counters reset since its last analyze (pg_stat_reset, a crash or a "
            f"failover): the changes before the reset are unknown ({percent(ratio)} of rows "
            "changed since)" + (f"; {dead_reason}" if dead_reason else "")
        )
        return Decision(table=t, action=action, code="counters-reset", reason=reason)
    if ratio >= policy.analyze_threshold:
        reason = f"{percent(ratio)} of rows changed since last analyze >= {threshold}"
        if dead_reason:
            reason += f"; {dead_reason}"
        return Decision(table=t, action=action, code="stale", reason=reason)
    if vacuum:
        return Decision(
            table=t,
            action="vacuum-analyze",
            code="dead-tuples",
            reason=f"{dead_reason} ({percent(ratio)} of rows changed)",
        )
    return Decision(
        table=t, action="skip", code="fresh", reason=f"fresh: {percent(ratio)} < {threshold}"
    )


_RANK: dict[Code, int] = {
    "never-analyzed": 0,
    "counters-reset": 1,
    "stale": 2,
    "dead-tuples": 3,
    "over-max-tables": 4,
    "fresh": 5,
    "with-parent": 6,
    "partitioned": 7,
    "small": 8,
    "excluded": 9,
}


def _order(d: Decision) -> tuple[int, float, float, str, str]:
    """Most stale first: never analyzed (biggest first), then by change ratio, then by dead ratio;
    skipped tables after, nearest to the threshold first."""
    t = d.table
    if d.code in ("never-analyzed", "counters-reset"):
        weight = t.rows
    elif d.code == "dead-tuples":
        weight = t.dead_ratio
    else:
        weight = t.change_ratio
    return (_RANK[d.code], -weight, -t.dead_ratio, t.schema_name, t.table_name)


def _with_parents(decisions: list[Decision]) -> list[Decision]:
    """A partition whose partitioned table is analyzed in this run is left to that ANALYZE (it
    recurses into every partition): analyzed on its own as well, at the same time on another
    connection, the two would wait for each other's lock (and fail at lock_timeout)."""
    names = {d.table.relid: d.table.name for d in decisions}
    parents = {d.table.relid for d in decisions if d.acts and d.table.relkind == "p"}
    out = []
    for d in decisions:
        parent = next((a for a in d.table.ancestors if a in parents), None)
        if d.acts and parent is not None:
            d = Decision(
                table=d.table,
                action="skip",
                code="with-parent",
                reason=f"analyzed with its partitioned table {names[parent]} ({d.reason})",
            )
        out.append(d)
    return out


def decide(stats: Sequence[TableStats], policy: StatisticsPolicy) -> list[Decision]:
    """One decision per table, most stale first, at most `policy.max_tables` acting; then a
    partition of a partitioned table that acts is left to that table's ANALYZE (only one that
    acts: one postponed by max_tables analyzes nothing this run)."""
    decisions = sorted((_judge(t, policy) for t in stats), key=_order)
    if policy.max_tables is None:
        return sorted(_with_parents(decisions), key=_order)
    kept: list[Decision] = []
    postponed: list[Decision] = []
    acting = 0
    for d in decisions:
        if d.acts and acting >= policy.max_tables:
            postponed.append(
                Decision(
                    table=d.table,
                    action="skip",
                    code="over-max-tables",
                    reason=f"over max_tables {policy.max_tables}: left for the next run "
                    f"({d.reason})",
                )
            )
            continue
        acting += d.acts
        kept.append(d)
    return sorted(_with_parents(kept + postponed), key=_order)


def batches(decisions: Sequence[Decision], size: int) -> list[list[Decision]]:
    """The acting decisions in order, cut into batches of `size` (one task run each)."""
    acting = [d for d in decisions if d.acts]
    return [acting[i : i + size] for i in range(0, len(acting), size)]
