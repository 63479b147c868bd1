"""Which statements are slow, and why each is listed. Pure: no Prefect, no I/O.

From pg_stat_statements rows (`StatementStats`, read by `tasks.postgres.statements`), a
statement is listed when its mean execution time reaches a threshold, or when it is among the
top N by total execution time; the two lists are joined without duplicates and every statement
says why it is there
("mean 1,240 ms >= 1,000 ms", "top 3 by total time (41% of DB time)").

Also decided here: whether a statement's text can be EXPLAINed at all (parsed with pglast: a
truncated or unparsable text, or a utility statement such as SET, VACUUM or DDL, is skipped with a
reason), and a one-line summary of a plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from perfops.names import quote_ident
from perfops.wording import counted

DEFAULT_THRESHOLD_MS = 1_000.0
DEFAULT_TOP = 10
DEFAULT_MIN_CALLS = 1
DEFAULT_FETCH_LIMIT = 5_000  # pg_stat_statements.max's default: every statement it keeps
DEFAULT_EXPLAIN_LOCK_TIMEOUT_MS = 1_000
DEFAULT_EXPLAIN_STATEMENT_TIMEOUT_MS = 5_000
INSUFFICIENT_PRIVILEGE = "<insufficient privilege>"

# Statements EXPLAIN accepts (and that do not create anything when only planned).
_EXPLAINABLE = {"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}


class StatementStats(BaseModel):
    """One normalised statement as pg_stat_statements counts it (this database, top level)."""

    queryid: int
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    stddev_ms: float
    min_ms: float
    max_ms: float
    rows: int
    shared_blks_hit: int
    shared_blks_read: int
    share_of_db_time: float  # fraction of all statements' total time in this database


class HiddenStatements(BaseModel):
    """The statements of other roles pg_stat_statements hides from a role without
    pg_read_all_stats (their text reads `<insufficient privilege>`, their queryid NULL): they
    cannot be listed, planned or costed, so a run that reads around them says so."""

    statements: int
    total_ms: float
    share_of_db_time: float  # fraction of all statements' total time in this database
    role: str

    @property
    def warning(self) -> str:
        """`3 statements of other roles (97% of DB time) are hidden from perfops ...`."""
        return (
            f"{counted(self.statements, 'statement')} of other roles "
            f"({format_share(self.share_of_db_time)} of DB time) "
            f"{'is' if self.statements == 1 else 'are'} hidden from {self.role} "
            f"({INSUFFICIENT_PRIVILEGE}): grant pg_read_all_stats to "
            f"{quote_ident(self.role)} to see them"
        )


class SlowQuerySettings(BaseModel):
    """Tunables of `find_slow_queries` (all optional; the defaults suit a production database)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold_ms: float = Field(
        default=DEFAULT_THRESHOLD_MS,
        ge=0,
        le=86_400_000,
        description="List every statement whose mean execution time is at least this many "
        "milliseconds (default 1,000).",
    )
    top: int = Field(
        default=DEFAULT_TOP,
        ge=0,
        le=500,
        description="Also list the N statements with the most total execution time (default 10; "
        "0 lists only those over the threshold).",
    )
    min_calls: int = Field(
        default=DEFAULT_MIN_CALLS,
        ge=1,
        le=1_000_000,
        description="Ignore statements called fewer times than this (default 1).",
    )
    explain: bool = Field(
        default=False,
        description="EXPLAIN each listed statement (generic plan, never ANALYZE: nothing is "
        "executed) in a read-only transaction that is rolled back.",
    )
    explain_lock_timeout_ms: int = Field(
        default=DEFAULT_EXPLAIN_LOCK_TIMEOUT_MS,
        ge=1,
        le=60_000,
        description="How long planning one statement may wait for a lock on its tables before "
        "that statement is skipped (default 1,000 ms).",
    )
    explain_statement_timeout_ms: int = Field(
        default=DEFAULT_EXPLAIN_STATEMENT_TIMEOUT_MS,
        ge=100,
        le=600_000,
        description="Upper bound on planning one statement (default 5,000 ms).",
    )
    fetch_limit: int = Field(
        default=DEFAULT_FETCH_LIMIT,
        ge=100,
        le=100_000,
        description="Statements read from pg_stat_statements, most total time first (default "
        "5,000: all of them with pg_stat_statements.max at its default).",
    )


