"""Which indexes would pay off: pure decisions of the index advisor (no I/O, no Prefect).

1. `query_shape` parses a normalised statement with PostgreSQL's own parser (pglast) and finds,
   per table, the columns compared for equality, compared by range, and sorted on, in WHERE,
   JOIN ... ON, ORDER BY and GROUP BY.
   It also records which `$n` is compared with which column (for skew-aware costing,
   `decisions.index_costing`) and every column a SELECT reads (for covering indexes).
2. `candidate_indexes` turns shapes into single- and multi-column btree candidates (equality
   columns first, most distinct first when pg_stats knows them, then one range or the sort
   columns in the statement's direction), and their covering variants (`INCLUDE` what else a
   narrow SELECT reads).
3. `choose_indexes` picks a set greedily by total benefit (calls x estimated cost saved, costs
   from hypopg) less write overhead (`decisions.index_writes`), with a minimum saving per query
   (and for INCLUDE, over the plain index) and a cap of new indexes per table. Every candidate
   not chosen carries the reason, including those an existing index covers.

Only btree indexes on plain columns are proposed; expressions, OR branches and functions of
columns are left out (the reason says so where a statement yields nothing).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pglast import ast, parse_sql
from pglast.enums.parsenodes import A_Expr_Kind, SortByDir
from pglast.enums.primnodes import BoolExprType, BoolTestType, NullTestType, SubLinkType
from pglast.parser import ParseError
from pydantic import BaseModel, Field

from perfops.names import names_table

MAX_INDEX_COLUMNS = 3
MAX_INCLUDE_COLUMNS = 2  # a covering index stays narrow: at most this many INCLUDE columns
PARTIAL_MAX_SHARE = 0.5
"""A partial index is proposed for a predicate only when it leaves out at least half the rows
(pg_stats): past that it is most of a full index, serving fewer statements."""
PG_MAX_IDENTIFIER = 63
_EQUALITY_OPS = {"="}
_RANGE_OPS = {"<", ">", "<=", ">="}
_BOOL_TESTS = {BoolTestType.IS_TRUE: "IS TRUE", BoolTestType.IS_FALSE: "IS FALSE"}


# --------------------------------------------------------------------------- settings


class IndexAdvisorSettings(BaseModel):
    """Tunables of the index advisor (the Prefect UI shows them as a form)."""

    min_calls: int = Field(default=10, ge=1, description="Ignore statements called fewer times.")
    min_total_ms: float = Field(
        default=0.0, ge=0, description="Ignore statements with less total execution time (ms)."
    )
    max_statements: int = Field(
        default=200,
        ge=1,
        le=5000,
        description="Consider at most this many statements (by total time).",
    )
    min_saving: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="A candidate must cut a query's estimated cost by at least this fraction.",
    )
    max_new_per_table: int = Field(
        default=5, ge=1, le=20, description="At most this many new indexes per table per run."
    )
    include_tables: list[str] = Field(
        default_factory=list, description="Only these tables (name or schema.name); empty = all."
    )
    exclude_tables: list[str] = Field(
        default_factory=list, description="Never these tables (name or schema.name)."
    )
    build_statement_timeout_ms: int = Field(
        default=3_600_000,
        ge=1_000,
        description="statement_timeout for each CREATE INDEX CONCURRENTLY (default 1 h).",
    )
    build_lock_timeout_ms: int = Field(
        default=5_000, ge=10, description="lock_timeout for each index build and cleanup."
    )


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True, order=True)
class TableRef:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


class Predicate(BaseModel, frozen=True):
    """One conjunct of a statement a partial index can take as its WHERE: it is in the statement
    verbatim, so the planner proves the index's predicate from it for any plan, generic included.
    `col IS [NOT] NULL`, `col IS TRUE/FALSE`, `NOT col` and a bare boolean `col` survive
    pg_stat_statements' normalisation; `col = 'literal'` only where a statement's text keeps the
    literal (pg_stat_statements turns it into `$n`: a `col = $n` never gets a partial index)."""

    column: str
    test: str  # "IS NULL" | "IS NOT NULL" | "IS TRUE" | "IS FALSE" | "NOT" | "TRUE" | "="
    value: str | None = None  # the literal of `col = literal`
    literal: str = "string"  # its kind: string | number | boolean
    share: float | None = Field(
        default=None, description="The share of rows it matches (pg_stats), when known."
    )

    @property
    def label(self) -> str:
        """`finished_at IS NULL`, `status = 'queued'`, `NOT archived`: as a person reads it."""
        column = self.column
        if self.test == "NOT":
            return f"NOT {column}"
        if self.test == "TRUE":
            return column
        if self.test == "=":
            value = self.value or ""
            shown = value if self.literal != "string" else "'" + value.replace("'", "''") + "'"
            return f"{column} = {shown}"
        return f"{column} {self.test}"

    @property
    def matches_value(self) -> str | None:
        """The value (as pg_stats shows it) the predicate keeps, for `=` and boolean tests."""
        if self.test in ("IS TRUE", "TRUE"):
            return "t"
        if self.test in ("IS FALSE", "NOT"):
            return "f"
        if self.test == "=" and self.literal == "boolean":
            return "t" if self.value == "true" else "f"
        return self.value if self.test == "=" else None


def _literal(node: Any) -> tuple[str, str] | None:
    """(text, kind) of a plain constant (`'queued'`, `3`, `true`, `'x'::text`), else None."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if not isinstance(node, ast.A_Const) or node.isnull:
        return None
    val = node.val
    if isinstance(val, ast.String) and val.sval is not None:
        return val.sval, "string"
    if isinstance(val, ast.Integer) and val.ival is not None:
        return str(val.ival), "number"
    if isinstance(val, ast.Float) and val.fval and _NUMBER.fullmatch(val.fval):
        return val.fval, "number"
    if isinstance(val, ast.Boolean) and val.boolval is not None:
        return ("true" if val.boolval else "false"), "boolean"
    return None


