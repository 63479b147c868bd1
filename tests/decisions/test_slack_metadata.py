"""Slack message metadata: the documented payload shape (pure), and perfops' alerts in it."""

from __future__ import annotations

from typing import Any

import pytest

from decisions.burn_rate import Alert
from decisions.slack_metadata import (
    alert_from_metadata,
    alert_metadata,
    drop_nulls,
    slack_metadata_problems,
)


def meta(**payload: Any) -> dict[str, Any]:
    return {"event_type": "perfops_sla_notice", "event_payload": payload}


def an_alert(**changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "key": "availability/page-fast",
        "name": "availability",
        "condition": "page-fast",
        "kind": "slo",
        "slo": "availability",
        "severity": "critical",
        "labels": {"slo": "availability", "route": "/a,b=c", "quote": 'say "hi"'},
        "value": 0.98,
        "objective": 0.999,
        "reason": "burning",
        "burn_rate": 20.0,
        "budget_remaining": 0.5,
    }
    return Alert(**{**fields, **changes})


def test_the_documented_shape_has_no_problems() -> None:
    assert (
        slack_metadata_problems(
            meta(
                key="k",
                level=2,
                ratio=0.5,
                open=True,
                empty="",
                flat={"a": "x", "b": 1, "c": False},
                rows=[{"a": "x"}, {"b": 2.5, "c": True}],
                none=[],
                nothing={},
            )
        )
        == []
    )


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"acked_by": None}, "event_payload.acked_by: null"),
        ({"alerts": [{"key": "a", "value": None}]}, "event_payload.alerts[0].value: null"),
        ({"alerts": [{"labels": {"slo": "x"}}]}, "event_payload.alerts[0].labels: object"),
        ({"flat": {"inner": {"x": 1}}}, "event_payload.flat.inner: object"),
        ({"flat": {"inner": [1]}}, "event_payload.flat.inner: array"),
        ({"flat": {"inner": None}}, "event_payload.flat.inner: null"),
        ({"tags": ["a"]}, "event_payload.tags[0]: str"),
        ({"rows": [[{"a": 1}]]}, "event_payload.rows[0]: array"),
        ({"value": float("nan")}, "event_payload.value: non-finite number nan"),
        ({"rows": [{"v": float("inf")}]}, "event_payload.rows[0].v: non-finite number inf"),
    ],
)
def test_each_value_outside_the_shape_is_named(payload: dict[str, Any], where: str) -> None:
    problems = slack_metadata_problems(meta(key="k", **payload))
    assert len(problems) == 1 and problems[0].startswith(where), problems


@pytest.mark.parametrize(
    ("metadata", "where"),
    [
        (None, "metadata: null"),
        ("{not json", "metadata: str"),
        ({"event_payload": {}}, "event_type"),
        ({"event_type": "", "event_payload": {}}, "event_type"),
        ({"event_type": "x"}, "event_payload: null"),
        ({"event_type": "x", "event_payload": [{"a": 1}]}, "event_payload: array"),
        ({"event_type": "x", "event_payload": {}, "extra": 1}, "metadata: unexpected field"),
    ],
)
def test_the_envelope_is_checked_too(metadata: Any, where: str) -> None:
    problems = slack_metadata_problems(metadata)
    assert problems and problems[0].startswith(where), problems


def test_drop_nulls_leaves_out_none_and_non_finite_numbers_only() -> None:
    kept = {"a": "", "b": 0, "c": False, "d": 1.5, "e": []}
    assert drop_nulls({**kept, "x": None, "y": float("nan"), "z": float("-inf")}) == kept


@pytest.mark.parametrize(
    "alert",
    [
        an_alert(),
        an_alert(value=None, objective=None, burn_rate=None, budget_remaining=None),
        an_alert(labels={}),
        an_alert(kind="rule", runbook="https://runbooks.example.test/x", dashboard="d"),
    ],
    ids=["full", "nulls", "no-labels", "rule"],
)
def test_an_alert_fits_the_shape_and_reads_back_the_same(alert: Alert) -> None:
    item = alert_metadata(alert)
    assert slack_metadata_problems(meta(alerts=[item])) == []
    assert isinstance(item["labels"], str) and None not in item.values()
    assert alert_from_metadata(item) == alert


def test_labels_encode_stably_whatever_their_order() -> None:
    one = an_alert(labels={"b": "2", "a": "1"})
    other = an_alert(labels={"a": "1", "b": "2"})
    assert alert_metadata(one)["labels"] == alert_metadata(other)["labels"] == '{"a":"1","b":"2"}'


def test_a_non_finite_value_is_left_out_and_reads_as_none() -> None:
    item = alert_metadata(an_alert(value=float("nan")))
    assert "value" not in item and slack_metadata_problems(meta(alerts=[item])) == []
    assert alert_from_metadata(item).value is None


def test_an_alert_in_the_shape_notices_had_before_still_reads() -> None:
    """Notices posted before the metadata fitted Slack's shape: labels an object, nulls."""
    alert = an_alert(value=None, burn_rate=None)
    old = alert.model_dump(mode="json")
    assert isinstance(old["labels"], dict) and old["value"] is None
    assert slack_metadata_problems(meta(alerts=[old]))  # outside the shape, as it was sent
    assert alert_from_metadata(old) == alert
