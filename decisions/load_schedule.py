"""The arrival schedule of a load test: the level over time for each pattern (ramps included),
the intended start time of every request of the open model, which scenario each arrival runs,
and how a test is split into shares.

Pure numpy. The level at time t is `level(t) = peak * envelope(t) * shape(t)`: the envelope
ramps linearly from 0 over `ramp_up` and back to 0 over `ramp_down`; the shape is the pattern's
(constant 1; ramp from start_fraction to 1; `steps` equal steps; spike base/1) over the hold
part. Arrivals are evenly spaced in "work": arrival i is where the integral of the rate reaches
i + 0.5, so a constant 100 rps gives one request every 10 ms exactly (no random gaps: the same
load every night, and percentiles that compare).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from decisions.load_scenarios import LoadTest, Pattern

RESOLUTION_S = 0.001  # the rate curve is integrated on this grid


@dataclass(frozen=True)
class Shape:
    """The time parameters of a level curve, in seconds (from a LoadTest, or built in tests)."""

    duration: float
    ramp_up: float
    ramp_down: float
    pattern: Pattern

    @classmethod
    def of(cls, test: LoadTest) -> Shape:
        return cls(
            test.seconds, test.ramp_up.total_seconds(), test.ramp_down.total_seconds(), test.pattern
        )


def level_fraction(shape: Shape, t: np.ndarray) -> np.ndarray:
    """The fraction (0..1) of the pattern's peak at times `t` (seconds from the start)."""
    t = np.asarray(t, dtype=float)
    envelope = np.ones_like(t)
    if shape.ramp_up > 0:
        envelope = np.minimum(envelope, t / shape.ramp_up)
    if shape.ramp_down > 0:
        envelope = np.minimum(envelope, (shape.duration - t) / shape.ramp_down)
    envelope = np.clip(envelope, 0.0, 1.0)
    envelope[(t < 0) | (t >= shape.duration)] = 0.0
    p = shape.pattern
    hold_start = shape.ramp_up
    hold = max(shape.duration - shape.ramp_up - shape.ramp_down, 1e-9)
    into = np.clip((t - hold_start) / hold, 0.0, 1.0)  # 0..1 through the hold part
    if p.kind == "constant":
        form = np.ones_like(t)
    elif p.kind == "ramp":
        form = p.start_fraction + (1.0 - p.start_fraction) * into
        form[t < hold_start] = p.start_fraction
    elif p.kind == "step":
        form = (np.minimum(np.floor(into * p.steps), p.steps - 1) + 1) / p.steps
    else:  # spike
        start = p.spike_at.total_seconds()
        end = start + p.spike_for.total_seconds()
        form = np.where((t >= start) & (t < end), 1.0, p.base_fraction)
    return envelope * form


def rate_at(shape: Shape, t: np.ndarray) -> np.ndarray:
    """Requests per second (or virtual users) asked at times `t`."""
    return shape.pattern.level * level_fraction(shape, t)


def arrival_times(shape: Shape, share: int = 0, shares: int = 1) -> np.ndarray:
    """Intended start times (seconds from the start) of the open model's arrivals for one share
    of `shares`: share k takes arrivals k, k + shares, k + 2 * shares, ... of the whole
    schedule, so the shares together ask exactly the whole rate, interleaved."""
    if not shape.pattern.open_model:
        raise ValueError("arrival times exist for an rps pattern only (vus is a closed model)")
    if not 0 <= share < shares:
        raise ValueError(f"share {share} is not one of 0..{shares - 1}")
    grid = np.arange(0.0, shape.duration + RESOLUTION_S, RESOLUTION_S)
    rates = rate_at(shape, grid[:-1] + RESOLUTION_S / 2)
    work = np.concatenate([[0.0], np.cumsum(rates) * RESOLUTION_S])  # arrivals due by grid[i]
    total = int(np.floor(work[-1] + 0.5))
    targets = np.arange(total, dtype=float) + 0.5
    idx = np.clip(np.searchsorted(work, targets), 1, len(work) - 1)
    lo, hi = work[idx - 1], work[idx]
    frac = np.where(hi > lo, (targets - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    times = grid[idx - 1] + frac * RESOLUTION_S
    return times[share::shares]


def asked_requests(shape: Shape) -> float:
    """The arrivals the whole schedule asks for (the integral of the rate)."""
    grid = np.arange(0.0, shape.duration, RESOLUTION_S) + RESOLUTION_S / 2
    return float(np.sum(rate_at(shape, grid)) * RESOLUTION_S)


def scenario_order(weights: list[float], count: int) -> np.ndarray:
    """Which scenario each of `count` arrivals runs: smooth weighted round-robin (nginx's), so
    every stretch of arrivals holds the weights' proportions, with no randomness. Weights are
    taken to 1/1000; the order repeats every sum-of-weights arrivals, computed once."""
    if not weights or any(w <= 0 for w in weights):
        raise ValueError("weights must be positive")
    scaled = [max(1, round(w * 1000)) for w in weights]
    divisor = 0
    for s in scaled:
        divisor = math.gcd(divisor, s)
    ints = [s // divisor for s in scaled]
    period = min(sum(ints), max(count, 1))
    total = sum(ints)
    current = [0] * len(ints)
    one = []
    for _ in range(period):
        best = 0
        for k, w in enumerate(ints):
            current[k] += w
            if current[k] > current[best]:
                best = k
        one.append(best)
        current[best] -= total
    cycle = np.asarray(one, dtype=np.int32)
    return np.resize(cycle, count) if count else cycle[:0]


def vus_at(shape: Shape, t: float) -> int:
    """How many virtual users the closed model keeps busy at time t."""
    return round(float(rate_at(shape, np.asarray([t]))[0]))


def share_users(users: int, share: int, shares: int) -> int:
    """How many of `users` virtual users share `share` of `shares` runs (users share,
    share + shares, ...: together exactly `users`)."""
    if not 0 <= share < shares:
        raise ValueError(f"share {share} is not one of 0..{shares - 1}")
    return max(0, (users - share + shares - 1) // shares)


def share_level(level: float, shares: int) -> float:
    """The level each of `shares` asks (the test's asked rate divided between them)."""
    if shares < 1:
        raise ValueError("at least one share")
    return level / shares
