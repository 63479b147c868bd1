"""Small wording helpers shared by the summaries, reasons and reports perfops writes."""

from __future__ import annotations

from collections.abc import Sequence


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`1 run`, `3 runs`, `1,200 tables`, `2 indexes`: a count with its noun (`plural`, or the
    noun in -s)."""
    return f"{count:,} " + (noun if count == 1 else plural or f"{noun}s")


def no_table_matches(patterns: Sequence[str]) -> str:
    """The table filter's names that select no table, as every run says them:
    `no table matches include_tables a, b (--table)`."""
    return f"no table matches include_tables {', '.join(patterns)} (--table)"


def tables_here(tables: Sequence[str]) -> str:
    """What a database has, for an error about a table filter: `24 tables here, e.g. ...`."""
    if not tables:
        return "no tables here"
    return f"{counted(len(tables), 'table')} here, e.g. {', '.join(sorted(tables)[:5])}"


def figure(value: float) -> str:
    """A measured number for people: 26,290 (not 2.629e+04) from 1,000 on, else 4 significant
    digits (210, 3.75, 0.2345)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