@dataclass
class TableUse:
    """How one statement uses one table."""

    equality: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)
    sort: list[str] = field(default_factory=list)
    sort_desc: list[str] = field(default_factory=list)  # ORDER BY columns sorted DESC
    # every column a SELECT reads from the table (None: all of them, `*`): what an index must
    # hold for an index-only scan
    referenced: list[str] | None = field(default_factory=list)
    # conjuncts a partial index can take as its WHERE, as the statement has them verbatim
    partial: list[Predicate] = field(default_factory=list)

    def add(self, bucket: list[str], column: str) -> None:
        if column not in bucket:
            bucket.append(column)


@dataclass(frozen=True)
class ParamBinding:
    """A `$n` parameter compared with a plain column (`col = $n`, `col IN ($n, ...)`,
    `col > $n`): whose statistics say what values it is likely to take."""

    number: int
    table: TableRef
    column: str
    kind: str  # "equality" | "range"


@dataclass
class QueryShape:
    """Per table, the columns a statement filters, joins and sorts on; and which parameters are
    compared with which column."""

    tables: dict[TableRef, TableUse] = field(default_factory=dict)
    params: list[ParamBinding] = field(default_factory=list)
    has_limit: bool = False
    limit_param: int | None = None  # `LIMIT $n` (pg_stat_statements turns `LIMIT 20` into it)


class ShapeError(ValueError):
    """A statement perfops cannot derive candidates from (the message is the reason)."""


Catalog = dict[TableRef, list[str]]
"""Every user table and its columns."""


def resolve_table(
    schema: str | None, name: str, catalog: Catalog, search_path: Sequence[str]
) -> TableRef | None:
    """The catalog table a (possibly unqualified) name refers to, as the server would resolve it."""
    if schema:
        ref = TableRef(schema, name)
        return ref if ref in catalog else None
    for path_schema in search_path:
        ref = TableRef(path_schema, name)
        if ref in catalog:
            return ref
    return None


def query_shape(
    query: str, catalog: Catalog, search_path: Sequence[str] = ("public",)
) -> QueryShape:
    """Parse `query` and collect its equality, range and sort columns per table.

    Raises `ShapeError` with the reason when the statement cannot be used.
    """
    try:
        statements = parse_sql(query)
    except ParseError as exc:
        raise ShapeError(f"does not parse (truncated by pg_stat_statements?): {exc}") from None
    if len(statements) != 1:
        raise ShapeError(f"{len(statements)} statements in one entry")
    root = statements[0].stmt
    if not isinstance(root, ast.SelectStmt | ast.UpdateStmt | ast.DeleteStmt):
        raise ShapeError(f"{type(root).__name__} is not a SELECT, UPDATE or DELETE")
    shape = QueryShape()
    if isinstance(root, ast.SelectStmt) and root.limitCount is not None:
        shape.has_limit = True
        limit: Any = root.limitCount
        while isinstance(limit, ast.TypeCast):
            limit = limit.arg
        if isinstance(limit, ast.ParamRef) and limit.number is not None:
            shape.limit_param = limit.number
    for node in _statements(root):
        _Scope(node, catalog, search_path, shape).collect()
    if not any(u.equality or u.ranges or u.sort or u.partial for u in shape.tables.values()):
        raise ShapeError("no filter, join or sort on a plain column of a known table")
    return shape


