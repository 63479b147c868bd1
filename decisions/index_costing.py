"""How the index advisor costs a statement: at the generic plan, and at the parameter values it
will really see. Pure: no Prefect, no I/O (`tasks/postgres/column_stats.py` reads `pg_stats`,
`tasks/postgres/hypopg.py` plans each variant).

A generic plan estimates every `$n` at the column's average selectivity (rows / n_distinct).
On a skewed column (a few tenants owning much of a table) that makes every value look small:
the sort behind `WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 20` looks free, and
`(tenant_id)` looks as good as `(tenant_id, created_at)`. So each statement is costed as
PostgreSQL will run it for the values it is called with:

1. `skew_plan` picks the statement's *skew parameter*: of its `$n` compared for equality with a
   column, the one whose column's most common value is furthest above the average value's
   frequency (pg_stats `most_common_vals` / `most_common_freqs`, `n_distinct`, `null_frac`).
2. The most common values are cut into up to `max_values` groups of equal row share; each group
   is represented by its middle value and weighted by the group's share. The values outside the
   list (the rest of the rows) are weighted at the generic plan, which estimates the average.
3. Each variant is the statement with the skew parameter replaced by a representative value (the
   other parameters stay parameters): planned as a generic plan, it is the custom plan for that
   value. The statement's cost is the weighted mean, `sum(weight x cost)`: the expected cost of
   a call when calls follow the rows (the heavy tenants are the busy ones).

`LIMIT $n` (pg_stat_statements' form of `LIMIT 20`) is planned at the rows the statement returned
per call (pg_stat_statements `rows / calls`), not at the generic plan's guess of 10% of the rows.

A statement whose parameter columns have no statistics (ANALYZE has not run) is costed at the
generic plan only, and says so. `plannable_text` also turns `interval $1` (how
pg_stat_statements records `interval '7 days'`, which no parser accepts) into `$1::interval`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pydantic import BaseModel

from decisions.indexing import (
    Candidate,
    ParamBinding,
    Predicate,
    QueryShape,
    _walk,
    candidate_indexes,
    statements_for,
)
from decisions.slow_queries import StatementStats

MAX_VALUES = 3
"""Custom plans per statement besides the generic plan (representatives of the common values)."""

SKEW_MIN = 10.0
"""A column is costed at its common values only when the most common one is at least this many
times as frequent as the average value. Below it a custom plan estimates about the rows the
generic plan does, and ANALYZE's sample alone makes a uniform column's "most common" values look
a few times the average (a 30,000-row sample of 20,000 values counts some of them 5 or 8 times)."""

# `interval $1`, `timestamp $2`...: a type name before a parameter, as pg_stat_statements writes
# a typed literal (`interval '7 days'`). Only type names that are keywords of this form.
_TYPED_PARAM = re.compile(
    r"\b(interval|timestamptz|timestamp|date|timetz|time|numeric|uuid|jsonb|json|inet)"
    r"\s+\$(\d+)\b",
    re.IGNORECASE,
)


def plannable_text(query: str) -> str:
    """`created_at > now() - interval $1` -> `created_at > now() - $1::interval`: the same
    statement in a form PostgreSQL (and pglast) can parse and plan with `$1` still a parameter."""
    return _TYPED_PARAM.sub(lambda m: f"${m.group(2)}::{m.group(1).lower()}", query)


class ColumnStats(BaseModel):
    """One column's `pg_stats` row (values as text), with its table's row estimate."""

    schema_name: str
    table_name: str
    column: str
    null_frac: float
    n_distinct: float  # as pg_stats has it: negative = a fraction of the rows
    reltuples: float
    most_common_vals: list[str] = []
    most_common_freqs: list[float] = []
    histogram_bounds: list[str] = []

    @property
    def ref(self) -> str:
        return f"{self.schema_name}.{self.table_name}.{self.column}"

    @property
    def distinct_values(self) -> float:
        if self.n_distinct < 0:
            return max(1.0, -self.n_distinct * max(self.reltuples, 1.0))
        return max(1.0, self.n_distinct)

    @property
    def average_freq(self) -> float:
        """The share of rows an average value has: what a generic plan assumes for `col = $n`."""
        return (1.0 - self.null_frac) / self.distinct_values

    @property
    def skew(self) -> float:
        """How many times the most common value's share exceeds the average value's (0 when
        there is no most-common-values list)."""
        if not self.most_common_freqs or self.average_freq <= 0:
            return 0.0
        return self.most_common_freqs[0] / self.average_freq


class Variant(BaseModel):
    """One way to plan a statement: its text and the share of calls it stands for."""

    label: str  # "generic plan" or "tenant_id = 42"
    query: str
    weight: float
    value: str | None = None  # the representative value (None: the generic plan)
    share: float = 0.0  # rows the value stands for, for the report


class CostingPlan(BaseModel):
    """How one statement is costed: its variants, and the words the report shows."""

    queryid: int
    variants: list[Variant]
    column: str | None = None  # schema.table.column of the skew parameter
    note: str = ""  # the weighting, or why it fell back to the generic plan
    fallback: bool = False  # parameter columns without statistics: generic plan only
    signal: str = ""  # execution times that suggest skew (pg_stat_statements)
    typical: Variant | None = None  # at a value outside the hot ones (a histogram bound)

    @property
    def skewed(self) -> bool:
        return len(self.variants) > 1

    @property
    def hottest(self) -> Variant | None:
        """The variant at the most common value (None when costed at the generic plan only)."""
        custom = [v for v in self.variants if v.value is not None]
        return custom[0] if custom else None


PARAMETER = re.compile(r"\$\d+")
TAIL_RATIO = 10.0
"""`max_exec_time` this many times the mean is a skew signal (some calls hit far bigger sets)."""


def timing_signal(stats: StatementStats | None) -> str:
    """'max 1,240 ms, stddev 85 ms vs mean 12 ms' when the times say some calls are far heavier
    than the typical one: a standard deviation above the mean (a wider spread than exponential)
    or a maximum `TAIL_RATIO` times the mean. Empty otherwise."""
    if stats is None or stats.mean_ms <= 0 or stats.calls < 2:
        return ""
    if stats.stddev_ms <= stats.mean_ms and stats.max_ms < TAIL_RATIO * stats.mean_ms:
        return ""
    return (
        f"execution times skewed: max {stats.max_ms:,.1f} ms, stddev {stats.stddev_ms:,.1f} ms "
        f"vs mean {stats.mean_ms:,.1f} ms"
    )


def stats_key(schema: str, table: str, column: str) -> tuple[str, str, str]:
    return (schema, table, column)


def distinct_counts(
    stats: Mapping[tuple[str, str, str], ColumnStats],
) -> dict[tuple[str, str, str], float]:
    """Distinct values per column (for the order of equality columns in a candidate)."""
    return {key: column.distinct_values for key, column in stats.items()}


def parameter_columns(shapes: Iterable[QueryShape]) -> list[tuple[str, str, str]]:
    """(schema, table, column) of every column an equality parameter is compared with, then of
    the other equality columns (join keys): the columns whose statistics the costing and the
    order of a candidate's columns use."""
    seen: dict[tuple[str, str, str], None] = {}
    for shape in shapes:
        for binding in shape.params:
            if binding.kind == "equality":
                seen.setdefault(stats_key(binding.table.schema, binding.table.name, binding.column))
    for shape in shapes:
        for ref, use in shape.tables.items():
            for column in [*use.equality, *(p.column for p in use.partial)]:
                seen.setdefault(stats_key(ref.schema, ref.name, column))
    return list(seen)