class PlanOutcome(BaseModel):
    """The generic plan of one statement, or why it was not planned."""

    status: Literal["planned", "skipped"]
    reason: str = ""
    cost: float | None = None
    summary: str = ""
    plan: dict[str, Any] | None = None  # the JSON plan's top node


class SlowStatement(StatementStats):
    """One listed statement: its pg_stat_statements figures, its rank and why it is listed."""

    rank_by_total: int  # 1 = the most total execution time in this database
    reasons: list[str]
    plan: PlanOutcome | None = None

    @property
    def hit_ratio(self) -> float | None:
        """Shared-buffer hit ratio (None when it touched no blocks)."""
        touched = self.shared_blks_hit + self.shared_blks_read
        return self.shared_blks_hit / touched if touched else None

    @property
    def why(self) -> str:
        return "; ".join(self.reasons)


def pick_slow_statements(
    stats: Iterable[StatementStats],
    *,
    threshold_ms: float = DEFAULT_THRESHOLD_MS,
    top: int = DEFAULT_TOP,
    min_calls: int = DEFAULT_MIN_CALLS,
) -> list[SlowStatement]:
    """Statements with mean time >= `threshold_ms`, and the `top` by total time, most total time
    first, each once with every reason that applies.

    pg_stat_statements keeps one row per (role, database, statement): rows with the same queryid
    are merged first (calls, times, rows and blocks added up; mean, stddev and max recomputed).
    """
    merged = [s for s in merge_by_queryid(stats) if s.calls >= min_calls]
    merged.sort(key=lambda s: (-s.total_ms, s.queryid))
    picked: list[SlowStatement] = []
    for rank, s in enumerate(merged, start=1):
        reasons = []
        if s.mean_ms >= threshold_ms:
            reasons.append(f"mean {format_ms(s.mean_ms)} ms >= {format_ms(threshold_ms)} ms")
        if rank <= top:
            reasons.append(
                f"top {rank} by total time ({format_share(s.share_of_db_time)} of DB time)"
            )
        if reasons:
            picked.append(s.model_copy(update={"rank_by_total": rank, "reasons": reasons}))
    return picked


def merge_by_queryid(stats: Iterable[StatementStats]) -> list[SlowStatement]:
    """One row per queryid (the same statement run by several roles is several rows)."""
    groups: dict[int, list[StatementStats]] = {}
    for s in stats:
        groups.setdefault(s.queryid, []).append(s)
    merged = []
    for queryid, rows in groups.items():
        calls = sum(r.calls for r in rows)
        total = sum(r.total_ms for r in rows)
        mean = total / calls if calls else 0.0
        # pg_stat_statements' stddev is the population stddev of each group: pool them.
        second_moment = (
            sum(r.calls * (r.stddev_ms**2 + r.mean_ms**2) for r in rows) / calls if calls else 0.0
        )
        stddev = max(second_moment - mean**2, 0.0) ** 0.5
        merged.append(
            SlowStatement(
                queryid=queryid,
                query=rows[0].query,
                calls=calls,
                total_ms=total,
                mean_ms=mean,
                stddev_ms=stddev,
                min_ms=min(r.min_ms for r in rows),
                max_ms=max(r.max_ms for r in rows),
                rows=sum(r.rows for r in rows),
                shared_blks_hit=sum(r.shared_blks_hit for r in rows),
                shared_blks_read=sum(r.shared_blks_read for r in rows),
                share_of_db_time=sum(r.share_of_db_time for r in rows),
                rank_by_total=0,
                reasons=[],
            )
        )
    return merged