def _walk(node: Any) -> Iterator[Any]:
    """Every AST node under `node` (depth first, `node` included)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, list | tuple):
            stack.extend(current)
        elif isinstance(current, ast.Node):
            yield current
            for name in getattr(current, "__slots__", ()):
                value = getattr(current, name, None)
                if isinstance(value, ast.Node | list | tuple):
                    stack.append(value)


def _statements(root: Any) -> Iterator[Any]:
    """SELECT/UPDATE/DELETE nodes with their own FROM scope (subqueries and CTEs included)."""
    for node in _walk(root):
        if isinstance(node, ast.UpdateStmt | ast.DeleteStmt) or (
            isinstance(node, ast.SelectStmt) and node.larg is None
        ):
            yield node


class _Scope:
    """One statement's FROM scope: aliases to tables, then its predicates and sort keys."""

    def __init__(
        self, node: Any, catalog: Catalog, search_path: Sequence[str], shape: QueryShape
    ) -> None:
        self.node = node
        self.catalog = catalog
        self.search_path = search_path
        self.shape = shape
        self.aliases: dict[str, TableRef] = {}
        self.quals: list[Any] = []

    def collect(self) -> None:
        node = self.node
        if isinstance(node, ast.SelectStmt):
            for item in node.fromClause or ():
                self._from_item(item)
        elif isinstance(node, ast.UpdateStmt):
            self._from_item(node.relation)
            for item in node.fromClause or ():
                self._from_item(item)
        else:
            self._from_item(node.relation)
            for item in node.usingClause or ():
                self._from_item(item)
        if not self.aliases:
            return
        for qual in [*self.quals, node.whereClause]:
            for conjunct in _conjuncts(qual):
                self._predicate(conjunct)
        if isinstance(node, ast.SelectStmt):
            for sort in node.sortClause or ():
                self._sort_key(sort.node, descending=sort.sortby_dir == SortByDir.SORTBY_DESC)
            for group in node.groupClause or ():
                self._sort_key(group)
            self._references(node)
        else:  # an UPDATE or DELETE reads the heap anyway: no index-only scan
            for ref in set(self.aliases.values()):
                self.shape.tables[ref].referenced = None

    def _references(self, node: Any) -> None:
        """Every column of each table this SELECT reads (subqueries' columns may be counted
        too: that only makes a covering index wider, or not proposed)."""
        parts = [node.targetList, node.whereClause, *self.quals, node.sortClause]
        parts += [node.groupClause, node.havingClause]
        for item in _walk(parts):
            if not isinstance(item, ast.ColumnRef):
                continue
            fields = item.fields or ()
            if fields and isinstance(fields[-1], ast.A_Star):
                qualifier = fields[-2].sval if len(fields) > 1 else None
                refs = (
                    [self.aliases[qualifier]]
                    if qualifier in self.aliases
                    else list(set(self.aliases.values()))
                )
                for ref in refs:
                    self.shape.tables[ref].referenced = None
                continue
            found = self._column(item)
            if found is None:
                continue
            use = self._use(found)
            if use.referenced is not None and found[1] not in use.referenced:
                use.referenced.append(found[1])

    def _from_item(self, item: Any) -> None:
        if isinstance(item, ast.RangeVar) and item.relname:
            ref = resolve_table(item.schemaname, item.relname, self.catalog, self.search_path)
            if ref is not None:
                alias = (item.alias.aliasname if item.alias else None) or item.relname
                self.aliases[alias] = ref
                self.shape.tables.setdefault(ref, TableUse())
        elif isinstance(item, ast.JoinExpr):
            self._from_item(item.larg)
            self._from_item(item.rarg)
            if item.quals is not None:
                self.quals.append(item.quals)

    def _column(self, node: Any) -> tuple[TableRef, str] | None:
        """The (table, column) a ColumnRef names in this scope, if it is a plain column."""
        while isinstance(node, ast.TypeCast):
            node = node.arg
        if not isinstance(node, ast.ColumnRef):
            return None
        fields = node.fields or ()
        names = [f.sval for f in fields if isinstance(f, ast.String) and f.sval]
        if len(names) != len(fields):  # a star
            return None
        if len(names) == 1:
            owners = [t for t in set(self.aliases.values()) if names[0] in self.catalog[t]]
            return (owners[0], names[0]) if len(owners) == 1 else None
        qualifier, column = names[-2], names[-1]
        ref = self.aliases.get(qualifier)
        if ref is None and len(names) == 3:
            ref = resolve_table(names[0], qualifier, self.catalog, self.search_path)
        if ref is None or column not in self.catalog.get(ref, []):
            return None
        return ref, column

    def _bind(self, column: tuple[TableRef, str] | None, node: Any, kind: str) -> None:
        """Record `node` as a parameter compared with `column`, when it is one (`$n`, `$n::t`)."""
        while isinstance(node, ast.TypeCast):
            node = node.arg
        if column is None or not isinstance(node, ast.ParamRef) or node.number is None:
            return
        binding = ParamBinding(node.number, column[0], column[1], kind)
        if binding not in self.shape.params:
            self.shape.params.append(binding)

    def _partial(self, found: tuple[TableRef, str], predicate: Predicate) -> None:
        if predicate not in self._use(found).partial:
            self._use(found).partial.append(predicate)

    def _predicate(self, expr: Any) -> None:
        if isinstance(expr, ast.NullTest):
            found = self._column(expr.arg)
            if found:
                self._use(found).add(self._use(found).equality, found[1])
                test = "IS NULL" if expr.nulltesttype == NullTestType.IS_NULL else "IS NOT NULL"
                self._partial(found, Predicate(column=found[1], test=test))
            return
        if isinstance(expr, ast.BooleanTest) and expr.booltesttype in _BOOL_TESTS:
            found = self._column(expr.arg)
            if found:
                test = _BOOL_TESTS[expr.booltesttype]
                self._partial(found, Predicate(column=found[1], test=test))
            return
        if isinstance(expr, ast.BoolExpr) and expr.boolop == BoolExprType.NOT_EXPR:
            args = expr.args or ()
            found = self._column(args[0]) if len(args) == 1 else None
            if found and isinstance(args[0], ast.ColumnRef):
                self._partial(found, Predicate(column=found[1], test="NOT"))
            return
        if isinstance(expr, ast.ColumnRef):  # a bare boolean column
            found = self._column(expr)
            if found:
                self._partial(found, Predicate(column=found[1], test="TRUE"))
            return
        if isinstance(expr, ast.SubLink) and expr.subLinkType == SubLinkType.ANY_SUBLINK:
            found = self._column(expr.testexpr)  # col IN (SELECT ...) / col = ANY (SELECT ...)
            if found:
                self._use(found).add(self._use(found).equality, found[1])
            return
        if not isinstance(expr, ast.A_Expr):
            return
        kind = expr.kind
        op = expr.name[-1].sval if expr.name else ""
        left, right = self._column(expr.lexpr), self._column(expr.rexpr)
        if kind == A_Expr_Kind.AEXPR_IN and left and op == "=":
            self._use(left).add(self._use(left).equality, left[1])
            for item in expr.rexpr or ():
                self._bind(left, item, "equality")
        elif kind in (A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_BETWEEN_SYM) and left:
            self._use(left).add(self._use(left).ranges, left[1])
            for item in expr.rexpr or ():
                self._bind(left, item, "range")
        elif kind == A_Expr_Kind.AEXPR_OP and op in _EQUALITY_OPS | _RANGE_OPS:
            if left and right and left[0] == right[0]:
                return  # a comparison of two columns of one table cannot use an index
            bound = "equality" if op in _EQUALITY_OPS else "range"
            self._bind(left, expr.rexpr, bound)
            self._bind(right, expr.lexpr, bound)
            if op in _EQUALITY_OPS and (left is None) != (right is None):
                side, other = (left, expr.rexpr) if left else (right, expr.lexpr)
                constant = _literal(other)
                if side and constant:  # `status = 'queued'` kept verbatim: a partial index's WHERE
                    text, sort = constant
                    self._partial(
                        side, Predicate(column=side[1], test="=", value=text, literal=sort)
                    )
            for side in (left, right):
                if side is None:
                    continue
                use = self._use(side)
                use.add(use.equality if op in _EQUALITY_OPS else use.ranges, side[1])

    def _sort_key(self, node: Any, *, descending: bool = False) -> None:
        found = self._column(node)
        if found:
            self._use(found).add(self._use(found).sort, found[1])
            if descending:
                self._use(found).add(self._use(found).sort_desc, found[1])

    def _use(self, found: tuple[TableRef, str]) -> TableUse:
        return self.shape.tables.setdefault(found[0], TableUse())


