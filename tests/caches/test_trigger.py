"""The cache deployments' trigger parameters, rendered by Prefect's own template renderer: a
platform event with a hostile value gives the invalidation the flow expects; an invalidation of
a proactively refreshed cache gives a warm-up of the keys it dropped, and one of a lazily
refreshed cache (user_sessions) none."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml
from prefect.events.schemas.events import ReceivedEvent, ResourceSpecification
from prefect.server.events.actions import RunDeployment
from prefect.server.utilities.user_templates import render_user_template_sync
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate
from prefect.utilities.schema_tools.validation import validate

from decisions.cache_invalidation import (
    InvalidationReport,
    Outcome,
    event_labels,
    event_payload,
    warm_after,
)
from decisions.cache_policy import load_policy, parse_payload, parse_policy, resolve_request
from flows.warm_cache import warm_cache
from perfops.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


def test_a_platform_event_renders_to_an_escaped_invalidation() -> None:
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [deployment] = [d for d in project["deployments"] if d["name"] == "invalidate_cache"]
    parameters = deployment["triggers"][0]["parameters"]
    context = {"event": {"event": "platform.user.updated", "payload": {"user_id": "4*2'\""}}}
    event = render_user_template_sync(parameters["event"], context)
    payload = render_user_template_sync(parameters["payload"], context)
    assert event == "platform.user.updated"
    policy = load_policy(ROOT / "deployments" / "caches.yaml")
    _, targets = resolve_request(policy, event, parse_payload(payload), None, None, None)
    assert [t.pattern for t in targets] == [
        "user:4\\*2'\":profile:*",
        "user:4\\*2'\":preferences:*",
    ]


def _warm_trigger() -> tuple[dict[str, Any], dict[str, Any]]:
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [deployment] = [d for d in project["deployments"] if d["name"] == "warm_cache"]
    [trigger] = deployment["triggers"]
    return deployment, trigger


def _invalidated(report: InvalidationReport) -> ReceivedEvent:
    """The perfops.cache.invalidated event invalidate_cache emits for `report`, as the server
    receives it."""
    return ReceivedEvent(
        occurred=datetime.now(UTC),
        event="perfops.cache.invalidated",
        resource={"prefect.resource.id": "perfops.redis.127.0.0.1:6379/0",
                  **event_labels(report)},
        payload=event_payload(report),
        id=uuid4(),
        received=datetime.now(UTC),
    )  # fmt: skip


def _rendered(trigger: dict[str, Any], event: ReceivedEvent) -> dict[str, Any]:
    """The trigger's parameters as the server's RunDeployment action renders them (Prefect
    3.9 wraps a single-expression template so the value keeps its type)."""
    parameters = copy.deepcopy(trigger["parameters"])
    RunDeployment._upgrade_v1_templates(parameters)
    context = HydrationContext(raise_on_error=True, render_jinja=True,
                               jinja_context={"event": event})  # fmt: skip
    rendered: dict[str, Any] = hydrate(parameters, context)
    return rendered


def test_an_invalidation_of_a_proactive_cache_renders_to_a_warm_up_of_its_keys() -> None:
    deployment, trigger = _warm_trigger()
    policy = load_policy(ROOT / "deployments" / "caches.yaml")
    assert trigger["expect"] == ["perfops.cache.invalidated"]
    _, [config, state] = resolve_request(
        policy, "platform.agent.updated", {"agent_id": "7"}, None, None, None
    )
    dropped = Outcome(target="agent_configs: agent:7:config:*", result="dropped", reason="",
                      kind="pattern", cache="agent_configs", matched=2, dropped=2)  # fmt: skip
    keys = ["agent:7:config:main", "agent:7:config:tools"]
    warm = warm_after(policy, config, config.pattern, dropped, keys, "perfops-redis-eu")
    assert warm_after(policy, state, state.pattern, dropped, keys, None) is None  # lazy
    report = InvalidationReport(
        request="event agent_updated", redis="r", cluster=False, dry_run=False, max_keys=10,
        outcomes=[dropped], warm=warm,
    )  # fmt: skip
    event = _invalidated(report)
    assert ResourceSpecification(trigger["match"]).matches(event.resource)
    parameters = _rendered(trigger, event)
    assert parameters["cache"] == "agent_configs"
    assert parameters["keys"] == keys  # a list, not its text
    assert parameters["redis_block"] == "perfops-redis-eu"
    # what the server runs: the deployment's parameters under the trigger's, which the
    # parameter schema accepts (enforce_parameter_schema) and which warm from the warm_url
    run = {**deployment["parameters"], **parameters}
    assert (run["keys_sql"], run["urls"], run["url_template"]) == (None, None, None)
    schema = parameter_schema(warm_cache).model_dump_for_openapi()
    assert validate(run, schema, allow_none_with_default=True) == []
    assert policy.cache(run["cache"]).warm_url == "https://app.internal/internal/cache/{key}"


def test_sessions_dry_runs_and_lazy_caches_start_no_warm_up() -> None:
    _, trigger = _warm_trigger()
    policy = load_policy(ROOT / "deployments" / "caches.yaml")
    [session] = resolve_request(policy, None, {}, "session:abc", None, None)[1]
    assert session.cache == "user_sessions"
    dropped = Outcome(target="user_sessions: session:abc", result="dropped", reason="",
                      kind="pattern", cache="user_sessions", matched=1, dropped=1)  # fmt: skip
    assert warm_after(policy, session, "session:abc", dropped, ["session:abc"], None) is None
    report = InvalidationReport(request="pattern session:abc", redis="r", cluster=False,
                                dry_run=False, max_keys=10, outcomes=[dropped])  # fmt: skip
    assert not ResourceSpecification(trigger["match"]).matches(_invalidated(report).resource)
    # a lazily refreshed cache cannot ask for a warm-up: the policy refuses it, naming the line
    text = (ROOT / "deployments" / "caches.yaml").read_text()
    lazy = text.replace(
        "    invalidation: ttl\n",
        "    invalidation: ttl\n    warm_after_invalidation: true\n    warm_url: http://app/{key}\n",
    )
    with pytest.raises(ConfigurationError, match=r"line \d+, caches\[2\].*refresh: proactive"):
        parse_policy(lazy)
