"""Pure SLO evaluation: burn-rate windows, rules with data points, no data, NaN and Inf."""

from __future__ import annotations

import math
from datetime import timedelta

from decisions.burn_rate import SeriesMeasurement, SloMeasurement, evaluate
from decisions.slo_definitions import parse_definitions
from tests.sla.helpers import DEFINITIONS, T0, burning, definitions

NAN, INF = math.nan, math.inf


def _eval(slo: SloMeasurement | None = None, rules=None, deg=None, since=None, now=T0):  # type: ignore[no-untyped-def]
    d = definitions()
    slos = {"availability": slo} if slo is not None else {}
    return evaluate(d, slos, rules or {}, deg or {}, now, since)


def _quiet_rules() -> dict[str, SeriesMeasurement]:
    return {
        "error-rate": SeriesMeasurement(name="error-rate", values=[0.0001] * 5),
        "error-rate-critical": SeriesMeasurement(name="error-rate-critical", values=[0.0001] * 5),
    }


def _deg(current: float, baseline: float) -> dict[str, SeriesMeasurement]:
    m = SeriesMeasurement(name="latency-degradation", values=[current] * 3, baseline=[baseline] * 3)
    return {"latency-degradation": m}


def test_healthy_slo_is_ok_with_budget_and_burn_rates() -> None:
    ev = _eval(burning(), _quiet_rules(), _deg(0.18, 0.18))
    status = {s.name: s for s in ev.statuses}["availability"]
    assert status.status == "ok"
    assert math.isclose(status.budget_remaining or 0, 0.9)
    assert math.isclose(status.burn_rates["1h"] or 0, 0.1)
    assert ev.alerts == []


def test_fast_burn_pages_only_when_both_windows_burn() -> None:
    ev = _eval(burning(_1h=0.02, _5m=0.05), _quiet_rules(), _deg(0.18, 0.18))
    assert [a.key for a in ev.alerts] == ["availability/page-fast"]
    alert = ev.alerts[0]
    assert alert.severity == "critical"
    assert "20.0x over 1h and 50.0x over 5m" in alert.reason
    assert alert.runbook == "https://runbooks.example.test/availability"
    assert math.isclose(alert.burn_rate or 0, 20.0)
    # The burn stopped: the 1h window still burns but the 5m one does not -> no page.
    ev = _eval(burning(_1h=0.02, _5m=0.0001), _quiet_rules(), _deg(0.18, 0.18))
    assert ev.alerts == []


def test_slow_burn_pages_and_ticket() -> None:
    ev = _eval(burning(_6h=0.007, _30m=0.008, _3d=0.002), _quiet_rules(), _deg(0.18, 0.18))
    assert sorted(a.key for a in ev.alerts) == ["availability/page-slow", "availability/ticket"]


def test_rule_needs_its_data_points() -> None:
    rules = _quiet_rules()
    rules["error-rate"] = SeriesMeasurement(name="error-rate", values=[0.01, 0.0, 0.01, 0, 0])
    ev = _eval(burning(), rules, _deg(0.18, 0.18))
    assert ev.alerts == []
    assert (
        "2 of the last 5 1m periods > 0.001 (need 3"
        in {s.name: s for s in ev.statuses}["error-rate"].detail
    )
    rules["error-rate"] = SeriesMeasurement(name="error-rate", values=[0.01, 0.0, 0.01, NAN, 0.2])
    ev = _eval(burning(), rules, _deg(0.18, 0.18))
    assert [a.key for a in ev.alerts] == ["error-rate/threshold"]
    assert "1 missing" in ev.alerts[0].reason


def test_nan_is_missing_and_inf_is_a_breach() -> None:
    rules = _quiet_rules()
    rules["error-rate"] = SeriesMeasurement(name="error-rate", values=[NAN] * 5)
    rules["error-rate-critical"] = SeriesMeasurement(
        name="error-rate-critical", values=[INF, INF, INF, 0.0, 0.0]
    )
    ev = _eval(burning(), rules, _deg(0.18, 0.18))
    statuses = {s.name: s for s in ev.statuses}
    assert statuses["error-rate"].status == "no data"  # never silently ok
    assert [a.key for a in ev.alerts] == ["error-rate-critical/threshold"]
    # NaN/Inf counts in a ratio SLI: missing windows, not a pass.
    slo = SloMeasurement(
        slo="availability", total=dict.fromkeys(["1h", "5m"], NAN), good={"1h": INF}
    )
    ev = _eval(slo, _quiet_rules(), _deg(0.18, 0.18))
    assert {s.name: s for s in ev.statuses}["availability"].status == "no data"


def test_no_data_alerts_after_the_configured_time() -> None:
    empty = SloMeasurement(slo="availability", error="Prometheus rejected the query: parse error")
    ev = _eval(empty, _quiet_rules(), _deg(0.18, 0.18))
    status = {s.name: s for s in ev.statuses}["availability"]
    assert status.status == "no data" and "parse error" in status.detail
    assert ev.alerts == []  # not yet: no_data_after is 10m
    assert ev.no_data_since == {"availability": T0}
    later = T0 + timedelta(minutes=10)
    ev = _eval(empty, _quiet_rules(), _deg(0.18, 0.18), since=ev.no_data_since, now=later)
    assert [a.key for a in ev.alerts] == ["availability/no-data"]
    assert "no data for 10 min" in ev.alerts[0].reason
    assert ev.no_data_since == {"availability": T0}
    # Data is back: the clock is cleared.
    ev = _eval(burning(), _quiet_rules(), _deg(0.18, 0.18), since=ev.no_data_since, now=later)
    assert ev.no_data_since == {} and ev.alerts == []


