"""The systemd units' Prefect settings are real ones with the values docs/workers.md gives: Prefect
ignores an unknown PREFECT_* variable silently, so a typo would only show as slow runs."""

from __future__ import annotations

import shlex

import pytest
from prefect.settings import Settings

from tests.deploy.dockerfile import ROOT


def _environment(unit: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ROOT / "deployments" / "systemd" / unit).read_text().splitlines():
        if line.startswith("Environment="):
            for pair in shlex.split(line.removeprefix("Environment=")):
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def test_workers_poll_every_2_s_and_the_server_caps_slot_waits_at_2_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = _environment("perfops-worker@.service")
    server = _environment("prefect-server.service")
    for name, value in {**worker, **server}.items():
        if name.startswith("PREFECT_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert worker["PREFECT_WORKER_QUERY_SECONDS"] == "2"
    assert settings.worker.query_seconds == 2
    assert server["PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS"] == "2"
    assert settings.server.concurrency.maximum_concurrency_slot_wait_seconds == 2