def _conjuncts(expr: Any) -> Iterator[Any]:
    """The AND-ed terms of a boolean expression (OR and NOT branches are not indexed here)."""
    if expr is None:
        return
    if isinstance(expr, ast.BoolExpr):
        if expr.boolop == BoolExprType.AND_EXPR:
            for arg in expr.args or ():
                yield from _conjuncts(arg)
        elif expr.boolop == BoolExprType.NOT_EXPR:
            yield expr  # `NOT archived`: a partial index's WHERE (OR branches are not indexed)
        return
    yield expr


# --------------------------------------------------------------------------- candidates


class Candidate(BaseModel):
    """A btree index worth costing."""

    schema_name: str
    table_name: str
    columns: list[str]
    descending: list[str] = Field(
        default_factory=list,
        description="Key columns stored DESC: only when a statement sorts in mixed directions "
        "(one direction throughout is served by a backward scan of an ascending index).",
    )
    include: list[str] = Field(
        default_factory=list,
        description="INCLUDE columns: what else a SELECT reads, so it can be an index-only scan.",
    )
    predicate: Predicate | None = Field(
        default=None,
        description="A partial index's WHERE: a rare value's conjunct a statement has verbatim.",
    )

    @property
    def key_labels(self) -> list[str]:
        """The key columns as `pg_get_indexdef` shows them: `created_at DESC` when descending."""
        return [f"{c} DESC" if c in self.descending else c for c in self.columns]

    @property
    def key(self) -> str:
        included = f" INCLUDE ({', '.join(self.include)})" if self.include else ""
        where = f" WHERE {self.predicate.label}" if self.predicate else ""
        return (
            f"{self.schema_name}.{self.table_name}({', '.join(self.key_labels)}){included}{where}"
        )

    @property
    def plain(self) -> Candidate:
        """The same key columns without INCLUDE."""
        return self.model_copy(update={"include": []})

    @property
    def table(self) -> TableRef:
        return TableRef(self.schema_name, self.table_name)


