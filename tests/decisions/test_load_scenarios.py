"""The load tests file: the shipped example, and errors that name the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from decisions.load_scenarios import (
    LoadTest,
    cap_problems,
    load_fingerprint,
    load_tests,
    parse_tests,
)
from perfops.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = """\
tests:
  - name: t
    duration: 10s
    pattern: {rps: 50}
    scenarios:
      - name: s
        steps:
          - {url: /x}
"""


def test_the_shipped_file_holds_the_platforms_three_endpoints_at_their_rates() -> None:
    tests = load_tests(ROOT / "deployments" / "load_tests.yaml")
    api = tests.get("platform-api")
    assert api.pattern.open_model and api.pattern.rps == 1600
    weights = {sc.steps[0].endpoint: sc.weight for sc in api.scenarios}
    assert weights == {
        "GET /api/v1/agents": 1000,
        "POST /api/v1/agents/execute": 500,
        "POST /api/v1/workflows/run": 100,
    }
    p95 = {c.endpoint: c.p95_ms for c in api.criteria if c.p95_ms}
    assert p95 == {
        "GET /api/v1/agents": 100,
        "POST /api/v1/agents/execute": 200,
        "POST /api/v1/workflows/run": 500,
    }
    assert {t.pattern.kind for t in tests.tests} == {"constant", "step", "spike"}
    assert any(not t.pattern.open_model for t in tests.tests)  # a vus journey with think time


def test_a_wrong_field_names_the_file_the_line_and_the_field() -> None:
    text = MINIMAL.replace("{rps: 50}", "{rps: -5}")
    with pytest.raises(ConfigurationError) as caught:
        parse_tests(text, "load.yaml")
    assert "load.yaml line 4, tests[0].pattern.rps: Input should be greater than 0" in str(
        caught.value
    )


def test_an_assertion_field_is_named_as_written_in_the_file() -> None:
    text = MINIMAL.replace("{url: /x}", "{url: /x, assert: {status: [999]}}")
    with pytest.raises(ConfigurationError) as caught:
        parse_tests(text, "f.yaml")
    message = str(caught.value)
    assert "line 8" in message and "steps[0].assert.status" in message
    assert "not HTTP status codes: [999]" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("{rps: 50}", "give exactly one of rps (open model) or vus"),
        ("duration: 10s", "must be shorter than duration"),
        ("{url: /x}", "credentials do not belong in the file"),
        ("{url: /x}", "criteria name endpoints no step calls"),
    ],
)
def test_refusals_say_what_is_wrong(change: str, expected: str) -> None:
    replacement = {
        "give exactly one of rps (open model) or vus": "{rps: 50, vus: 3}",
        "must be shorter than duration": "duration: 10s\n    ramp_up: 6s\n    ramp_down: 4s",
        "credentials do not belong in the file": "{url: /x, headers: {Authorization: x}}",
        "criteria name endpoints no step calls": "{url: /x}\n    criteria: [{endpoint: GET /y}]",
    }[expected]
    with pytest.raises(ConfigurationError) as caught:
        parse_tests(MINIMAL.replace(change, replacement))
    assert expected in str(caught.value)


def test_an_unknown_test_name_lists_the_defined_ones() -> None:
    with pytest.raises(ConfigurationError, match="no load test named 'nope'; defined: t"):
        parse_tests(MINIMAL).get("nope")


def test_caps_refuse_a_test_asking_more_than_the_target_allows() -> None:
    test = parse_tests(MINIMAL.replace("{rps: 50}", "{rps: 5000}")).tests[0]
    problems = cap_problems(test, max_rps=1000, max_connections=100, max_duration_s=5)
    assert problems == [
        "asks 5,000 rps, over the target's cap of 1,000 rps",
        "lasts 10 s, over the target's cap of 5 s",
    ]
    assert cap_problems(test, max_rps=5000, max_connections=1, max_duration_s=10) == []


VUS = """\
tests:
  - name: journey
    duration: 10s
    pattern: {vus: 50}
    scenarios:
      - name: browse
        steps:
          - {url: /a, think_time: THINK_A}
          - {url: /b, think_time: THINK_B}
