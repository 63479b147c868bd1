"""The SLA automation: a degradation alert runs the predictive scaling deployment.

    python deployments/sla_automations.py [--deployment scale_predictively/scale_predictively]
                                          [--name perfops-sla-degradation-scales] [--dry-run]

evaluate_slos emits `perfops.sla.breached` on the resource `perfops.sla.degradation.<rule>` when
a degradation rule (20% worse than the same hour last week, deployments/slos.yaml) starts to
fire. This saves a Prefect automation that runs the deployment named by --deployment (the
scaling flow's, `scale_predictively`; whether it only decides or acts is that deployment's own
`dry_run` parameter) on each such event, at most once per 10 minutes. Run it after
`prefect deploy --all`: the automation refers to the deployment by its id, looked up by name
here. Rerunning replaces the automation of the same name (idempotent).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta

from perfops.settings import apply_prefect_defaults

DEFAULT_DEPLOYMENT = "scale_predictively/scale_predictively"
DEFAULT_NAME = "perfops-sla-degradation-scales"
DEGRADATION_RESOURCE = "perfops.sla.degradation.*"


def automation_spec(deployment_id: str, name: str) -> dict[str, object]:
    """The automation as Prefect's API takes it (pure, for review and tests)."""
    return {
        "name": name,
        "description": "A perfops SLA degradation alert fired: run predictive scaling.",
        "enabled": True,
        "trigger": {
            "type": "event",
            "match": {"prefect.resource.id": DEGRADATION_RESOURCE},
            "expect": ["perfops.sla.breached"],
            "posture": "Reactive",
            "threshold": 1,
            "within": timedelta(minutes=10).total_seconds(),
        },
        "actions": [
            {
                "type": "run-deployment",
                "source": "selected",
                "deployment_id": deployment_id,
                "parameters": {},
            }
        ],
    }


async def _save(deployment: str, name: str, dry_run: bool) -> str:
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        found = await client.read_deployment_by_name(deployment)
        spec = automation_spec(str(found.id), name)
        if dry_run:
            return f"would save {spec}"
        for existing in await client.read_automations_by_name(name):
            await client.delete_automation(existing.id)
        automation = Automation.model_validate(spec)
        created = await client.create_automation(automation)
        return f"saved automation {name} ({created}) -> runs {deployment} ({found.id})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", default=DEFAULT_DEPLOYMENT, help="flow/deployment name")
    parser.add_argument("--name", default=DEFAULT_NAME, help="automation name")
    parser.add_argument("--dry-run", action="store_true", help="print, save nothing")
    args = parser.parse_args(argv)
    apply_prefect_defaults()
    try:
        print(asyncio.run(_save(args.deployment, args.name, args.dry_run)))
    except Exception as exc:  # noqa: BLE001 - one line for the operator
        print(
            f"sla_automations: {type(exc).__name__}: {exc} (is PREFECT_API_URL set, and is "
            f"{args.deployment} deployed?)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