class ExistingIndex(BaseModel):
    """What the advisor needs to know of an index already there."""

    schema_name: str
    table_name: str
    index_name: str
    columns: list[str]
    method: str
    predicate: str | None = None
    is_valid: bool = True
    include_columns: list[str] = []


def _sorted_keys(use: TableUse, columns: list[str]) -> tuple[list[str], list[str]]:
    """`columns` with the DESC markers an index needs to end the statement's sort: none when
    every sort column goes one way (a backward scan serves DESC), else the statement's own."""
    sort = [c for c in columns if c in use.sort]
    desc = [c for c in sort if c in use.sort_desc]
    mixed = 0 < len(desc) < len(sort)
    return columns, desc if mixed else []


def _column_sets(use: TableUse) -> Iterator[tuple[list[str], list[str]]]:
    """(columns, descending columns) of each candidate for one table of one statement."""
    eq = use.equality[:MAX_INDEX_COLUMNS]
    for column in [*use.equality, *use.ranges, *use.sort[:1]]:
        yield [column], []
    if eq:
        if len(eq) > 1:
            yield eq, []
        for column in use.ranges:
            if column not in eq:
                yield [*eq[: MAX_INDEX_COLUMNS - 1], column], []
        sort = [c for c in use.sort if c not in eq]
        if sort:
            # equality columns, then the ORDER BY columns in the statement's direction: the
            # index returns each equality group already sorted, so ... LIMIT n stops after n rows
            yield _sorted_keys(use, [*eq, *sort][:MAX_INDEX_COLUMNS])
    elif len(use.sort) > 1:
        yield _sorted_keys(use, use.sort[:MAX_INDEX_COLUMNS])


def candidate_indexes(
    shapes: Iterable[QueryShape], distinct: Mapping[tuple[str, str, str], float] | None = None
) -> list[Candidate]:
    """Distinct candidates from every shape, in a stable order. With `distinct` (values per
    (schema, table, column), from pg_stats), equality columns go most distinct first (the
    statement's order otherwise), so `(tenant_id, status)` also serves `tenant_id = $1`."""
    seen: dict[str, Candidate] = {}
    distinct = distinct or {}
    for shape in shapes:
        for ref, use in sorted(shape.tables.items()):
            if distinct:
                rank = {c: -distinct.get((ref.schema, ref.name, c), 0.0) for c in use.equality}
                use = replace(use, equality=sorted(use.equality, key=lambda c: rank[c]))
            variants: list[tuple[list[str], list[str], Predicate | None]] = [
                (columns, descending, None) for columns, descending in _column_sets(use)
            ]
            for rare in use.partial:
                if rare.share is None or rare.share > PARTIAL_MAX_SHARE:
                    continue  # not known to be rare: the full indexes serve it
                # the rows of a rare value only, keyed by the statement's other columns
                rest = replace(
                    use,
                    equality=[c for c in use.equality if c != rare.column],
                    ranges=[c for c in use.ranges if c != rare.column],
                )
                sets = list(_column_sets(rest)) or [([rare.column], [])]
                variants += [(columns, descending, rare) for columns, descending in sets]
            for columns, descending, predicate in variants:
                candidate = Candidate(
                    schema_name=ref.schema,
                    table_name=ref.name,
                    columns=columns,
                    descending=descending,
                    predicate=predicate,
                )
                seen.setdefault(candidate.key, candidate)
                # the covering variant: what else the SELECT reads, when that is little (not a
                # partial index's predicate column: the predicate answers it)
                skip = {*columns, predicate.column} if predicate else set(columns)
                extra = [c for c in use.referenced or () if c not in skip]
                if (
                    use.referenced is not None
                    and (use.equality or use.sort)
                    and 0 < len(extra) <= MAX_INCLUDE_COLUMNS
                ):
                    covering = candidate.model_copy(update={"include": extra})
                    seen.setdefault(covering.key, covering)
    return list(seen.values())