def predicate_share(predicate: Predicate, column: ColumnStats | None) -> float | None:
    """The share of rows a partial index's predicate keeps, from pg_stats; None when unknown.

    `IS NULL` / `IS NOT NULL`: the null fraction. A boolean test or `col = literal`: the value's
    most-common-values frequency, and only when pg_stats lists every value of the column (a
    column of few values, where an index on the column is no use for its common values and a
    partial index is the way to reach a rare one); a column of many values (tenants) is served
    by a full index on it, which every value can use."""
    if column is None:
        return None
    if predicate.test == "IS NULL":
        return column.null_frac
    if predicate.test == "IS NOT NULL":
        return 1.0 - column.null_frac
    value = predicate.matches_value
    if value is None or column.distinct_values > len(column.most_common_vals):
        return None
    pairs = dict(zip(column.most_common_vals, column.most_common_freqs, strict=False))
    return pairs.get(value, 0.0)


def workload_candidates(
    shapes: Mapping[int, QueryShape], stats: Mapping[tuple[str, str, str], ColumnStats]
) -> tuple[list[Candidate], dict[str, set[int]]]:
    """The candidates of the workload's statements (by queryid), equality columns most distinct
    first and partial indexes for the predicates pg_stats shows rare, and the statements each
    is costed against (`statements_for`)."""
    rate_predicates(shapes.values(), stats)
    candidates = candidate_indexes(shapes.values(), distinct_counts(stats))
    return candidates, statements_for(candidates, shapes)


def rate_predicates(
    shapes: Iterable[QueryShape], stats: Mapping[tuple[str, str, str], ColumnStats]
) -> None:
    """Give each statement's partial-index predicates their share of rows (`predicate_share`),
    in place: `candidate_indexes` proposes partial indexes for the rare ones only."""
    for shape in shapes:
        for ref, use in shape.tables.items():
            use.partial = [
                p.model_copy(
                    update={
                        "share": predicate_share(
                            p, stats.get(stats_key(ref.schema, ref.name, p.column))
                        )
                    }
                )
                for p in use.partial
            ]


