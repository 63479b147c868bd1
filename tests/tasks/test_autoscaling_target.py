"""An Auto Scaling target named only by its group (an event-triggered run) takes the worker's
region."""

from __future__ import annotations

import pytest

from tasks.autoscaling import AutoScalingTarget


def test_region_comes_from_the_workers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert AutoScalingTarget(group="web").region == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert AutoScalingTarget(group="web").region == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert AutoScalingTarget(group="web").region == "eu-central-1"
    assert AutoScalingTarget(group="web", region="ap-south-1").region == "ap-south-1"
