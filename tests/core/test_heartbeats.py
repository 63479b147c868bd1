"""perfops.heartbeats: flow-run heartbeats off for the runs the CLI starts and for a fleet
run's subflow children, Prefect's setting otherwise."""

from __future__ import annotations

from prefect.settings import get_current_settings

from perfops.heartbeats import heartbeats


def test_runs_start_no_heartbeat_thread_unless_asked() -> None:
    prefect_default = get_current_settings().flows.heartbeat_frequency
    assert prefect_default is not None  # Prefect 3.9 beats every 180 s by default
    with heartbeats(False):
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == prefect_default
    with heartbeats(True):
        assert get_current_settings().flows.heartbeat_frequency == prefect_default
