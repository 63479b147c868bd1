"""A statistics refresh run's report: what was decided for each table, what happened, the
summary a person reads and, when tables failed, the one line that says what failed (the run's
state message). Pure: `flows/refresh_stale_statistics.py` fills it in; `decisions.staleness`
decides which tables are stale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Result = Literal[
    "analyzed",
    "vacuumed and analyzed",
    "failed",
    "not permitted",
    "missing",
    "would analyze",
    "would vacuum and analyze",
    "skipped",
]


class TableOutcome(BaseModel):
    """One table: what was decided, why, and what happened."""

    table: str  # schema.table quoted as PostgreSQL would
    schema_name: str
    table_name: str
    action: str  # analyze, vacuum-analyze, skip
    code: str  # never-analyzed, stale, dead-tuples, fresh, small, excluded, ...
    reason: str
    rows: int
    changed: str  # rows modified since the last analyze, as a percentage
    result: Result
    duration_ms: float | None = None
    error: str | None = None


class StatisticsReport(BaseModel):
    """What a statistics refresh found and did."""

    target: str
    dry_run: bool
    analyze_threshold: float
    considered: int
    analyzed: int  # refreshed, confirmed in pg_stat_user_tables (VACUUM (ANALYZE) included)
    vacuumed: int
    failed: int  # includes the tables not permitted
    missing: int
    skipped: int
    would_analyze: int
    failed_tables: list[str]
    skipped_by_reason: dict[str, int]  # code -> tables left alone for that reason
    seconds: float
    tables: list[TableOutcome]  # every table acted on; the LISTED_SKIPPED skipped nearest to act
    not_permitted: int = 0  # stale tables the role may not analyze (not attempted)
    privileges: str | None = None  # what the role needs for them, said once
    unmatched: str | None = None  # the include filters' names that selected no table

    @property
    def summary(self) -> str:
        if self.dry_run:
            return (
                f"would analyze {self.would_analyze} of {self.considered} tables "
                f"({self.skipped} fresh or skipped)"
            )
        text = (
            f"analyzed {self.analyzed} of {self.considered} tables, {self.failed} failed, "
            f"{self.skipped} skipped"
        )
        if self.vacuumed:
            text += f" ({self.vacuumed} with VACUUM)"
        if self.missing:
            text += f", {self.missing} dropped meanwhile"
        return text

    @property
    def failure(self) -> str | None:
        """What failed, for the run's state message; None when nothing did."""
        if self.dry_run or not self.failed:
            return None
        reasons = [self.privileges] if self.privileges else []
        first = next((t for t in self.tables if t.result == "failed"), None)
        if first is not None:
            reasons.append(f"{first.table}: {first.error}")
        acting = self.analyzed + self.failed + self.missing
        return f"{self.failed} of {acting} tables failed: " + "; ".join(reasons)


def artifact_rows(report: StatisticsReport) -> list[dict[str, object]]:
    """The artifact table: every table acted on, then the skipped ones the report lists and one
    row counting the rest by reason."""
    rows: list[dict[str, object]] = [
        {
            "table": o.table,
            "result": o.result,
            "reason": o.reason,
            "error": o.error or "",
            "decision": o.action,
            "duration_ms": o.duration_ms if o.duration_ms is not None else "",
        }
        for o in report.tables
    ]
    listed = sum(o.result == "skipped" for o in report.tables)
    if report.skipped > listed:
        rows.append(
            {
                "table": f"... {report.skipped - listed} more",
                "result": "skipped",
                "reason": "all skipped: "
                + ", ".join(f"{n} {code}" for code, n in sorted(report.skipped_by_reason.items())),
                "error": "",
                "decision": "skip",
                "duration_ms": "",
            }
        )
    return rows
