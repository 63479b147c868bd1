"""Save perfops' connection blocks from environment variables (run once per environment).

    PERFOPS_DSN=postgresql://perfops@db:5432/app  python deployments/create_blocks.py postgres
    PERFOPS_PROMETHEUS_URL=https://prom:9090       python deployments/create_blocks.py prometheus
    PERFOPS_REDIS_URL=rediss://cache:6380/0         python deployments/create_blocks.py redis
    PERFOPS_SLACK_TOKEN=xoxb-...                    python deployments/create_blocks.py slack
    PERFOPS_S3_BUCKET=perf-archive                  python deployments/create_blocks.py s3
    PERFOPS_SMTP_HOST=smtp.internal                 python deployments/create_blocks.py email

Each block is saved under the name given by --name, by default one name per system that every
deployment, policy file and doc uses: perfops-postgres, perfops-prometheus, perfops-redis,
perfops-archive (s3: the archive `deployments/partitions.yaml` names as s3-block:perfops-archive),
perfops-slack, perfops-email. Flows take the name as a parameter (postgres_block=
"perfops-postgres", ...) or from PERFOPS_<SYSTEM>_BLOCK. Secrets are read from the environment
only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from blocks.resolve import (
    Resolved,
    resolve_archive,
    resolve_email,
    resolve_metrics,
    resolve_postgres,
    resolve_redis,
    resolve_slack,
)
from perfops.settings import apply_prefect_defaults

RESOLVERS: dict[str, Callable[[], Resolved[Any]]] = {
    "postgres": resolve_postgres,
    "prometheus": resolve_metrics,
    "redis": resolve_redis,
    "s3": resolve_archive,
    "slack": resolve_slack,
    "email": resolve_email,
}
DEFAULT_NAMES = {
    "postgres": "perfops-postgres",
    "prometheus": "perfops-prometheus",
    "redis": "perfops-redis",
    "s3": "perfops-archive",
    "slack": "perfops-slack",
    "email": "perfops-email",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("system", choices=sorted(RESOLVERS), help="which block to save")
    parser.add_argument(
        "--name",
        help="block document name (default: perfops-<system>, perfops-archive for s3)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing block")
    args = parser.parse_args()
    apply_prefect_defaults()
    resolved = RESOLVERS[args.system]()
    if resolved.origin != "environment":
        print(
            f"{args.system}: no PERFOPS_* settings found in the environment "
            f"(would use {resolved.description}); nothing saved",
            file=sys.stderr,
        )
        return 2
    name = args.name or DEFAULT_NAMES[args.system]
    resolved.value.save(name, overwrite=args.overwrite)
    print(f"saved {type(resolved.value).__name__} block {name!r}: {resolved.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