def explain_skip_reason(query: str) -> str | None:
    """Why `query` cannot be EXPLAINed, or None when it can be planned."""
    text = query.strip()
    if not text:
        return "no statement text"
    if text == INSUFFICIENT_PRIVILEGE:
        return (
            "statement text hidden (<insufficient privilege>): grant pg_read_all_stats to the "
            "perfops role to see other roles' statements"
        )
    # pglast loads in ~0.1 s: only when a statement is checked, not whenever the CLI starts.
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        statements = parse_sql(text)
    except ParseError as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        location = exc.args[1] if len(exc.args) > 1 else None
        if _looks_truncated(text, message, location):
            return f"statement text is truncated ({message}): not planned"
        return f"statement text does not parse ({message}): not planned"
    if len(statements) != 1:
        return f"{len(statements)} statements in one text: not planned"
    node = statements[0].stmt
    kind = type(node).__name__
    if kind not in _EXPLAINABLE:
        return f"utility statement ({_leading_words(text)}) cannot be explained"
    if kind == "SelectStmt" and getattr(node, "intoClause", None) is not None:
        return "SELECT INTO creates a table: not planned"
    return None


def _looks_truncated(text: str, message: str, location: int | None) -> bool:
    """A parse error at the end of the text: it stops mid-statement (cut off at a length limit)."""
    if "end of input" in message or message.startswith("unterminated"):
        return True
    # An error in the last word ("... order by started_at desc lim") is a cut-off word.
    return location is not None and not text[location:].strip().count(" ")


def _leading_words(text: str) -> str:
    words = text.split()
    lead = words[:2] if words[0].lower() in {"create", "alter", "drop", "reset"} else words[:1]
    return " ".join(w.upper().rstrip(";") for w in lead)


def summarize_plan(plan: dict[str, Any], *, max_nodes: int = 8) -> str:
    """The plan's nodes in order, e.g. "Limit > Sort > Seq Scan on agent_executions"."""
    parts: list[str] = []
    stack: list[tuple[int, dict[str, Any]]] = [(0, plan)]
    while stack and len(parts) < max_nodes:
        depth, node = stack.pop()
        label = str(node.get("Node Type", "?"))
        if node.get("Relation Name"):
            label += f" on {node['Relation Name']}"
        if node.get("Index Name"):
            label += f" using {node['Index Name']}"
        parts.append(label)
        stack.extend((depth + 1, child) for child in reversed(node.get("Plans", [])))
    if stack:
        parts.append("...")
    return " > ".join(parts)


def format_ms(value: float) -> str:
    """1,240 / 52.3 / 0.42: whole numbers from 100 ms up, fewer digits below."""
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.2f}"


def format_share(fraction: float) -> str:
    if 0 < fraction < 0.005:
        return "<1%"
    return f"{fraction:.0%}"


def statement_rows(statements: Sequence[SlowStatement]) -> list[dict[str, Any]]:
    """The report as table rows (artifact and --json friendly): the rank, the reason it is
    listed, then the figures, the plan and the statement."""
    rows = []
    for s in statements:
        ratio = s.hit_ratio
        rows.append(
            {
                "rank": s.rank_by_total,
                "reason": s.why,
                "mean_ms": round(s.mean_ms, 2),
                "stddev_ms": round(s.stddev_ms, 2),
                "max_ms": round(s.max_ms, 2),
                "calls": s.calls,
                "total_s": round(s.total_ms / 1000, 3),
                "share_of_db_time": format_share(s.share_of_db_time),
                "rows": s.rows,
                "shared_blks_hit": s.shared_blks_hit,
                "shared_blks_read": s.shared_blks_read,
                "hit_ratio": "-" if ratio is None else f"{ratio:.1%}",
                "plan": _plan_cell(s.plan),
                "query": s.query,
                "queryid": str(s.queryid),
            }
        )
    return rows


def _plan_cell(plan: PlanOutcome | None) -> str:
    if plan is None:
        return "not requested"
    if plan.status == "skipped":
        return f"skipped: {plan.reason}"
    cost = f"cost {plan.cost:,.0f}: " if plan.cost is not None else ""
    return cost + plan.summary
