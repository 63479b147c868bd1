"""Every PostgreSQL flow fails fast on an unreachable server, in one line, without the password."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from flows.check_index_health import check_index_health
from flows.find_slow_queries import find_slow_queries
from flows.refresh_stale_statistics import refresh_stale_statistics
from flows.suggest_indexes import suggest_indexes
from perfops.errors import ConnectionFailed

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.parametrize(
    "flow",
    [find_slow_queries, suggest_indexes, check_index_health, refresh_stale_statistics],
    ids=lambda f: f.name,
)
def test_unreachable_server_fails_fast_in_one_line_without_the_password(
    flow: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"{flow.name}-secret-42"  # type: ignore[attr-defined]
    monkeypatch.setenv("PERFOPS_DSN", f"postgresql://app:{secret}@127.0.0.1:1/app")
    started = time.monotonic()
    state = flow(return_state=True)
    assert time.monotonic() - started < 15
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ConnectionFailed)
    message = str(error)
    assert message.startswith("cannot connect to PostgreSQL at app@127.0.0.1:1/app: ")
    assert "\n" not in message and secret not in message
    assert secret not in (state.message or "")
