"""The cache policy: the file, what a request drops, the escaping of event values, the safety
rules. No server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from decisions.cache_invalidation import InvalidationReport, Outcome, artifact_rows
from decisions.cache_policy import (
    escape_glob,
    glob_regex,
    is_bare,
    load_policy,
    parse_policy,
    refusal,
    target_for_pattern,
    target_for_tag,
    targets_for_event,
    versions_to_drop,
)
from perfops.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "deployments" / "caches.yaml")


def test_the_shipped_policy_holds_the_platforms_caches() -> None:
    names = {c.name for c in POLICY.caches}
    assert {"agent_configs", "user_sessions", "static_assets", "api_responses"} <= names
    assert {"user_profiles", "workflow_definitions"} <= names
    assert POLICY.cache("api_responses").keep_versions == 2
    assert POLICY.cache("agent_configs").tags == ["agent_type", "version"]
    assert POLICY.settings.max_keys == 100_000


def test_an_event_drops_its_caches_scoped_to_the_id_in_the_payload() -> None:
    targets = targets_for_event(POLICY, "platform.user.updated", {"user_id": 42})
    assert [(t.cache, t.pattern) for t in targets] == [
        ("user_profiles", "user:42:profile:*"),
        ("user_preferences", "user:42:preferences:*"),
    ]
    [only] = targets_for_event(POLICY, "workflow_deleted", {"workflow_id": "w-7"})
    assert only.pattern == "workflow:w-7:definition:*"


def test_a_hostile_payload_value_is_literal_glob_text() -> None:
    [profiles, _] = targets_for_event(POLICY, "user_updated", {"user_id": "*"})
    assert profiles.pattern == r"user:\*:profile:*"
    regex = profiles.regex
    assert re.fullmatch(regex, "user:*:profile:a")
    assert not re.fullmatch(regex, "user:42:profile:a")
    nasty = "a?[b]\\c"
    assert escape_glob(nasty) == "a\\?\\[b\\]\\\\c"
    assert re.fullmatch(glob_regex(escape_glob(nasty) + "*"), nasty + "x")
    assert not re.fullmatch(glob_regex(escape_glob(nasty) + "*"), "aXbc")


def test_a_missing_or_odd_payload_value_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"user_profiles needs 'user_id' in the payload"):
        targets_for_event(POLICY, "profile_changed", {"id": 1})
    with pytest.raises(ConfigurationError, match="must be a string or an integer"):
        targets_for_event(POLICY, "profile_changed", {"user_id": ["1"]})
    with pytest.raises(ConfigurationError, match=r"no event 'nope'.*user_updated"):
        targets_for_event(POLICY, "nope", {})


def test_a_versioned_cache_keeps_its_newest_versions() -> None:
    [t] = targets_for_event(POLICY, "api_released", {})
    assert (t.kind, t.versions_key, t.keep) == ("versions", "cache:versions:api_responses", 2)
    versions = [("v1", 100.0), ("v3", 300.0), ("v2", 200.0), ("v4", 400.0)]
    assert versions_to_drop(versions, 2) == ["v1", "v2"]
    assert versions_to_drop(versions[:2], 2) == []


def test_tags_must_be_declared() -> None:
    t = target_for_tag(POLICY, "user_id=42")
    assert t.tag_key == "tag:user_id:42" and t.kind == "tag"
    with pytest.raises(ConfigurationError, match=r"tag 'colour' is not declared.*user_id"):
        target_for_tag(POLICY, "colour=red")
    with pytest.raises(ConfigurationError, match="NAME=VALUE"):
        target_for_tag(POLICY, "user_id")


def test_bare_patterns_and_too_many_keys_need_force() -> None:
    assert is_bare("*") and is_bare("?*") and is_bare("*:profile:*")
    assert not is_bare("user:*") and not is_bare(r"\*")
    assert "no literal prefix" in str(refusal("x", "*", None, 100, force=False))
    assert refusal("x", "*", None, 100, force=True) is None
    assert "more than max_keys 100" in str(refusal("x", "user:*", 101, 100, force=False))
    assert refusal("x", "user:*", 100, 100, force=False) is None
    assert target_for_pattern(POLICY, "user:42:profile:*").cache == "user_profiles"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "caches:\n  - name: a\n    key: 'a:{id}'\n    ttl: forever\n",
            r"x.yaml line 4, caches\[0\].ttl: .*not a duration",
        ),
        (
            "caches:\n  - name: a\n    key: 'a:{version}'\n    ttl: 1h\n"
            "    invalidation: version\n",
            r"line 2, caches\[0\]: .*needs keep_versions",
        ),
        ("caches:\n  - name: a\n    key: '*'\n    ttl: 1h\n", r"must start with a literal prefix"),
        (
            "caches:\n  - name: a\n    key: 'a:{id}'\n    ttl: 1h\nevents:\n  - name: e\n"
            "    invalidate: [b]\n",
            r"event 'e' invalidates unknown caches or groups: b",
        ),
        (
            "caches:\n  - name: a\n    key: 'a:{id}'\n    ttl: 1h\n    colour: red\n",
            r"line 5, caches\[0\].colour: Extra inputs are not permitted",
        ),
    ],
)
def test_a_wrong_policy_names_the_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_policy(text, "x.yaml")


def test_the_report_says_what_failed_and_leads_rows_with_the_target() -> None:
    report = InvalidationReport(
        request="pattern user:*",
        redis="local",
        cluster=False,
        dry_run=False,
        max_keys=10,
        outcomes=[
            Outcome(target="user_profiles: user:*", result="refused", reason="too many",
                    kind="pattern", matched=11),
            Outcome(target="cdn: 1 files", result="purged", reason="1 request", kind="cdn"),
        ],
    )  # fmt: skip
    assert report.failure == "1 of 2 steps failed: user_profiles: user:*: too many"
    assert list(artifact_rows(report)[0])[:3] == ["target", "result", "reason"]
    assert report.summary.startswith("dropped 0 of 11 keys")


def test_a_request_is_exactly_one_thing_and_a_payload_is_a_json_object() -> None:
    from decisions.cache_policy import parse_payload, resolve_request

    assert parse_payload('{"user_id": 7}') == {"user_id": 7} and parse_payload(None) == {}
    with pytest.raises(ConfigurationError, match="payload must be a JSON object"):
        parse_payload("[1]")
    with pytest.raises(ConfigurationError, match=r"exactly one of .* got pattern, tag"):
        resolve_request(POLICY, None, {}, "a:*", "user_id=1", None)
    request, [t] = resolve_request(POLICY, None, {}, None, None, "api_responses")
    assert request == "old versions of api_responses" and t.kind == "versions"
    with pytest.raises(ConfigurationError, match="user_sessions is not versioned"):
        resolve_request(POLICY, None, {}, None, None, "user_sessions")