def bind_parameter(query: str, number: int, literal: str) -> str:
    """`query` with every `$number` replaced by `literal` and the later parameters renumbered
    (`$3` -> `$2`), so the rest stay parameters. Positions come from the parser, so a `$1`
    inside a string or a name is never touched."""
    try:
        [statement] = parse_sql(query)
    except (ParseError, ValueError) as exc:
        raise ValueError(f"cannot bind ${number}: {exc}") from None
    params = sorted(
        (
            (n.location, n.number)
            for n in _walk(statement.stmt)
            if isinstance(n, ast.ParamRef) and n.location is not None and n.number is not None
        ),
        reverse=True,
    )
    out = query
    for start, param in params:
        match = re.match(r"\$(\d+)", out[start:])
        if match is None or int(match.group(1)) != param:
            raise ValueError(f"cannot bind ${number}: parameter position not found")
        if param == number:
            replacement = literal
        elif param > number:
            replacement = f"${param - 1}"
        else:
            continue
        out = out[:start] + replacement + out[start + len(match.group(0)) :]
    return out


def sql_literal(value: str) -> str:
    """A string constant of unknown type (PostgreSQL gives it the parameter's type from the
    comparison, as it did for `$n`)."""
    return "'" + value.replace("'", "''") + "'"


def _groups(freqs: Sequence[float], count: int) -> list[list[int]]:
    """Indexes of the most common values cut into up to `count` runs of equal row share."""
    total = sum(freqs)
    if not freqs or total <= 0:
        return []
    if len(freqs) <= count:
        return [[i] for i in range(len(freqs))]
    groups: list[list[int]] = [[]]
    target = total / count
    running = 0.0
    for i, freq in enumerate(freqs):
        if groups[-1] and running >= target * len(groups) and len(groups) < count:
            groups.append([])
        groups[-1].append(i)
        running += freq
    return groups


