"""The CDN target block: a zone behind a Cloudflare-compatible purge API."""

from __future__ import annotations

import httpx
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from perfops.redaction import register_secret

CLOUDFLARE_API = "https://api.cloudflare.com/client/v4"


class CdnTarget(Block):
    """A CDN zone perfops purges when a cache with an `l3` layer is invalidated:
    `POST {base_url}/zones/{zone_id}/purge_cache` with `files`, `tags` or `prefixes` (at most
    100 items a request), `Authorization: Bearer <token>`. Requests are paced by a token bucket
    (`requests_per_second`, `burst`); a 429 waits its `Retry-After`, a 5xx or a timeout is
    retried with backoff and jitter, any other 4xx fails at once.

    Example:
        Load a saved target and get a client:
        ```python
        from blocks.cdn import CdnTarget

        cdn = CdnTarget.load("BLOCK_NAME")
        cdn.get_client().post(cdn.purge_path(), json={"files": ["https://cdn.example.com/a.js"]})
        ```
    """

    _block_type_name = "perfops CDN Target"
    _block_type_slug = "perfops-cdn-target"
    _description = "A CDN zone and an API token allowed to purge it (Cloudflare-compatible API)."

    base_url: str = Field(
        default=CLOUDFLARE_API,
        description="API base URL, e.g. https://api.cloudflare.com/client/v4.",
    )
    zone_id: str = Field(description="The zone whose cache is purged.", min_length=1)
    api_token: SecretStr = Field(description="API token with the Cache Purge permission.")
    requests_per_second: float = Field(
        default=5.0, gt=0, le=1000, description="Token bucket refill rate (purge requests/s)."
    )
    burst: int = Field(default=10, ge=1, le=1000, description="Token bucket size.")
    timeout_s: float = Field(default=30.0, gt=0, le=300, description="Per request timeout.")
    retries: int = Field(default=4, ge=0, le=10, description="Retries of a 429, 5xx or timeout.")

    def purge_path(self) -> str:
        return f"/zones/{self.zone_id}/purge_cache"

    def get_client(self) -> httpx.Client:
        """An httpx client with the bearer token, the base URL and a timeout."""
        token = self.api_token.get_secret_value()
        register_secret(token)
        return httpx.Client(
            base_url=self.base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=self.timeout_s,
        )
