"""Save perfops' connection blocks from environment variables (run once per environment).

    PERFOPS_DSN=postgresql://perfops@db:5432/app  python deployments/create_blocks.py postgres
    PERFOPS_PROMETHEUS_URL=https://prom:9090       python deployments/create_blocks.py prometheus
    PERFOPS_REDIS_URL=rediss://cache:6380/0         python deployments/create_blocks.py redis
    PERFOPS_SLACK_TOKEN=xoxb-...                    python deployments/create_blocks.py slack
    PERFOPS_S3_BUCKET=perf-archive                  python deployments/create_blocks.py s3
    PERFOPS_SMTP_HOST=smtp.internal                 python deployments/create_blocks.py email
    PERFOPS_CDN_ZONE_ID=023e... PERFOPS_CDN_API_TOKEN=...  python deployments/create_blocks.py cdn

Each block is saved under the name given by --name, by default one name per system that every
deployment, policy file and doc uses: perfops-postgres, perfops-prometheus, perfops-redis,
perfops-archive (s3: the archive `deployments/partitions.yaml` names as s3-block:perfops-archive),
perfops-slack, perfops-email, perfops-cdn (a perfops-cdn-target block: PERFOPS_CDN_ZONE_ID,
PERFOPS_CDN_API_TOKEN, optional PERFOPS_CDN_BASE_URL for another Cloudflare-compatible API).
Flows take the name as a parameter (postgres_block="perfops-postgres", cdn_block="perfops-cdn",
...) or from PERFOPS_<SYSTEM>_BLOCK. Secrets are read from the environment only, and never
printed.
"""

from __future__ import annotations

import argparse
import os
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

CDN_VARIABLES = ("PERFOPS_CDN_ZONE_ID", "PERFOPS_CDN_API_TOKEN")


def resolve_cdn() -> Resolved[Any]:
    """The CDN zone from PERFOPS_CDN_ZONE_ID and PERFOPS_CDN_API_TOKEN (a secret), and
    PERFOPS_CDN_BASE_URL when the API is not Cloudflare's; with either missing, nothing to save
    (flows then report the CDN step skipped)."""
    from pydantic import SecretStr

    from blocks.cdn import CLOUDFLARE_API, CdnTarget

    zone, token = (os.environ.get(n, "").strip() for n in CDN_VARIABLES)
    base_url = os.environ.get("PERFOPS_CDN_BASE_URL", "").strip() or CLOUDFLARE_API
    if not zone or not token:
        missing = " and ".join(
            n for n, v in zip(CDN_VARIABLES, (zone, token), strict=True) if not v
        )
        return Resolved("cdn", "embedded default", None, f"no CDN ({missing} unset)")
    target = CdnTarget(base_url=base_url, zone_id=zone, api_token=SecretStr(token))
    return Resolved("cdn", "environment", target, f"zone {zone} at {base_url}")


RESOLVERS: dict[str, Callable[[], Resolved[Any]]] = {
    "postgres": resolve_postgres,
    "prometheus": resolve_metrics,
    "redis": resolve_redis,
    "s3": resolve_archive,
    "slack": resolve_slack,
    "email": resolve_email,
    "cdn": resolve_cdn,
}
DEFAULT_NAMES = {
    "postgres": "perfops-postgres",
    "prometheus": "perfops-prometheus",
    "redis": "perfops-redis",
    "s3": "perfops-archive",
    "slack": "perfops-slack",
    "email": "perfops-email",
    "cdn": "perfops-cdn",
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