def statements_for(
    candidates: Iterable[Candidate], shapes: Mapping[int, QueryShape]
) -> dict[str, set[int]]:
    """Which statements each candidate (by key) is costed against: those on its table that
    filter, join or sort on its leading column and, for a partial index, have its predicate
    verbatim (the planner can use it for no other). A statement that names neither could use the
    index only to scan all of it; leaving it out keeps the what-if planning to what can pay."""
    out: dict[str, set[int]] = {}
    for candidate in candidates:
        wanted: set[int] = set()
        for qid, shape in shapes.items():
            use = shape.tables.get(candidate.table)
            if use is None:
                continue
            lead, rare = candidate.columns[0], candidate.predicate
            if lead not in {*use.equality, *use.ranges, *use.sort} and (
                rare is None or lead != rare.column
            ):
                continue
            if rare is not None and not any(
                (p.column, p.test, p.value) == (rare.column, rare.test, rare.value)
                for p in use.partial
            ):
                continue
            wanted.add(qid)
        out[candidate.key] = wanted
    return out


def same_predicate(existing: str | None, predicate: Predicate | None) -> bool:
    """Is an index's predicate (as `pg_get_expr` shows it: `(status = 'queued'::text)`) the
    candidate's? Loosely: parentheses, quotes around names, casts and case left out."""
    if existing is None or predicate is None:
        return existing is None and predicate is None

    def norm(text: str) -> str:
        text = re.sub(r"::[a-z ]+(\[\])?", "", text.lower())
        return re.sub(r"\s+", " ", text.replace("(", "").replace(")", "").replace('"', "")).strip()

    return norm(existing) == norm(predicate.label)


def covering_index(candidate: Candidate, existing: Iterable[ExistingIndex]) -> ExistingIndex | None:
    """An existing valid btree index whose leading columns are the candidate's, with the same
    predicate (none for a full candidate: a full index does not do a partial one's job of
    leaving the common rows out, nor a partial index a full one's)."""
    for index in existing:
        if (
            index.schema_name == candidate.schema_name
            and index.table_name == candidate.table_name
            and index.method == "btree"
            and index.is_valid
            and same_predicate(index.predicate, candidate.predicate)
            and same_keys(index.columns[: len(candidate.columns)], candidate.key_labels)
            and set(candidate.include) <= column_names([*index.columns, *index.include_columns])
        ):
            return index
    return None


def column_names(labels: Iterable[str]) -> set[str]:
    """Column names from `pg_get_indexdef` labels (`"Name" DESC` -> `Name`)."""
    out = set()
    for label in labels:
        name = label.removesuffix(" DESC")
        if len(name) > 1 and name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('""', '"')
        out.add(name)
    return out


def same_keys(existing: Sequence[str], wanted: Sequence[str]) -> bool:
    """Do an index's leading key columns serve `wanted` (same columns; same directions, or all
    of them reversed: a backward scan)? Names as `pg_get_indexdef` shows them (quoted or not)."""

    def parts(labels: Sequence[str]) -> list[tuple[str, bool]]:
        out = []
        for label in labels:
            desc = label.endswith(" DESC")
            name = label.removesuffix(" DESC")
            if len(name) > 1 and name.startswith('"') and name.endswith('"'):
                name = name[1:-1].replace('""', '"')
            out.append((name, desc))
        return out

    have, want = parts(existing), parts(wanted)
    if len(have) != len(want) or [n for n, _ in have] != [n for n, _ in want]:
        return False
    flips = {h != w for (_, h), (_, w) in zip(have, want, strict=True)}
    return len(flips) <= 1