def _cost(value: float) -> str:
    """18,400 / 12 / 0.43: planner costs as a person reads them."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%" if value >= 0.095 else f"{value * 100:.2g}%"


def skew_plan(
    queryid: int,
    query: str,
    shape: QueryShape,
    stats: Mapping[tuple[str, str, str], ColumnStats],
    *,
    statement: StatementStats | None = None,
    rows_per_call: float | None = None,
    max_values: int = MAX_VALUES,
) -> CostingPlan:
    """How to cost `query`: the generic plan alone, or with custom plans at representative
    values of its skew parameter, weighted by their share of rows (see the module docstring).
    `rows_per_call` (default: the `statement`'s pg_stat_statements rows / calls) stands in for
    a `LIMIT $n`; the statement's execution times give its `signal`."""
    plan = _skew_plan(queryid, query, shape, stats, statement, rows_per_call, max_values)
    plan.signal = timing_signal(statement)
    return plan


def _skew_plan(
    queryid: int,
    query: str,
    shape: QueryShape,
    stats: Mapping[tuple[str, str, str], ColumnStats],
    statement: StatementStats | None,
    rows_per_call: float | None,
    max_values: int,
) -> CostingPlan:
    if rows_per_call is None and statement is not None:
        rows_per_call = statement.rows / max(statement.calls, 1)
    limit: tuple[int, str] | None = None
    if shape.limit_param is not None and rows_per_call is not None:
        limit = (shape.limit_param, str(max(1, round(rows_per_call))))
        try:
            query = bind_parameter(query, *limit)
        except ValueError:
            limit = None
    generic = Variant(label="generic plan", query=query, weight=1.0)
    equality = [
        b for b in shape.params if b.kind == "equality" and (limit is None or b.number != limit[0])
    ]
    if not equality:
        return CostingPlan(queryid=queryid, variants=[generic])
    missing: list[str] = []
    usable: list[tuple[ParamBinding, ColumnStats]] = []
    for binding in equality:
        found = stats.get(stats_key(binding.table.schema, binding.table.name, binding.column))
        if found is None:
            name = f"{binding.table}.{binding.column}"
            if name not in missing:
                missing.append(name)
        elif found.most_common_vals and len(found.most_common_vals) == len(found.most_common_freqs):
            usable.append((binding, found))
    lacking = (
        f"no statistics on {', '.join(missing)} (ANALYZE has not run on "
        f"{'it' if len(missing) == 1 else 'them'})"
        if missing
        else ""
    )
    if not usable:
        if missing:
            return CostingPlan(
                queryid=queryid,
                variants=[generic],
                note=f"{lacking}: costed at the generic plan only (average selectivity)",
                fallback=True,
            )
        return CostingPlan(queryid=queryid, variants=[generic])
    binding, column = max(usable, key=lambda pair: (pair[1].skew, -pair[0].number))
    if column.skew < SKEW_MIN:
        return CostingPlan(queryid=queryid, variants=[generic])
    number = binding.number
    if limit is not None and number > limit[0]:
        number -= 1  # renumbered when the LIMIT parameter was bound
    variants: list[Variant] = []
    freqs = column.most_common_freqs
    for group in _groups(freqs, max_values):
        middle = group[len(group) // 2]
        value = column.most_common_vals[middle]
        try:
            text = bind_parameter(query, number, sql_literal(value))
        except ValueError:
            continue
        variants.append(
            Variant(
                label=f"{binding.column} = {value}",
                query=text,
                weight=sum(freqs[i] for i in group),
                value=value,
                share=freqs[middle],
            )
        )
    if not variants:
        return CostingPlan(queryid=queryid, variants=[generic])
    covered = sum(freqs)
    rest = max(0.0, 1.0 - column.null_frac - covered)
    variants.insert(0, generic.model_copy(update={"weight": rest}))
    total = sum(v.weight for v in variants) or 1.0
    for variant in variants:
        variant.weight /= total
    note = (
        f"hot values: {len(freqs)} values of {binding.table}.{binding.column} own "
        f"{_pct(covered)} of rows (the top one {_pct(freqs[0])}, an average value "
        f"{_pct(column.average_freq)}); cost weighted over {len(variants) - 1} of them "
        f"and the generic plan ({_pct(variants[0].weight)} of calls)"
    )
    if lacking:
        note += f"; {lacking}"
    return CostingPlan(
        queryid=queryid,
        variants=variants,
        column=f"{binding.table}.{binding.column}",
        note=note,
        typical=_typical(query, number, binding.column, column),
    )


def _typical(query: str, number: int, name: str, column: ColumnStats) -> Variant | None:
    """The statement at a typical value: the middle histogram bound (pg_stats keeps the most
    common values out of the histogram), for measuring a build; None without a histogram."""
    bounds = column.histogram_bounds
    if not bounds:
        return None
    value = bounds[len(bounds) // 2]
    try:
        text = bind_parameter(query, number, sql_literal(value))
    except ValueError:
        return None
    return Variant(label=f"{name} = {value} (typical)", query=text, weight=0.0, value=value)


def measurable(plan: CostingPlan | None) -> list[Variant]:
    """The variants of a statement a build can measure by running them (EXPLAIN ANALYZE in a
    rolled-back read-only transaction): at its hottest and at a typical value, when every
    parameter of the statement is bound there. None for a statement costed at its generic plan
    (its values are not known)."""
    if plan is None:
        return []
    chosen = [v for v in (plan.hottest, plan.typical) if v is not None]
    return [v for v in chosen if not PARAMETER.search(v.query) and _reads_only(v.query)]


def _reads_only(query: str) -> bool:
    try:
        [statement] = parse_sql(query)
    except (ParseError, ValueError):
        return False
    return isinstance(statement.stmt, ast.SelectStmt)


def weighted_cost(variants: Sequence[Variant], costs: Sequence[float | None]) -> float | None:
    """sum(weight x cost) over the variants that could be planned, re-weighted among them; None
    when none could."""
    pairs = [(v.weight, c) for v, c in zip(variants, costs, strict=True) if c is not None]
    total = sum(w for w, _ in pairs)
    if not pairs:
        return None
    if total <= 0:
        return min(c for _, c in pairs)
    return sum(w * c for w, c in pairs) / total


def verification_statement(
    plan: CostingPlan | None, text: str, hot_cost: float | None, cost: float | None
) -> tuple[str, float]:
    """What a build re-plans to check a statement, and its cost before: the statement at its
    hottest value when it was costed there (where the new index matters most), else as is."""
    hottest = plan.hottest if plan is not None else None
    if hottest is not None and hot_cost is not None:
        return hottest.query, hot_cost
    return text, cost or 0.0


def hot_value_evidence(plan: CostingPlan | None, before: float | None, after: float | None) -> str:
    """'hot values: ...; cost at a hot value (tenant_id = 3) 18,400 -> 12' for a suggestion,
    then the execution-time signal when there is one."""
    if plan is None:
        return ""
    parts = [plan.note] if plan.note else []
    hottest = plan.hottest
    if parts and hottest is not None and before is not None and after is not None:
        parts[0] += f"; cost at a hot value ({hottest.label}) {_cost(before)} -> {_cost(after)}"
    if plan.signal:
        parts.append(plan.signal)
    return "; ".join(parts)
