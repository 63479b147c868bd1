"""SLA definitions: SLOs, alert rules, escalation policies, the degradation rule and silences,
as typed pydantic models read from a documented YAML file (`deployments/slos.yaml`).

A malformed file fails with an error naming the file, the line and the field
(`deployments/slos.yaml line 12, slos[0].objective: Input should be less than 1`). Pure: the
only I/O is `load_definitions`, which reads one file.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from decisions.recipients import EXAMPLE, recipient_problem
from decisions.yaml_models import parse_model
from perfops.clock import as_utc
from perfops.errors import ConfigurationError

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
WINDOW_PLACEHOLDER = "$window"


def parse_duration(value: Any) -> timedelta:
    """'5m', '1h', '30d' (Prometheus style, one unit) or seconds as a number -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    match = _DURATION.match(str(value).strip())
    if not match:
        raise ValueError(f"not a duration like 5m, 1h or 30d: {value!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def promql_duration(delta: timedelta) -> str:
    """timedelta -> the largest whole Prometheus unit ('3d', '90m', '45s')."""
    seconds = int(delta.total_seconds())
    for unit in ("w", "d", "h", "m"):
        size = int(_UNITS[unit])
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _has_window(value: str) -> str:
    if WINDOW_PLACEHOLDER not in value:
        raise ValueError(f"the expression must contain {WINDOW_PLACEHOLDER}: {value!r}")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
WindowedPromQL = Annotated[str, AfterValidator(_has_window)]  # PromQL with `$window` in it
Name = Annotated[str, Field(pattern=_NAME.pattern, max_length=80)]
Severity = Literal["critical", "warning", "info"]
SEVERITY_RANK = {"critical": 3, "warning": 2, "info": 1}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RatioSli(_Model):
    """Good events / all events, each a PromQL expression with `$window` where the range goes,
    e.g. `sum(rate(http_requests_total{code!~"5.."}[$window]))`."""

    kind: Literal["ratio"] = "ratio"
    good: WindowedPromQL = Field(description="PromQL: rate of good events over $window.")
    total: WindowedPromQL = Field(description="PromQL: rate of all events over $window.")


class QuantileSli(_Model):
    """A latency quantile (PromQL with `$window`) that must stay at or under `threshold_s`.

    Budget and burn rates are defined on event counts, so a quantile SLO is evaluated as a
    threshold over the burn-rate windows (value / threshold as its 'burn'); prefer a ratio SLI
    over histogram buckets (`le="0.2"` / count) when the histogram has a bucket at the threshold.
    """

    kind: Literal["quantile"] = "quantile"
    query: WindowedPromQL = Field(description="PromQL quantile over $window, in seconds.")
    threshold_s: float = Field(gt=0, description="The objective: the quantile stays <= this.")


class BurnWindow(_Model):
    """One multi-window burn-rate condition: both windows must burn faster than `factor`."""

    name: Name
    long: Duration
    short: Duration
    factor: float = Field(gt=0)
    severity: Severity

    @model_validator(mode="after")
    def _short_shorter(self) -> BurnWindow:
        if self.short >= self.long:
            raise ValueError(f"short window {self.short} must be shorter than long {self.long}")
        return self


# The Google SRE workbook's multi-window multi-burn-rate alerts for a 30-day budget.
DEFAULT_BURN_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow(name="page-fast", long=timedelta(hours=1), short=timedelta(minutes=5),
               factor=14.4, severity="critical"),
    BurnWindow(name="page-slow", long=timedelta(hours=6), short=timedelta(minutes=30),
               factor=6.0, severity="critical"),
    BurnWindow(name="ticket", long=timedelta(days=3), short=timedelta(hours=6),
               factor=1.0, severity="warning"),
)  # fmt: skip


class Slo(_Model):
    """A service level objective: an SLI, the objective over a rolling window, how to alert."""

    name: Name
    description: str = ""
    sli: RatioSli | QuantileSli = Field(discriminator="kind")
    objective: float = Field(gt=0, lt=1, description="Fraction of good events, e.g. 0.999.")
    window: Duration = Field(description="Rolling compliance window, e.g. 30d.")
    burn_windows: tuple[BurnWindow, ...] = DEFAULT_BURN_WINDOWS
    escalation: Name = Field(default="default", description="Escalation policy name.")
    labels: dict[str, str] = Field(default_factory=dict)
    runbook: str = ""
    dashboard: str = ""

    @property
    def error_budget(self) -> float:
        return 1.0 - self.objective


Operator = Literal[">", ">=", "<", "<="]


class AlertRule(_Model):
    """The seed's alert rule: `metric operator threshold` for `data_points` of the last
    `evaluation_periods` periods of `period` each (CloudWatch's M out of N)."""

    name: Name
    metric: str = Field(description="PromQL giving one value per evaluation time.")
    operator: Operator
    threshold: float
    period: Duration = Field(default=timedelta(minutes=1))
    evaluation_periods: int = Field(default=1, ge=1, le=1440)
    data_points: int = Field(default=1, ge=1, le=1440)
    severity: Severity = "warning"
    slo: str | None = Field(default=None, description="The SLO this rule guards (inhibition).")
    escalation: Name = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    runbook: str = ""
    dashboard: str = ""

    @model_validator(mode="after")
    def _points_fit(self) -> AlertRule:
        if self.data_points > self.evaluation_periods:
            raise ValueError(
                f"data_points ({self.data_points}) cannot exceed evaluation_periods "
                f"({self.evaluation_periods})"
            )
        return self


