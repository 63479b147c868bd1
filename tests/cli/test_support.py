"""cli.support: what the CLI changes in Prefect's settings for the runs it starts."""

from __future__ import annotations

from prefect.settings import get_current_settings

from cli.support import _heartbeats


def test_cli_runs_start_no_heartbeat_thread_unless_asked() -> None:
    prefect_default = get_current_settings().flows.heartbeat_frequency
    assert prefect_default is not None  # Prefect 3.9 beats every 180 s by default
    with _heartbeats(False):
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == prefect_default
    with _heartbeats(True):
        assert get_current_settings().flows.heartbeat_frequency == prefect_default
