"""`perfops demo`'s cache steps, on the embedded default Redis (or PERFOPS_REDIS_URL): warm 50
workflow definitions computed from the demo database, invalidate one of them as the
`workflow_updated` event would (applied: one key of the demo's own goes), then collect the
cache statistics. The keys expire within the hour."""

from __future__ import annotations

from typing import Any

from demo.outcome import FlowOutcome, Progress
from perfops.errors import report_of
from perfops.redaction import redact

WARM_SQL = "select 'workflow:' || id || ':definition:v1', name from workflows order by id limit 50"


def _result(state: Any) -> Any:
    return report_of(state.result(raise_on_failure=False))


def run_warm_cache(progress: Progress) -> FlowOutcome:
    from flows.warm_cache import ARTIFACT_KEY, warm_cache

    progress("running warm_cache (50 workflow definitions from PostgreSQL)", 0, 1)
    state = warm_cache(cache="workflow_definitions", keys_sql=WARM_SQL, return_state=True)
    report = _result(state)
    if isinstance(report, BaseException) or report is None:
        return FlowOutcome("warm_cache", state.name or "Failed", redact(str(report)), ARTIFACT_KEY)
    return FlowOutcome("warm_cache", state.name or "", report.summary, ARTIFACT_KEY)


def run_invalidate_cache(progress: Progress) -> FlowOutcome:
    from flows.invalidate_cache import ARTIFACT_KEY, invalidate_cache

    progress("running invalidate_cache (event workflow_updated, workflow 1)", 0, 1)
    state = invalidate_cache(
        event="workflow_updated", payload={"workflow_id": 1}, apply=True, return_state=True
    )
    report = _result(state)
    if isinstance(report, BaseException) or report is None:
        return FlowOutcome(
            "invalidate_cache", state.name or "Failed", redact(str(report)), ARTIFACT_KEY
        )
    return FlowOutcome("invalidate_cache", state.name or "", report.summary, ARTIFACT_KEY)


def run_collect_cache_stats(progress: Progress) -> FlowOutcome:
    from flows.collect_cache_stats import ARTIFACT_KEY, collect_cache_stats

    progress("running collect_cache_stats", 0, 1)
    state = collect_cache_stats(sample=1000, return_state=True)
    report = _result(state)
    if isinstance(report, BaseException) or report is None:
        return FlowOutcome(
            "collect_cache_stats", state.name or "Failed", redact(str(report)), ARTIFACT_KEY
        )
    return FlowOutcome("collect_cache_stats", state.name or "", report.summary, ARTIFACT_KEY)
