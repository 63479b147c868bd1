"""The weekly report's Load tests section, from the week's `perfops.load.*` events: how many
runs, passed or not, and every regression against a baseline (endpoint, p95 before and after,
why it counts). Pure; works on any event with `event`, `occurred` and `payload` (the report's
RecordedEvent)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from perfops.wording import counted

NOTHING = "nothing recorded this week (no load test ran)"


class LoadEvent(Protocol):
    event: str
    occurred: datetime
    payload: dict[str, Any]


def load_lines(events: Sequence[LoadEvent]) -> tuple[list[str], list[dict[str, Any]]]:
    """Lines (one per test: runs, passed, aborted, latest p95) and rows (one per regression)."""
    tested = sorted(
        (e for e in events if e.event == "perfops.load.tested"), key=lambda e: e.occurred
    )
    lines: list[str] = []
    by_test: dict[str, list[LoadEvent]] = {}
    for e in tested:
        by_test.setdefault(str(e.payload.get("test")), []).append(e)
    for test, runs in sorted(by_test.items()):
        passed = sum(bool(e.payload.get("passed")) for e in runs)
        aborted = sum(bool(e.payload.get("aborted")) for e in runs)
        latest = runs[-1].payload
        overall = (latest.get("endpoints") or {}).get("all") or {}
        p95 = overall.get("p95_ms")
        lines.append(
            f"{test}: {counted(len(runs), 'run')}, {passed} passed"
            + (f", {aborted} aborted" if aborted else "")
            + (f"; latest p95 {p95:,.1f} ms" if isinstance(p95, int | float) else "")
            + f" at {latest.get('achieved_rps', 0):,.0f} of {latest.get('asked_rps', 0):,.0f} rps"
        )
    rows: list[dict[str, Any]] = []
    for e in sorted(
        (e for e in events if e.event == "perfops.load.regressed"), key=lambda e: e.occurred
    ):
        for r in e.payload.get("regressions") or []:
            rows.append(
                {
                    "time": e.occurred.strftime("%a %d %b %H:%M"),
                    "test": e.payload.get("test"),
                    "endpoint": r.get("endpoint"),
                    "p95_ms": r.get("p95_ms"),
                    "baseline_p95_ms": r.get("baseline_p95_ms"),
                    "reason": r.get("reason"),
                }
            )
    if rows:
        lines.append(f"{counted(len(rows), 'endpoint regression')} against the baseline")
    return lines, rows


def load_things(rows: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """The weekly report's 'things to look at' for load tests: regressions, weighted just
    below missed targets."""
    if not rows:
        return []
    first = rows[-1]
    return [
        (
            60,
            f"load test {first.get('test')}: {first.get('endpoint')} regressed "
            f"({first.get('reason')})"
            + (f"; {len(rows) - 1} more regressions this week" if len(rows) > 1 else ""),
        )
    ]
