"""The invalidate_cache deployment's trigger parameters, rendered by Prefect's own template
renderer for a platform event with a hostile value, give the request the flow expects."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.server.utilities.user_templates import render_user_template_sync

from decisions.cache_policy import load_policy, parse_payload, resolve_request

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