def test_missing_measurement_is_no_data() -> None:
    ev = _eval(None, {}, {})
    assert {s.status for s in ev.statuses} == {"no data"}


def test_degradation_against_last_week() -> None:
    ev = _eval(burning(), _quiet_rules(), _deg(0.23, 0.18))
    assert [a.key for a in ev.alerts] == ["latency-degradation/degraded"]
    alert = ev.alerts[0]
    assert alert.labels["kind"] == "degradation"
    assert "+28%" in alert.reason
    ev = _eval(burning(), _quiet_rules(), _deg(0.21, 0.18))  # +17%: within the 20%
    assert ev.alerts == []
    ev = _eval(burning(), _quiet_rules(), _deg(0.21, NAN))
    assert {s.name: s for s in ev.statuses}["latency-degradation"].status == "no baseline"


def test_quantile_slo_fires_when_both_windows_exceed_the_threshold() -> None:
    quantile = (
        "  - name: p95\n    sli:\n      kind: quantile\n"
        "      query: histogram_quantile(0.95, sum by (le) (rate(b[$window])))\n"
        "      threshold_s: 0.2\n    objective: 0.95\n    window: 1d\n"
    )
    d = parse_definitions(DEFINITIONS.replace("alert_rules:", quantile + "alert_rules:"))
    windows = ["1h", "5m", "6h", "30m", "3d", "1d"]
    slow = SloMeasurement(slo="p95", quantile={w: 0.25 for w in windows})
    ev = evaluate(d, {"availability": burning(), "p95": slow}, _quiet_rules(), _deg(0.2, 0.2), T0)
    keys = sorted(a.key for a in ev.alerts if a.slo == "p95")
    assert keys == ["p95/page-fast", "p95/page-slow", "p95/ticket"]
    assert "0.25 s over 1h" in ev.alerts[0].reason
    fast = SloMeasurement(slo="p95", quantile={w: 0.15 for w in windows} | {"5m": 0.3})
    ev = evaluate(d, {"availability": burning(), "p95": fast}, _quiet_rules(), _deg(0.2, 0.2), T0)
    assert [a for a in ev.alerts if a.slo == "p95"] == []  # only the short window is slow


def test_a_window_without_traffic_leaves_its_alert_unknown_not_ok() -> None:
    """Regression: a page whose 5m window had no traffic (0 requests: the service down hard)
    was simply not firing, so its open incident resolved. It is unknown: `decide` keeps it."""
    from decisions.escalation import decide
    from tests.sla.test_escalation import Sim

    d = definitions()
    firing = _eval(burning(_1h=0.02, _5m=0.05), _quiet_rules(), _deg(0.18, 0.18))
    assert [a.key for a in firing.alerts] == ["availability/page-fast"]
    silent = burning(_1h=0.02)
    silent.total["5m"], silent.good["5m"] = 0.0, 0.0  # no requests in the last 5 minutes
    ev = evaluate(d, {"availability": silent}, _quiet_rules(), _deg(0.18, 0.18), T0)
    assert ev.alerts == []
    assert ev.unknown == ["availability/page-fast"]
    sim = Sim(d)
    sim.step(T0, firing.alerts)
    plan = decide(T0 + timedelta(minutes=1), ev.alerts, sim.states, d, unknown=ev.unknown)
    assert [n.kind for n in plan.notices] == []  # not resolved
    assert "availability/page-fast could not be evaluated" in plan.warnings[0]
    # Data that says the burn stopped resolves it.
    ok = _eval(burning(_1h=0.02, _5m=0.0001), _quiet_rules(), _deg(0.18, 0.18))
    assert ok.unknown == []
    plan = decide(T0 + timedelta(minutes=2), ok.alerts, sim.states, d, unknown=ok.unknown)
    assert [n.kind for n in plan.notices] == ["resolved"]


def test_a_burning_long_window_with_a_silent_short_one_is_no_data_not_ok() -> None:
    """Regression: the service went dark mid-burn (1h burning 20x, no requests in the last 5
    minutes): the SLO was 'ok' with no alert, and stayed so while the traffic was gone (no
    no-data alert either). It cannot be said ok: 'no data', naming the pair."""
    d = definitions()
    dark = burning(_1h=0.02)
    dark.total["5m"], dark.good["5m"] = 0.0, 0.0
    ev = evaluate(d, {"availability": dark}, _quiet_rules(), _deg(0.18, 0.18), T0)
    status = {s.name: s for s in ev.statuses}["availability"]
    assert status.status == "no data"
    assert "page-fast: 20.0x over 1h" in status.detail and "none over 5m" in status.detail
    later = evaluate(
        d,
        {"availability": dark},
        _quiet_rules(),
        _deg(0.18, 0.18),
        T0 + timedelta(minutes=10),
        ev.no_data_since,
    )
    assert [a.key for a in later.alerts] == ["availability/no-data"]
    # A quiet long window with a silent short one is ok (nothing burning to say).
    idle = burning()
    idle.total["5m"], idle.good["5m"] = 0.0, 0.0
    ev = evaluate(d, {"availability": idle}, _quiet_rules(), _deg(0.18, 0.18), T0)
    assert {s.name: s for s in ev.statuses}["availability"].status == "ok"
