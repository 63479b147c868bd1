"""The invalidation report's pure parts: the rows of refused, failed and versioned steps, the
L1 and CDN rows, the CDN items gathered once each, and the event's payload."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from decisions.cache_invalidation import (
    InvalidationReport,
    PurgeItems,
    cdn_outcome,
    event_payload,
    failed_outcome,
    l1_outcome,
    outcome_label,
    refused_outcome,
    versions_outcome,
    warm_after,
    warm_keys_wanted,
    with_apply_refusal,
)
from decisions.cache_policy import Target, load_policy, parse_policy, target_for_tag
from perfops.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]

PROFILES = Target(kind="pattern", cache="user_profiles", pattern="user:42:profile:*")
VERSIONS = Target(
    kind="versions", cache="api_responses", pattern="api:{version}:*",
    versions_key="cache:versions:api_responses", keep=2,
)  # fmt: skip


def test_rows_of_refused_failed_and_versioned_steps_say_why() -> None:
    refused = refused_outcome(PROFILES, "*", "no literal prefix")
    assert (refused.target, refused.result, refused.cache) == ("user_profiles: *", "refused",
                                                                "user_profiles")  # fmt: skip
    failed = failed_outcome(PROFILES, "Redis at redis://x failed: refused")
    assert (failed.target, failed.result) == ("user_profiles: user:42:profile:*", "failed")
    known = [("v1", 1.0), ("v2", 2.0), ("v3", 3.0)]
    row = versions_outcome(VERSIONS, known, ["v1"], apply=True)
    assert (row.result, row.reason) == ("dropped", "3 versions, keep the newest 2; older: v1")
    assert versions_outcome(VERSIONS, known[:2], [], apply=True).result == "skipped"
    assert versions_outcome(VERSIONS, known, ["v1"], apply=False).result == "would drop"
    assert with_apply_refusal(failed, None) is failed
    assert with_apply_refusal(failed, "too many").reason.endswith("; --apply: too many")


def test_l1_and_cdn_rows() -> None:
    assert l1_outcome("ch", 3, heard=2).reason == "3 notices, 2 subscribers heard the last"
    assert l1_outcome("ch", 3, error="down").result == "failed"
    purge = PurgeItems()
    purge.add({"cdn_prefixes": ["cdn/static/a1/"], "cdn_urls": []})
    purge.add({"cdn_prefixes": ["cdn/static/a1/", "cdn/static/b2/"]})
    items = purge.items()
    assert items == {"prefixes": ["cdn/static/a1/", "cdn/static/b2/"]}
    assert cdn_outcome({}, apply=True, cdn_block="b") is None
    assert cdn_outcome(items, apply=False, cdn_block=None).result == "would purge"  # type: ignore[union-attr]
    skipped = cdn_outcome(items, apply=True, cdn_block=None)
    assert skipped is not None and skipped.result == "skipped" and skipped.matched == 2
    assert cdn_outcome(items, apply=True, cdn_block="b") is None  # not decided: purge first
    sent = SimpleNamespace(requests=1, items=2, rate_limited=0, server_errors=0, waited_s=0.0,
                           error=None)  # fmt: skip
    done = cdn_outcome(items, apply=True, cdn_block="b", result=sent)
    assert done is not None and (done.result, done.dropped, done.target) == (
        "purged", 2, "cdn: 2 prefixes")  # fmt: skip


def test_the_event_payload_names_what_was_refused_and_failed() -> None:
    report = InvalidationReport(
        request="pattern user:*", redis="r", cluster=False, dry_run=False, max_keys=10,
        outcomes=[refused_outcome(PROFILES, "*", "bare"), failed_outcome(VERSIONS, "down")],
    )  # fmt: skip
    payload = event_payload(report)
    assert payload["refused"] == ["user_profiles: *"]
    assert payload["failed"] == ["api_responses: cache:versions:api_responses"]
    assert payload["caches"] == ["api_responses", "user_profiles"]
    assert outcome_label(report) == "failed"
    assert outcome_label(report.model_copy(update={"dry_run": True})) == "dry-run"


def test_warm_after_invalidation_is_one_proactive_cache_per_event_with_a_warm_url() -> None:
    text = (ROOT / "deployments" / "caches.yaml").read_text()
    both = text.replace(
        "  - name: agent_state\n",
        "  - name: agent_state\n    refresh: proactive\n    warm_after_invalidation: true\n"
        "    warm_url: http://app/{key}\n",
    )
    with pytest.raises(ConfigurationError, match="drops 2 caches with warm_after_invalidation"):
        parse_policy(both)
    no_key = text.replace("https://app.internal/internal/cache/{key}", "https://app.internal/")
    with pytest.raises(ConfigurationError, match="needs \\{key\\}"):
        parse_policy(no_key)


def test_a_tags_warm_up_keeps_only_its_caches_keys_and_a_dry_run_keeps_none() -> None:
    policy = load_policy(ROOT / "deployments" / "caches.yaml")
    tag = target_for_tag(policy, "agent_type=llm")
    assert tag.cache == "agent_configs" and warm_keys_wanted(policy, tag, apply=False) == 0
    assert warm_keys_wanted(policy, tag, apply=True) == 1000
    dropped = failed_outcome(tag, "").model_copy(update={"result": "dropped", "dropped": 3})
    keys = ["agent:1:config:a", "legacy:9", "agent:2:config:b"]
    warm = warm_after(policy, tag, tag.tag_key, dropped, keys, "perfops-redis")
    assert warm is not None and warm.dropped_keys == ["agent:1:config:a", "agent:2:config:b"]
    assert (warm.pattern, warm.dropped, warm.redis_block) == ("tag:agent_type:llm", 3,
                                                              "perfops-redis")  # fmt: skip
    assert warm_after(policy, tag, tag.tag_key, dropped, [], None) is None
