"""Every Redis flow fails on an unreachable Redis naming it without the password its URL
carries (`PERFOPS_REDIS_URL=redis://:pw@cache:6379/0`): not in the error, the run's state
message (the Prefect UI) or its logs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flows.collect_cache_stats import collect_cache_stats
from flows.invalidate_cache import invalidate_cache
from flows.scale_predictively import scale_predictively
from flows.warm_cache import warm_cache
from perfops.errors import ConnectionFailed, report_of

pytestmark = pytest.mark.usefixtures("prefect_harness")

CALLS: list[tuple[Callable[..., Any], dict[str, Any]]] = [
    (collect_cache_stats, {}),
    (invalidate_cache, {"pattern": "user:42:*"}),
    (
        warm_cache,
        {"cache": "agent_configs", "urls": {"agent:1:config:main": "http://127.0.0.1:1/"}},
    ),
    (scale_predictively, {"current_capacity": 3}),
]


@pytest.mark.parametrize(("flow", "parameters"), CALLS, ids=lambda c: getattr(c, "name", ""))
def test_unreachable_redis_is_named_without_its_password(
    flow: Callable[..., Any],
    parameters: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = f"{flow.name}-secret-42"  # type: ignore[attr-defined]
    monkeypatch.setenv("PERFOPS_REDIS_URL", f"redis://:{secret}@127.0.0.1:1/0")
    state = flow(**parameters, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    message = str(error)
    if not isinstance(error, ConnectionFailed):  # a run that recorded its failure first
        message = f"{message} {report_of(error)}"
    assert "127.0.0.1:1/0" in message, message
    assert secret not in message
    assert secret not in (state.message or "")
    assert secret not in caplog.text
