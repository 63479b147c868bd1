"""Long ranges are split into chunks the server accepts, with no gap and no overlap."""

from datetime import UTC, datetime, timedelta

import pytest

from tasks.prometheus.client import plan_range_chunks, series_name
from tasks.prometheus.slis import SeveralSeries

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_short_range_is_one_chunk() -> None:
    assert plan_range_chunks(T0, T0 + timedelta(hours=1), timedelta(minutes=1), 11_000) == [
        (T0, T0 + timedelta(hours=1))
    ]


def test_fourteen_days_of_minutes_need_two_chunks_covering_every_step() -> None:
    step = timedelta(minutes=1)
    end = T0 + timedelta(days=14)
    chunks = plan_range_chunks(T0, end, step, 11_000)
    assert len(chunks) == 2
    points = sum(int((b - a) / step) + 1 for a, b in chunks)
    assert points == int((end - T0) / step) + 1  # every step exactly once
    assert chunks[0][0] == T0 and chunks[-1][1] == end
    assert chunks[1][0] == chunks[0][1] + step
    assert all(int((b - a) / step) + 1 <= 11_000 for a, b in chunks)


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="before its start"):
        plan_range_chunks(T0, T0 - timedelta(seconds=1), timedelta(minutes=1), 100)
    with pytest.raises(ValueError, match="step must be positive"):
        plan_range_chunks(T0, T0, timedelta(0), 100)


def test_series_name_is_stable() -> None:
    assert (
        series_name({"__name__": "up", "job": "b", "instance": "a"}) == 'up{instance="a",job="b"}'
    )
    assert series_name({}) == "{}"


def test_several_series_are_named_in_a_stable_order() -> None:
    """Prometheus answers series in no fixed order: the error names them sorted, so the same
    query says the same thing on every run (the first three, then how many more)."""
    metrics = [{"service": s} for s in ("web", "batch", "api", "zeta")]
    message = str(SeveralSeries("query", metrics))
    assert 'answered 4 series ({service="api"}, {service="batch"}, {service="web"} and 1 more)' in (
        message
    )
