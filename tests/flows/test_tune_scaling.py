"""tune_scaling on the test Prometheus (back-filled history) and real Redis, and
scale_predictively running what it chose."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from blocks import RedisTarget
from decisions.scaling_report import LoadQuery
from decisions.scaling_tuning import TuningRun, candidates
from flows.scale_predictively import scale_predictively
from flows.tune_scaling import tune_scaling
from tasks.scaling_state import load_tuning
from tests.conftest import HISTORY_END, REDIS_TEST_URL
from tests.records import artifact_rows, failed_run, one_target, wait_for_event
from tests.servers import PrometheusServer

pytestmark = pytest.mark.usefixtures("prefect_harness")

# three days at 15 minutes: a small back-test (two days replayed after a day of warm-up)
QUERY = LoadQuery(
    promql="sum(perfops_test_load)", lookback=timedelta(days=3), step=timedelta(minutes=15)
)


@pytest.fixture()
def env(
    monkeypatch: pytest.MonkeyPatch, redis_target: RedisTarget, prometheus: PrometheusServer
) -> Iterator[RedisTarget]:
    monkeypatch.setenv("PERFOPS_REDIS_URL", REDIS_TEST_URL)
    monkeypatch.setenv("PERFOPS_PROMETHEUS_URL", prometheus.url)
    yield redis_target


def test_tunes_on_the_groups_history_and_the_decision_runs_the_choice(env: RedisTarget) -> None:
    state = tune_scaling(group="api", query=QUERY, now=HISTORY_END, return_state=True)
    run = state.result()
    assert isinstance(run, TuningRun)  # one group, not a fleet
    assert run.result == "tuned" and run.stored and run.met and run.choice
    stored = load_tuning.fn(env, "api")
    # 3 days at 15 minutes, both ends included (289 points), the first day only warms up
    assert stored is not None and stored["label"] == run.choice and stored["steps"] == 2 * 96 + 1
    # the back-test table: the choice first with its reason, then every other candidate
    rows = artifact_rows("perfops-scaling-tuning")
    assert (rows[0]["candidate"], rows[0]["result"]) == (run.choice, "chosen")
    assert rows[0]["reason"] == run.reason and len(rows) == len(candidates())
    assert {r["result"] for r in rows[1:]} <= {"meets the risk target", "too risky"}
    event = wait_for_event("perfops.scaling.tuned", flow_run_id=state.state_details.flow_run_id)
    assert event.payload["choice"] == run.choice and event.payload["risk_pct"] == 1.0
    assert event.payload["forecast_wins"] == run.forecast_wins

    decided = one_target(
        scale_predictively, group="api", query=QUERY, now=HISTORY_END, current_capacity=5
    )
    assert decided.action != "fail_static" and decided.tuned.startswith("tuned ")
    assert decided.tuned.endswith(run.choice)
    only = one_target(
        scale_predictively,
        group="api",
        query=QUERY,
        now=HISTORY_END,
        current_capacity=5,
        mode="forecast_only",
    )
    assert only.tuned.startswith(f"forecast only: the tuning would use {run.choice}")


def test_store_false_only_shows_and_too_short_a_history_fails_saying_why(
    env: RedisTarget,
) -> None:
    shown = one_target(tune_scaling, group="web", query=QUERY, now=HISTORY_END, store=False)
    assert shown.result == "would tune (not stored)" and not shown.stored and shown.choice
    assert load_tuning.fn(env, "web") is None
    short = QUERY.model_copy(update={"lookback": timedelta(hours=30)})
    failed, message = failed_run(
        tune_scaling(group="web", query=short, now=HISTORY_END, return_state=True)
    )
    assert failed.result == "no tuning" and "at least two days of history" in failed.reason
    assert message == f"no tuning for web: {failed.reason}"
