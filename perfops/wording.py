"""Small wording helpers shared by the summaries, reasons and reports perfops writes."""

from __future__ import annotations


def counted(count: int, noun: str) -> str:
    """`1 run`, `3 runs`, `1,200 tables`: a count with its noun (a plural in -s)."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
