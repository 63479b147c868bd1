"""Prefect flow-run heartbeats on or off for the runs started inside a block.

Heartbeats let an automation mark a run Crashed when its process vanishes: that is for
unattended deployment runs, which keep Prefect's setting. Prefect's sync engine joins the
heartbeat thread at the end of each run, and the thread sleeps in whole seconds: up to 1 s added
to every run. So runs that someone attends (a CLI command) or whose parent already beats for
them (a fleet run's subflow children, in the parent's process) start with heartbeats off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def heartbeats(enabled: bool) -> Iterator[None]:
    """Flow runs started in this block send heartbeats only when `enabled` (and Prefect's
    setting has them on); the setting is changed for this thread's context only."""
    from prefect.context import SettingsContext

    current = SettingsContext.get()
    if enabled or current is None or current.settings.flows.heartbeat_frequency is None:
        yield
        return
    flows = current.settings.flows.model_copy(update={"heartbeat_frequency": None})
    settings = current.settings.model_copy(update={"flows": flows})
    with SettingsContext(profile=current.profile, settings=settings):
        yield
