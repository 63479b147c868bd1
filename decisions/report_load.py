"""The weekly report's Load tests section, from the week's `perfops.load.*` events: how many
runs, passed or not, how many were refused before sending (`perfops.load.refused`) or failed
before their figures were measured (`perfops.load.failed`), and every regression against a
baseline (endpoint, p95 before and after, why it counts). Pure; works on any event with `event`,
`occurred` and `payload` (the report's RecordedEvent)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from perfops.wording import counted

NOTHING = "nothing recorded this week (no load test ran)"
TESTED = "perfops.load.tested"
REGRESSED = "perfops.load.regressed"
REFUSED = "perfops.load.refused"
FAILED = "perfops.load.failed"
# what a run that sent no measured load says, by its event
NOT_MEASURED = {REFUSED: "refused", FAILED: "failed"}
WEIGHT_REGRESSION = 60  # just below missed targets
WEIGHT_NOT_MEASURED = 58  # a test that measured nothing: just below a regression


class LoadEvent(Protocol):
    event: str
    occurred: datetime
    payload: dict[str, Any]


def _row(e: LoadEvent, result: str, reason: Any, **figures: Any) -> dict[str, Any]:
    return {
        "time": e.occurred.strftime("%a %d %b %H:%M"),
        "test": e.payload.get("test"),
        "result": result,
        "endpoint": figures.get("endpoint", ""),
        "p95_ms": figures.get("p95_ms", ""),
        "baseline_p95_ms": figures.get("baseline_p95_ms", ""),
        "reason": reason,
    }


def load_lines(events: Sequence[LoadEvent]) -> tuple[list[str], list[dict[str, Any]]]:
    """Lines (one per test: runs, passed, aborted, latest p95; runs refused or failed before
    being measured) and rows (one per regression, refused run and failed run, by time)."""
    ordered = sorted(events, key=lambda e: e.occurred)
    by_test: dict[str, dict[str, list[LoadEvent]]] = {}
    for e in ordered:
        if e.event in (TESTED, *NOT_MEASURED):
            kinds = by_test.setdefault(str(e.payload.get("test")), {})
            kinds.setdefault(e.event, []).append(e)
    lines: list[str] = []
    for test, kinds in sorted(by_test.items()):
        runs = kinds.get(TESTED, [])
        if runs:
            passed = sum(bool(e.payload.get("passed")) for e in runs)
            aborted = sum(bool(e.payload.get("aborted")) for e in runs)
            latest = runs[-1].payload
            overall = (latest.get("endpoints") or {}).get("all") or {}
            p95 = overall.get("p95_ms")
            line = (
                f"{test}: {counted(len(runs), 'run')}, {passed} passed"
                + (f", {aborted} aborted" if aborted else "")
                + (f"; latest p95 {p95:,.1f} ms" if isinstance(p95, int | float) else "")
                + f" at {latest.get('achieved_rps', 0):,.0f} of "
                f"{latest.get('asked_rps', 0):,.0f} rps"
            )
        else:
            line = f"{test}: no run measured"
        unmeasured = [
            f"{len(kinds[event])} {word} before " + ("sending" if event == REFUSED else "measuring")
            for event, word in NOT_MEASURED.items()
            if kinds.get(event)
        ]
        if unmeasured:
            last = max((e for event in NOT_MEASURED for e in kinds.get(event, [])),
                       key=lambda e: e.occurred)  # fmt: skip
            line += f"; {', '.join(unmeasured)} (latest: {last.payload.get('reason')})"
        lines.append(line)
    rows: list[dict[str, Any]] = []
    for e in ordered:
        if e.event == REGRESSED:
            for r in e.payload.get("regressions") or []:
                rows.append(
                    _row(
                        e,
                        "regressed",
                        r.get("reason"),
                        endpoint=r.get("endpoint"),
                        p95_ms=r.get("p95_ms"),
                        baseline_p95_ms=r.get("baseline_p95_ms"),
                    )
                )
        elif e.event in NOT_MEASURED:
            rows.append(_row(e, NOT_MEASURED[e.event], e.payload.get("reason")))
    regressions = sum(r["result"] == "regressed" for r in rows)
    if regressions:
        lines.append(f"{counted(regressions, 'endpoint regression')} against the baseline")
    return lines, rows


def load_things(rows: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """The weekly report's 'things to look at' for load tests: the latest regression, weighted
    just below missed targets, then each test whose runs were refused or failed before being
    measured (its latest reason)."""
    things: list[tuple[float, str]] = []
    regressions = [r for r in rows if r.get("result", "regressed") == "regressed"]
    if regressions:
        first = regressions[-1]
        things.append(
            (
                WEIGHT_REGRESSION,
                f"load test {first.get('test')}: {first.get('endpoint')} regressed "
                f"({first.get('reason')})"
                + (
                    f"; {len(regressions) - 1} more regressions this week"
                    if len(regressions) > 1
                    else ""
                ),
            )
        )
    unmeasured: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("result") in NOT_MEASURED.values():
            unmeasured.setdefault(str(r.get("test")), []).append(r)
    for test, mine in sorted(unmeasured.items()):
        words = [w for w in NOT_MEASURED.values() if any(r["result"] == w for r in mine)]
        things.append(
            (
                WEIGHT_NOT_MEASURED,
                f"load test {test}: {counted(len(mine), 'run')} {' or '.join(words)} before "
                f"being measured this week; latest: {mine[-1].get('reason')}",
            )
        )
    return things
