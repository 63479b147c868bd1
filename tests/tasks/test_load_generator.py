"""The load generator against the real local target server (HTTP on 127.0.0.1): the open model
shows a stall a closed model hides, errors are recorded by cause (not retried), assertions, the
abort, the auth header, and a share run in its own process."""

from __future__ import annotations

import socket

import pytest
from pydantic import SecretStr

from decisions.load_results import endpoint_stats
from decisions.load_scenarios import LoadTest, parse_tests
from demo.target_server import TargetBehaviour, TargetServer
from tasks.load_generator import LoadPlan, run_share, run_share_in_process


def a_test(pattern: str, duration: str = "2s", steps: str = "[{url: /api/v1/agents}]") -> LoadTest:
    return parse_tests(
        f"""
tests:
  - name: t
    duration: {duration}
    pattern: {pattern}
    scenarios: [{{name: s, steps: {steps}}}]
    abort: {{max_error_rate: 0.9, window: 1s, min_requests: 20}}
"""
    ).tests[0]


def test_the_open_model_counts_a_stall_from_each_requests_intended_start() -> None:
    behaviour = TargetBehaviour(median_ms=5, stall_every_s=0.8, stall_s=0.5)
    with TargetServer(behaviour) as server:
        opened = run_share(LoadPlan(test=a_test("{rps: 100}"), base_url=server.url))
    with TargetServer(behaviour) as server:
        closed = run_share(LoadPlan(test=a_test("{vus: 2}"), base_url=server.url))
    open_all, closed_all = endpoint_stats(opened)[0], endpoint_stats(closed)[0]
    assert opened.asked == 200 and opened.sent >= 198
    # about 1/4 of the arrivals fall in the stalls and wait up to 0.5 s
    assert open_all.max_ms is not None and 400 <= open_all.max_ms <= 700
    assert open_all.p90_ms is not None and open_all.p90_ms > 150
    # the closed model sends nothing while it waits: few requests see the stall
    assert closed_all.p90_ms is not None and closed_all.p90_ms < 50
    assert closed_all.max_ms is not None and closed_all.max_ms >= 300


def test_errors_are_recorded_by_cause_and_not_retried() -> None:
    with TargetServer(TargetBehaviour(median_ms=2, error_rate=0.3, seed=4)) as server:
        result = run_share(LoadPlan(test=a_test("{rps: 100}", "1s"), base_url=server.url))
        served = len(server.log.numbers) if server.log else 0
    counts = result.endpoints["GET /api/v1/agents"]
    assert served == counts.requests == 100  # one request per arrival: nothing retried
    assert 15 <= counts.errors["status 500"] <= 45
    assert set(counts.errors) == {"status 500"}


def test_json_and_latency_assertions_fail_with_their_cause() -> None:
    steps = (
        "[{url: /a, assert: {json: {status: nope}}}, "
        "{url: /b, assert: {max_latency_ms: 1}}, {url: /c, assert: {json: {path: /c}}}]"
    )
    with TargetServer(TargetBehaviour(median_ms=5)) as server:
        result = run_share(LoadPlan(test=a_test("{rps: 20}", "1s", steps), base_url=server.url))
    assert result.steps["s/GET /a"].errors == {"assertion: status": 20}
    assert result.steps["s/GET /b"].errors == {"assertion: latency": 20}
    assert result.steps["s/GET /c"].errors == {}
    assert result.steps["s/GET /c"].responses == 20


def test_a_failing_target_aborts_the_test_early() -> None:
    with TargetServer(TargetBehaviour(median_ms=1, error_rate=1.0)) as server:
        result = run_share(LoadPlan(test=a_test("{rps: 100}", "4s"), base_url=server.url))
    assert result.aborted is not None
    assert "error rate 100% over the last 1 s passed the limit 90%" in result.aborted
    assert result.sent < 250  # stopped well before the 400 asked


def test_a_refused_connection_is_an_error_of_its_own() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    result = run_share(
        LoadPlan(test=a_test("{rps: 20}", "1s"), base_url=f"http://127.0.0.1:{port}")
    )
    counts = result.endpoints["GET /api/v1/agents"]
    assert counts.errors.get("connection refused", 0) >= 15
    assert endpoint_stats(result)[0].error_rate == 1.0  # attempted and failed, every one
    # counted as sent as the endpoints count them: the summary said "0 requests" beside a
    # table of 20 refused ones
    assert result.sent == counts.requests