class DegradationRule(_Model):
    """Performance degradation: `query` now vs the same expression `baseline_offset` ago (the
    same hour last week by default); fires when now > baseline * (1 + `increase`)."""

    name: Name = "latency-degradation"
    query: WindowedPromQL = Field(description="PromQL with $window, e.g. a p95 latency.")
    window: Duration = Field(default=timedelta(minutes=5))
    baseline_offset: Duration = Field(default=timedelta(weeks=1))
    increase: float = Field(default=0.2, gt=0, le=10)
    min_baseline: float = Field(default=0.0, ge=0, description="Ignore tiny baselines.")
    data_points: int = Field(default=3, ge=1, le=60, description="Consecutive minutes degraded.")
    severity: Severity = "warning"
    slo: str | None = None
    escalation: Name = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    runbook: str = ""
    dashboard: str = ""


class EscalationLevel(_Model):
    """One level: where it goes (a channel and/or people) and how long before the next."""

    name: str = Field(min_length=1)
    channel: str | None = None
    mentions: list[str] = Field(default_factory=list, description="Slack user ids, e.g. U123.")
    after: Duration = Field(
        default=timedelta(minutes=15), description="Unacknowledged this long: next level."
    )

    @model_validator(mode="after")
    def _somewhere(self) -> EscalationLevel:
        if not self.channel and not self.mentions:
            raise ValueError(f"level {self.name!r} needs a channel, mentions or both")
        return self


def _one_address(value: str) -> str:
    """An email fallback entry is one address: checked when the file is read, not when Slack
    has failed and the notice needs it."""
    problem = recipient_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r} {problem}; give one address per entry, like {EXAMPLE}")
    return value


EmailAddress = Annotated[str, AfterValidator(_one_address)]


class EscalationPolicy(_Model):
    name: Name
    levels: list[EscalationLevel] = Field(min_length=1)
    repeat_interval: Duration = Field(
        default=timedelta(hours=4), description="Remind in the thread while still firing."
    )
    group_by: list[str] = Field(default_factory=lambda: ["slo"])
    email_fallback: list[EmailAddress] = Field(
        default_factory=list,
        description="Who gets the notice by email when Slack fails, one address per entry.",
    )

    def channel(self, level: int) -> str | None:
        """Channel of `level` (1-based), else the nearest lower level's channel."""
        for lvl in reversed(self.levels[:level]):
            if lvl.channel:
                return lvl.channel
        return next((lvl.channel for lvl in self.levels if lvl.channel), None)


class Silence(_Model):
    """Mute alerts whose labels match every matcher (exact or `~regex`) until `ends_at`."""

    matchers: dict[str, str] = Field(min_length=1)
    ends_at: datetime
    comment: str = ""
    created_by: str = ""

    @field_validator("ends_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return as_utc(value)

    def matches(self, labels: dict[str, str], now: datetime) -> bool:
        if now >= self.ends_at:
            return False
        for key, want in self.matchers.items():
            have = labels.get(key, "")
            if want.startswith("~"):
                if not re.fullmatch(want[1:], have):
                    return False
            elif have != want:
                return False
        return True


class EvaluationSettings(_Model):
    no_data_after: Duration = Field(
        default=timedelta(minutes=10), description="Empty results this long: a no-data alert."
    )
    prefect_ui_url: str = Field(default="", description="Base URL for run links in notices.")


class SlaDefinitions(_Model):
    """Everything the SLA flow reads, as in `deployments/slos.yaml`."""

    settings: EvaluationSettings = EvaluationSettings()
    slos: list[Slo] = Field(default_factory=list)
    alert_rules: list[AlertRule] = Field(default_factory=list)
    degradation: list[DegradationRule] = Field(default_factory=list)
    escalation_policies: list[EscalationPolicy] = Field(min_length=1)
    silences: list[Silence] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> SlaDefinitions:
        names = [s.name for s in self.slos] + [r.name for r in self.alert_rules]
        names += [d.name for d in self.degradation]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names must be unique across slos, rules and degradation: {dupes}")
        policies = {p.name for p in self.escalation_policies}
        items: list[Slo | AlertRule | DegradationRule] = [
            *self.slos,
            *self.alert_rules,
            *self.degradation,
        ]
        for item in items:
            if item.escalation not in policies:
                raise ValueError(
                    f"{item.name}: escalation policy {item.escalation!r} is not defined "
                    f"(have {sorted(policies)})"
                )
        return self

    def find_policy(self, name: str) -> EscalationPolicy | None:
        """The escalation policy called `name`, or None when none is."""
        return next((p for p in self.escalation_policies if p.name == name), None)

    def policy(self, name: str) -> EscalationPolicy:
        """The escalation policy called `name`; a ConfigurationError naming the defined ones
        when there is none."""
        found = self.find_policy(name)
        if found is None:
            have = ", ".join(p.name for p in self.escalation_policies)
            raise ConfigurationError(
                f"escalation policy {name!r} is not defined in the SLA definitions (have {have})"
            )
        return found


_UNIONS = {"sli": ("ratio", "quantile")}  # the SLI union's tags: in error paths, not the file


def parse_definitions(text: str, source: str = "<string>") -> SlaDefinitions:
    """Parse and validate YAML text; errors name `source`, the line and the field."""
    return parse_model(
        SlaDefinitions,
        text,
        source,
        expected="a mapping with slos, alert_rules, ...",
        unions=_UNIONS,
    )


def load_definitions(path: Path | str) -> SlaDefinitions:
    """Read and validate an SLA definitions file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read SLA definitions {path}: {exc.strerror}") from None
    return parse_definitions(text, str(path))