def index_name(candidate: Candidate) -> str:
    """`perfops_idx_<table>_<columns>_<hash>`: readable, and unique per candidate.

    The readable part is lowercased, every character but letters, digits and `_` becomes `_`,
    and parts are joined with `_`, so it alone would collide (`"order"(item_sku)` and
    `order_item(sku)`, `"Orders"` and `orders`). The 8 hex digits of a hash of the candidate's
    key (schema, table, columns, directions, INCLUDE, WHERE, as written) make the name unique;
    the readable part is cut so the whole fits PostgreSQL's 63 bytes."""
    keys = [f"{c}_desc" if c in candidate.descending else c for c in candidate.columns]
    if candidate.include:
        keys += ["incl", *candidate.include]
    if candidate.predicate is not None:
        test = candidate.predicate.test.replace(" ", "_").replace("=", "eq")
        keys += ["where", candidate.predicate.column, test]
        keys += [candidate.predicate.value] if candidate.predicate.value else []
    name = f"perfops_idx_{candidate.table_name}_{'_'.join(keys)}".lower()
    name = re.sub(r"_+", "_", "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name))
    digest = hashlib.sha1(candidate.key.encode()).hexdigest()[:8]  # noqa: S324 - a name, not security
    readable = name.encode()[: PG_MAX_IDENTIFIER - 9].decode(errors="ignore").rstrip("_")
    return f"{readable}_{digest}"


# --------------------------------------------------------------------------- choice


class QueryCost(BaseModel):
    """One statement with its calls and its cost without new indexes: the generic plan's, or
    the frequency-weighted cost over representative parameter values (`decisions.index_costing`)."""

    queryid: int
    calls: int
    mean_ms: float
    base_cost: float
    tables: list[str]  # schema.table it touches
    hot_cost: float | None = None  # the cost at its hottest parameter value, when skew-costed


class Costing(BaseModel):
    """The estimated cost of each query with each candidate alone (hypopg)."""

    candidate: Candidate
    size_bytes: int
    costs: dict[int, float]  # queryid -> cost with this index, for queries on its table
    error: str | None = None  # why it could not be costed
    hot_costs: dict[int, float] = {}  # queryid -> cost at its hottest value with this index


class Effect(BaseModel):
    queryid: int
    calls: int
    cost_before: float
    cost_after: float
    hot_before: float | None = None  # at the statement's hottest parameter value
    hot_after: float | None = None

    @property
    def saving(self) -> float:
        return 1 - self.cost_after / self.cost_before if self.cost_before > 0 else 0.0


class Upkeep(BaseModel):
    """A candidate's write overhead over the pg_stat_statements window (decisions.index_writes)."""

    cost: float  # planner cost units, comparable with a Choice's benefit
    entries: int  # index entries the workload's writes would have added
    detail: str  # "2,400 rows inserted + 120 updated (status) x 4 = 10,080"


class Choice(BaseModel):
    """A candidate chosen, with the queries it helps."""

    candidate: Candidate
    size_bytes: int
    benefit: float  # sum of calls x cost saved (planner cost units)
    effects: list[Effect]
    est_time_saved_ms: float  # sum of calls x mean time x fraction of cost saved
    upkeep: Upkeep | None = None  # what the workload's writes would pay to maintain it


class Rejection(BaseModel):
    candidate: Candidate
    reason: str


class Selection(BaseModel):
    chosen: list[Choice]
    rejected: list[Rejection]


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def choose_indexes(
    queries: Sequence[QueryCost],
    costings: Sequence[Costing],
    existing: Sequence[ExistingIndex],
    *,
    min_saving: float,
    max_new_per_table: int,
    upkeep: Mapping[str, Upkeep] | None = None,
) -> Selection:
    """Greedy choice by total benefit less write upkeep (by candidate key, when known); each
    rejected candidate says why."""
    upkeep = upkeep or {}

    def net(costing: Costing, benefit: float) -> float:
        found = upkeep.get(costing.candidate.key)
        return benefit - (found.cost if found else 0.0)

    by_id = {q.queryid: q for q in queries}
    best = {q.queryid: q.base_cost for q in queries}  # best cost so far per query
    rejected: list[Rejection] = []
    pool: list[Costing] = []
    by_key = {c.candidate.key: c for c in costings}
    for costing in costings:
        if costing.error:
            rejected.append(
                Rejection(
                    candidate=costing.candidate, reason=f"could not be costed: {costing.error}"
                )
            )
            continue
        cover = covering_index(costing.candidate, existing)
        if cover is not None:
            rejected.append(
                Rejection(
                    candidate=costing.candidate,
                    reason=f"covered by {cover.index_name} ({', '.join(cover.columns)})",
                )
            )
            continue
        savings = [
            1 - cost / by_id[qid].base_cost
            for qid, cost in costing.costs.items()
            if qid in by_id and by_id[qid].base_cost > 0
        ]
        top = max(savings, default=0.0)
        if top < min_saving:
            rejected.append(
                Rejection(
                    candidate=costing.candidate,
                    reason=f"saves {_pct(max(top, 0.0))} < {_pct(min_saving)} on every query",
                )
            )
            continue
        plain = by_key.get(costing.candidate.plain.key) if costing.candidate.include else None
        if plain is not None and not plain.error:
            # INCLUDE only when the index-only scan itself pays: the same rule, over the plain
            # index rather than over no index
            gains = [
                1 - cost / plain.costs[qid]
                for qid, cost in costing.costs.items()
                if plain.costs.get(qid, 0) > 0
            ]
            gain = max(gains, default=0.0)
            if gain < min_saving:
                rejected.append(
                    Rejection(
                        candidate=costing.candidate,
                        reason=f"INCLUDE ({', '.join(costing.candidate.include)}) saves "
                        f"{_pct(max(gain, 0.0))} < {_pct(min_saving)} over "
                        f"({', '.join(costing.candidate.key_labels)}) alone",
                    )
                )
                continue
        pool.append(costing)

    chosen: list[Choice] = []
    per_table: dict[TableRef, int] = {}
    while pool:
        scored = [(_benefit(c, by_id, best, min_saving), c) for c in pool]
        benefit, winner = max(
            scored, key=lambda pair: (net(pair[1], pair[0]), -len(pair[1].candidate.columns))
        )
        if net(winner, benefit) <= 0:
            break
        pool.remove(winner)
        table = winner.candidate.table
        if per_table.get(table, 0) >= max_new_per_table:
            rejected.append(
                Rejection(
                    candidate=winner.candidate,
                    reason=f"cap of {max_new_per_table} new indexes on {table} reached",
                )
            )
            continue
        per_table[table] = per_table.get(table, 0) + 1
        effects = []
        for qid, cost in sorted(winner.costs.items()):
            query = by_id.get(qid)
            if query is None or query.base_cost <= 0:
                continue
            if cost < best[qid] and 1 - cost / query.base_cost >= min_saving:
                effects.append(
                    Effect(
                        queryid=qid,
                        calls=query.calls,
                        cost_before=best[qid],
                        cost_after=cost,
                        hot_before=query.hot_cost,
                        hot_after=winner.hot_costs.get(qid),
                    )
                )
                best[qid] = cost
        time_saved = sum(
            e.calls * by_id[e.queryid].mean_ms * max(0.0, 1 - e.cost_after / e.cost_before)
            for e in effects
        )
        chosen.append(
            Choice(
                candidate=winner.candidate,
                size_bytes=winner.size_bytes,
                benefit=benefit,
                effects=effects,
                est_time_saved_ms=time_saved,
                upkeep=upkeep.get(winner.candidate.key),
            )
        )
    for costing in pool:
        benefit = _benefit(costing, by_id, best, min_saving)
        overhead = upkeep.get(costing.candidate.key)
        if benefit > 0 and overhead is not None and overhead.cost >= benefit:
            rejected.append(
                Rejection(
                    candidate=costing.candidate,
                    reason=f"write overhead outweighs the saving: upkeep {overhead.detail} >= "
                    f"{benefit:,.0f} saved (calls x cost saved)",
                )
            )
            continue
        helper = next(
            (
                c.candidate.key
                for c in chosen
                if set(c.candidate.columns) & set(costing.candidate.columns)
                and c.candidate.table == costing.candidate.table
            ),
            None,
        )
        reason = (
            f"no further saving once {helper} exists"
            if helper
            else "no further saving once the chosen indexes exist"
        )
        rejected.append(Rejection(candidate=costing.candidate, reason=reason))
    return Selection(chosen=chosen, rejected=rejected)


def _benefit(
    costing: Costing, by_id: dict[int, QueryCost], best: dict[int, float], min_saving: float
) -> float:
    total = 0.0
    for qid, cost in costing.costs.items():
        query = by_id.get(qid)
        if query is None or query.base_cost <= 0:
            continue
        if 1 - cost / query.base_cost >= min_saving and cost < best[qid]:
            total += query.calls * (best[qid] - cost)
    return total


def table_matches(ref: TableRef, patterns: Sequence[str]) -> bool:
    """Does `ref` match any of `name` / `schema.name`, as stored or as PostgreSQL reads it
    (`"Sales"."Events"`, the form errors list; `perfops.names`)?"""
    return any(names_table(p, ref.schema, ref.name) for p in patterns)