def test_the_auth_header_reaches_the_target_and_no_result(
    capfd: pytest.CaptureFixture[str],
) -> None:
    seen: list[bytes] = []
    with TargetServer(TargetBehaviour(median_ms=1)) as server:
        plan = LoadPlan(
            test=a_test("{rps: 10}", "1s"),
            base_url=server.url,
            auth_header="Authorization",
            auth_value=SecretStr("Bearer s3cret-token"),
        )
        import demo.target_server as target

        original = target._Connection.data_received

        def spy(self: target._Connection, data: bytes) -> None:
            seen.append(data)
            original(self, data)

        target._Connection.data_received = spy  # type: ignore[method-assign]
        try:
            result = run_share_in_process(plan)
        finally:
            target._Connection.data_received = original  # type: ignore[method-assign]
    assert any(b"Authorization: Bearer s3cret-token" in d for d in seen)
    assert "s3cret" not in result.model_dump_json()
    assert "s3cret" not in plan.model_dump_json()
    assert "s3cret" not in capfd.readouterr().err
    assert result.endpoints["GET /api/v1/agents"].responses == 10


def test_a_share_that_begins_after_the_shared_start_says_how_late() -> None:
    import time

    with TargetServer(TargetBehaviour(median_ms=1)) as server:
        test = a_test("{rps: 20}", "1s")
        on_time = run_share(
            LoadPlan(test=test, base_url=server.url, start_at_unix=time.time() + 1.0)
        )
        late = run_share(LoadPlan(test=test, base_url=server.url, start_at_unix=time.time() - 3))
    assert on_time.start_late_s == 0.0
    assert 3.0 <= late.start_late_s < 6.0
    assert late.sent == 20  # the whole schedule, shifted by its lateness


def test_a_closed_model_is_held_to_its_rate_cap_however_fast_the_target_answers() -> None:
    with TargetServer(TargetBehaviour(median_ms=1)) as server:
        capped = run_share(
            LoadPlan(test=a_test("{vus: 50}", "2s"), base_url=server.url, max_rps=100)
        )
    assert capped.model == "closed"
    # 50 users on a 1 ms server would send thousands; the token bucket allows 100 a second
    assert 150 <= capped.sent <= 200
    assert capped.endpoints["GET /api/v1/agents"].errors == {}


def test_shares_of_a_closed_model_divide_its_users_and_its_cap() -> None:
    from blocks import LoadTarget
    from tasks.load_generator import share_plan

    test = a_test("{vus: 5}", "1s")
    target = LoadTarget(base_url="http://127.0.0.1:9", max_rps=300)
    plans = [share_plan(test, target, k, 2, None) for k in range(2)]
    assert [p.max_rps for p in plans] == [150, 150]
    with TargetServer(TargetBehaviour(median_ms=200)) as server:
        results = [run_share(p.model_copy(update={"base_url": server.url})) for p in plans]
    # 3 + 2 users, each sending about 5 requests (200 ms each) in 1 s: 5 users in all, not 10
    first, second = (r.sent for r in results)
    assert 12 <= first <= 18 and 8 <= second <= 12, (first, second)


def test_a_closed_model_the_cap_cannot_bound_is_refused_naming_the_test() -> None:
    from blocks import LoadTarget
    from perfops.errors import ConfigurationError
    from tasks.load_generator import check_test

    target = LoadTarget(base_url="http://127.0.0.1:9", max_rps=100, max_connections=100)
    with pytest.raises(ConfigurationError) as caught:
        check_test(a_test("{vus: 50}", "4s"), target, 1)
    assert str(caught.value).startswith(
        "load test t refused: is a closed model of 50 virtual users whose scenario 's' has no "
        "think time"
    )
    assert "target's cap of 100 rps" in str(caught.value)


def test_the_engine_will_not_send_a_step_that_sets_host_even_unvalidated() -> None:
    import asyncio

    from decisions.load_scenarios import Step
    from tasks.load_engine import _Prepared

    step = Step.model_construct(**{**Step(url="/x").__dict__, "headers": {"Host": "prod.example"}})
    plan = LoadPlan(test=a_test("{rps: 1}", "1s"), base_url="http://127.0.0.1:9")

    async def prepare() -> None:
        _Prepared("s/x", step, plan, {})

    with pytest.raises(ValueError, match="cannot be sent: headers may not set Host"):
        asyncio.run(prepare())