"""


def vus_test(think_a: str, think_b: str) -> LoadTest:
    return parse_tests(VUS.replace("THINK_A", think_a).replace("THINK_B", think_b)).tests[0]


def test_a_closed_model_without_think_time_is_refused_under_any_rate_cap() -> None:
    test = vus_test("0s", "0s")  # 50 users as fast as the target answers: no cap holds them
    problems = cap_problems(test, max_rps=100, max_connections=100, max_duration_s=60)
    assert problems == [
        "is a closed model of 50 virtual users whose scenario 'browse' has no think time, so its "
        "rate is bounded only by how fast the target answers, not by the target's cap of 100 "
        "rps: give its steps think_time, at least 1 s per pass (50 users x 2 requests per pass "
        "/ 100 rps)"
    ]


def test_a_closed_model_that_could_send_more_than_the_cap_is_refused_with_its_numbers() -> None:
    test = vus_test("250ms", "250ms")  # 50 users x 2 requests per 0.5 s = up to 200 rps
    problems = cap_problems(test, max_rps=100, max_connections=100, max_duration_s=60)
    assert problems == [
        "is a closed model of 50 virtual users that can send up to 200 rps (50 users x 2 "
        "requests per 0.5 s of think time in scenario 'browse'), over the target's cap of 100 "
        "rps: fewer users or at least 1 s of think time per pass"
    ]
    # enough think time per pass: at most 100 rps whatever the target does
    assert (
        cap_problems(vus_test("0s", "1s"), max_rps=100, max_connections=100, max_duration_s=60)
        == []
    )


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            "{url: /x, headers: {Host: api.prod.example.com}}",
            "headers may not set Host (perfops sets Host from the target's URL, the host the "
            "allow-list checked)",
        ),
        ("{url: /x, headers: {content-length: '0'}}", "headers may not set content-length"),
        ("{url: /x, headers: {Transfer-Encoding: chunked}}", "may not set Transfer-Encoding"),
        ("{url: /x, headers: {Connection: close}}", "headers may not set Connection"),
        (
            "{url: /x, headers: {X-Perfops-Request: '7'}}",
            "headers may not set X-Perfops-Request (perfops numbers every request itself)",
        ),
        (
            '{url: /x, headers: {X-Team: "perf\\r\\nHost: api.prod.example.com"}}',
            "header X-Team's value 'perf\\r\\nHost: api.prod.example.com' holds a character a "
            "header cannot carry (CR, LF",
        ),
        ('{url: /x, headers: {"X-Team\\nHost": a}}', "header name 'X-Team\\nHost' is not a token"),
        (
            '{url: "/x HTTP/1.1\\r\\nHost: api.prod.example.com\\r\\nX: "}',
            "url '/x HTTP/1.1\\r\\nHost: api.prod.example.com\\r\\nX: ' holds ' ' at 2",
        ),
    ],
)
def test_a_step_may_not_set_the_headers_perfops_writes_nor_inject_any(
    step: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_tests(MINIMAL.replace("{url: /x}", step), "load.yaml")
    message = str(caught.value)
    assert "load.yaml line 2, tests[0]: Value error, test t, scenario s, step 1 (" in message
    assert expected in message


def test_ordinary_headers_still_reach_the_step() -> None:
    test = parse_tests(MINIMAL.replace("{url: /x}", "{url: '/x?a=1', headers: {X-Team: perf}}"))
    assert test.tests[0].scenarios[0].steps[0].headers == {"X-Team": "perf"}


def test_the_load_fingerprint_changes_with_what_a_test_sends_not_with_its_words_or_marks() -> None:
    base = load_fingerprint(parse_tests(MINIMAL).get("t"))
    reworded = MINIMAL.replace("duration: 10s", "description: nightly\n    duration: 10s")
    marked = MINIMAL + "    criteria: [{endpoint: GET /x, p95_ms: 100}]\n"
    assert load_fingerprint(parse_tests(reworded).get("t")) == base
    assert load_fingerprint(parse_tests(marked).get("t")) == base
    for sends_else in (MINIMAL.replace("rps: 50", "rps: 80"), MINIMAL.replace("/x", "/y")):
        assert load_fingerprint(parse_tests(sends_else).get("t")) != base
