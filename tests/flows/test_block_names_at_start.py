"""A run given a block name that names no saved block fails at its start, before any work, with
every missing name and the saved blocks of its type in the state message."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.evaluate_slos import evaluate_slos

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROOT = Path(__file__).resolve().parents[2]


def test_evaluate_slos_with_two_typos_fails_naming_both_before_reading_prometheus() -> None:
    state = evaluate_slos(
        definitions_path=str(ROOT / "deployments" / "slos.yaml"),
        prometheus_block="prom-typo",
        slack_block="slak",
        return_state=True,
    )
    assert state.is_failed()
    message = state.message or ""
    assert "prometheus_block: no perfops-prometheus-source block named 'prom-typo'" in message
    assert "slack_block: no perfops-slack-escalation-target block named 'slak'" in message
