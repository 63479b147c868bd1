"""SLA definitions: the seed file loads; malformed YAML names the line and the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from decisions.slo_definitions import load_definitions, parse_definitions, parse_duration
from perfops.errors import ConfigurationError

SEED = Path(__file__).resolve().parents[2] / "deployments" / "slos.yaml"

MINIMAL = """\
escalation_policies:
  - name: default
    levels:
      - name: team lead
        channel: "#oncall"
slos:
  - name: availability
    sli:
      kind: ratio
      good: sum(rate(ok[$window]))
      total: sum(rate(all[$window]))
    objective: {objective}
    window: 30d
"""


def test_seed_file_holds_the_seed_sla() -> None:
    d = load_definitions(SEED)
    slos = {s.name: s for s in d.slos}
    assert slos["availability"].objective == 0.999
    assert slos["availability"].window == timedelta(days=30)
    assert slos["api-latency"].window == timedelta(days=1)
    burn = {b.name: (b.long, b.short, b.factor) for b in slos["availability"].burn_windows}
    assert burn["page-fast"] == (timedelta(hours=1), timedelta(minutes=5), 14.4)
    assert burn["page-slow"] == (timedelta(hours=6), timedelta(minutes=30), 6.0)
    assert burn["ticket"] == (timedelta(days=3), timedelta(hours=6), 1.0)
    rules = {r.name: r for r in d.alert_rules}
    assert rules["error-rate"].threshold == 0.001
    assert rules["error-rate-critical"].threshold == 0.01
    assert rules["throughput-burst"].threshold == 15000
    assert d.degradation[0].increase == 0.2
    assert d.degradation[0].baseline_offset == timedelta(weeks=1)
    levels = [lvl.name for lvl in d.policy("default").levels]
    assert levels == ["team lead", "engineering manager", "CTO"]


def test_a_bad_field_names_line_and_field() -> None:
    with pytest.raises(ConfigurationError) as err:
        parse_definitions(MINIMAL.format(objective="1.5"), "slos.yaml")
    message = str(err.value)
    assert "slos.yaml line 12, slos[0].objective" in message
    assert "less than 1" in message


def test_a_missing_window_placeholder_is_named() -> None:
    text = MINIMAL.format(objective="0.99").replace("sum(rate(ok[$window]))", "sum(rate(ok[5m]))")
    with pytest.raises(ConfigurationError, match=r"line 10, slos\[0\]\.sli\.good: .*\$window"):
        parse_definitions(text, "slos.yaml")


def test_broken_yaml_names_the_line() -> None:
    text = MINIMAL.format(objective="0.99") + "  - name: [unclosed\n"
    with pytest.raises(ConfigurationError, match=r"slos.yaml line \d+: not valid YAML"):
        parse_definitions(text, "slos.yaml")


def test_unknown_field_and_unknown_policy() -> None:
    text = MINIMAL.format(objective="0.99") + "    escalation: nobody\n    colour: red\n"
    with pytest.raises(ConfigurationError, match=r"line 15, slos\[0\]\.colour: Extra inputs"):
        parse_definitions(text, "slos.yaml")
    text = MINIMAL.format(objective="0.99") + "    escalation: nobody\n"
    with pytest.raises(ConfigurationError, match="escalation policy 'nobody' is not defined"):
        parse_definitions(text, "slos.yaml")


def test_rule_data_points_cannot_exceed_periods() -> None:
    text = MINIMAL.format(objective="0.99") + (
        "alert_rules:\n  - name: r\n    metric: up\n    operator: '>'\n    threshold: 1\n"
        "    evaluation_periods: 2\n    data_points: 3\n"
    )
    with pytest.raises(ConfigurationError, match=r"line 15, alert_rules\[0\]: .*data_points"):
        parse_definitions(text, "slos.yaml")


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("oncall@example.test, cto@example.test", "holds 2 addresses: give each one on its own"),
        ("oncall", "is not an email address"),
    ],
)
def test_an_email_fallback_entry_that_is_not_one_address_fails_naming_line_and_field(
    entry: str, why: str
) -> None:
    """It used to be found only when Slack had failed and a notice needed the fallback: the
    delivery then raised, the run's other notices unsent and its artifact unwritten."""
    text = MINIMAL.format(objective="0.99").replace(
        "  - name: default\n",
        f"  - name: default\n    email_fallback: [ok@example.test, '{entry}']\n",
    )
    with pytest.raises(ConfigurationError) as err:
        parse_definitions(text, "slos.yaml")
    assert (
        f"slos.yaml line 3, escalation_policies[0].email_fallback[1]: Value error, '{entry}' {why}"
        in str(err.value)
    )
    assert "give one address per entry, like sre@example.com" in str(err.value)


def test_durations() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration(30) == timedelta(seconds=30)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 minutes")


def test_missing_file() -> None:
    with pytest.raises(ConfigurationError, match="cannot read SLA definitions"):
        load_definitions("/nonexistent/slos.yaml")
