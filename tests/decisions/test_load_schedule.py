"""The arrival schedule: rates over time per pattern, arrivals evenly spaced, shares that add
up to the whole, and weighted scenario order."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from decisions.load_scenarios import Pattern
from decisions.load_schedule import (
    Shape,
    arrival_times,
    asked_requests,
    rate_at,
    scenario_order,
)


def shape(pattern: Pattern, duration: float = 10, up: float = 0, down: float = 0) -> Shape:
    return Shape(duration, up, down, pattern)


def test_a_constant_rate_starts_a_request_every_one_over_rate_seconds() -> None:
    times = arrival_times(shape(Pattern(rps=100), duration=2))
    assert len(times) == 200
    assert np.allclose(np.diff(times), 0.01)
    assert times[0] == pytest.approx(0.005)


def test_ramps_wrap_the_pattern_and_the_total_is_the_integral() -> None:
    s = shape(Pattern(rps=100), duration=10, up=2, down=2)
    assert rate_at(s, np.array([0.0, 1.0, 2.0, 5.0, 9.0])).tolist() == pytest.approx(
        [0, 50, 100, 100, 50]
    )
    assert asked_requests(s) == pytest.approx(800, abs=1)
    assert len(arrival_times(s)) == 800


def test_ramp_step_and_spike_shapes() -> None:
    t = np.array([0.5, 4.5, 9.5])
    ramp = rate_at(shape(Pattern(kind="ramp", rps=100, start_fraction=0.1)), t)
    assert ramp.tolist() == pytest.approx([14.5, 50.5, 95.5])
    step = rate_at(shape(Pattern(kind="step", rps=100, steps=4)), np.array([1.0, 3.0, 6.0, 9.0]))
    assert step.tolist() == pytest.approx([25, 50, 75, 100])
    spike = Pattern(
        kind="spike",
        rps=100,
        base_fraction=0.2,
        spike_at=timedelta(seconds=4),
        spike_for=timedelta(seconds=2),
    )
    assert rate_at(shape(spike), np.array([3.9, 4.0, 5.9, 6.0])).tolist() == [20, 100, 100, 20]


def test_shares_interleave_and_together_are_the_whole_schedule() -> None:
    s = shape(Pattern(rps=300), duration=3)
    whole = arrival_times(s)
    parts = [arrival_times(s, k, 3) for k in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == pytest.approx(whole.tolist())
    assert [len(p) for p in parts] == [300, 300, 300]
    assert np.allclose(np.diff(parts[1]), 3 / 300)


def test_a_closed_model_has_no_arrival_schedule() -> None:
    with pytest.raises(ValueError, match="rps pattern only"):
        arrival_times(shape(Pattern(vus=5)))


def test_scenarios_get_their_weights_share_in_every_stretch() -> None:
    order = scenario_order([1000, 500, 100], 16_000)
    assert np.bincount(order).tolist() == [10_000, 5_000, 1_000]
    first = np.bincount(order[:160], minlength=3).tolist()
    assert first == [100, 50, 10]
