"""Index write overhead: what one more index costs the workload's writes, in the planner's cost
units, to weigh against what it saves the reads (pganalyze calls it "Index Write Overhead").
Pure: no Prefect, no I/O.

The writes come from the same pg_stat_statements window as the reads: each INSERT adds an entry
to every index of its table per row (`rows` of the statement); an UPDATE adds one to an index
whose columns (key, INCLUDE or a partial index's predicate) it sets (it can no longer be a HOT
update); a partial index takes an INSERT's rows in the share its predicate keeps (pg_stats).
DELETEs add none (their cost comes later, in VACUUM). One entry costs about one random page
(`INDEX_ENTRY_COST`): the leaf page it dirties, written back later, and its WAL record. An index
whose upkeep over the window is at least what it saves the reads in that window is rejected with
both numbers.

Not counted: UPDATEs that are not HOT for lack of room on the page (they add an entry to every
index whatever their columns), and the reads' time saved in memory vs the writes' on disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pglast import ast, parse_sql
from pglast.parser import ParseError

from decisions.indexing import Candidate, Catalog, TableRef, Upkeep, resolve_table

INDEX_ENTRY_COST = 4.0
"""Planner cost units per index entry written (random_page_cost's default: about one page)."""


@dataclass
class TableWrites:
    """Rows the workload wrote to one table in the pg_stat_statements window."""

    inserted: int = 0
    updates: list[tuple[frozenset[str], int]] = field(default_factory=list)  # (columns set, rows)


def write_target(
    query: str, catalog: Catalog, search_path: Sequence[str]
) -> tuple[TableRef, frozenset[str] | None] | None:
    """The table an INSERT or UPDATE writes, and for an UPDATE the columns it sets (None for an
    INSERT); None for anything else or what does not parse."""
    try:
        statements = parse_sql(query)
    except ParseError:
        return None
    if len(statements) != 1:
        return None
    root = statements[0].stmt
    relation = root.relation if isinstance(root, ast.InsertStmt | ast.UpdateStmt) else None
    if relation is not None and relation.relname:
        ref = resolve_table(relation.schemaname, relation.relname, catalog, search_path)
        if ref is None:
            return None
        if not isinstance(root, ast.UpdateStmt):
            return ref, None  # an INSERT
        columns = frozenset(
            t.name for t in root.targetList or () if isinstance(t, ast.ResTarget) and t.name
        )
        return ref, columns
    return None


def collect_writes(
    statements: Iterable[tuple[str, int]], catalog: Catalog, search_path: Sequence[str]
) -> dict[TableRef, TableWrites]:
    """Rows written per table by the statements, given as (text, rows)."""
    out: dict[TableRef, TableWrites] = {}
    for query, rows in statements:
        target = write_target(query, catalog, search_path)
        if target is None or rows <= 0:
            continue
        ref, columns = target
        writes = out.setdefault(ref, TableWrites())
        if columns is None:
            writes.inserted += rows
        else:
            writes.updates.append((columns, rows))
    return out


def index_upkeep(
    candidates: Iterable[Candidate], writes: Mapping[TableRef, TableWrites]
) -> dict[str, Upkeep]:
    """Each candidate's upkeep (by key); candidates on tables nobody wrote are left out."""
    out: dict[str, Upkeep] = {}
    for candidate in candidates:
        table = writes.get(candidate.table)
        if table is None:
            continue
        # an UPDATE of a key, INCLUDE or predicate column is not HOT
        held = {*candidate.columns, *candidate.include}
        if candidate.predicate is not None:
            held.add(candidate.predicate.column)
        touched = sorted({c for columns, _ in table.updates for c in columns if c in held})
        updated = sum(rows for columns, rows in table.updates if columns & held)
        # a partial index takes an entry only for the rows its predicate keeps
        share = candidate.predicate.share if candidate.predicate is not None else None
        inserted = round(table.inserted * share) if share is not None else table.inserted
        entries = inserted + updated
        if entries <= 0:
            continue
        parts = [f"{inserted:,} rows inserted"] if inserted else []
        if updated:
            parts.append(f"{updated:,} updated ({', '.join(touched)})")
        cost = entries * INDEX_ENTRY_COST
        out[candidate.key] = Upkeep(
            cost=cost,
            entries=entries,
            detail=f"{' + '.join(parts)} x {INDEX_ENTRY_COST:g} = {cost:,.0f}",
        )
    return out
