"""CDN purge through a Cloudflare-compatible API (`POST /zones/{zone}/purge_cache`).

At most `MAX_ITEMS` (100) URLs, tags or prefixes a request; requests paced by a token bucket
(the block's `requests_per_second` and `burst`); a 429 waits its `Retry-After` (seconds) before
the same request is sent again; a 5xx, a timeout or a dropped connection is retried with
exponential backoff and full jitter; any other 4xx (bad token, unknown zone, too many items)
fails at once with the API's own error text. A purge is idempotent, so re-sending is safe.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.cdn import CdnTarget
from perfops.errors import ConnectionFailed
from perfops.redaction import redact

MAX_ITEMS = 100
Kind = Literal["files", "tags", "prefixes"]
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 300.0


class TokenBucket:
    """`rate` tokens a second up to `burst`; `take()` waits for one. Clock and sleep injected."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate, self.burst = rate, float(burst)
        self.clock, self.sleep = clock, sleep
        self.tokens = float(burst)
        self.updated = clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take a token, waiting for it if needed; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            wait = 0.0
            if self.tokens < 1:
                wait = (1 - self.tokens) / self.rate
                self.sleep(wait)
                self.tokens = 1.0
                self.updated = self.clock()
            self.tokens -= 1
            return wait


def backoff(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Full jitter: a random wait up to base * 2**attempt (capped)."""
    return rng() * min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(RETRY_AFTER_CAP_S, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


@dataclass
class PurgeResult:
    """What a purge sent: requests that succeeded, items purged, 429s and 5xx retried, seconds
    waited on the bucket and on Retry-After, and the error that stopped it (None when done)."""

    requests: int = 0
    items: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    waited_s: float = 0.0
    error: str | None = None
    ids: list[str] = field(default_factory=list)


def chunks(items: list[str], size: int = MAX_ITEMS) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _api_error(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
        errors = body.get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or str(body)
    except (ValueError, AttributeError):
        text = response.text[:200]
    return f"HTTP {response.status_code}: {text}"


def send_purge(
    cdn: CdnTarget,
    client: httpx.Client,
    bucket: TokenBucket,
    kind: Kind,
    items: list[str],
    result: PurgeResult,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """One purge request of at most MAX_ITEMS items, retried as the module says."""
    if len(items) > MAX_ITEMS:
        raise ValueError(f"at most {MAX_ITEMS} items per purge request, got {len(items)}")
    attempt = 0
    while True:
        result.waited_s += bucket.take()
        try:
            response = client.post(cdn.purge_path(), json={kind: items})
        except httpx.TransportError as exc:  # timeouts, refused or dropped connections
            if attempt >= cdn.retries:
                raise ConnectionFailed(f"CDN purge at {cdn.base_url} failed: {exc}") from exc
            wait = backoff(attempt)
        else:
            status = response.status_code
            if status == 429 and attempt < cdn.retries:
                result.rate_limited += 1
                wait = retry_after(response) or backoff(attempt)
            elif status >= 500 and attempt < cdn.retries:
                result.server_errors += 1
                wait = backoff(attempt)
            elif status == 429 or status >= 500:  # transient, but past the retries
                raise ConnectionFailed(
                    f"CDN purge of {len(items)} {kind} in zone {cdn.zone_id} "
                    + ("still rate-limited" if status == 429 else "unavailable")
                    + f" after {attempt} retries: "
                    + redact(_api_error(response))
                    + "; a later run retries it"
                )
            elif status >= 400:
                raise ConnectionFailed(
                    f"CDN purge of {len(items)} {kind} in zone {cdn.zone_id} refused: "
                    + redact(_api_error(response))
                )
            else:
                try:
                    body = response.json()
                except ValueError:
                    raise ConnectionFailed(
                        f"CDN purge in zone {cdn.zone_id} answered HTTP {status} without a "
                        f"JSON body: {redact(response.text[:200])!r}; is base_url "
                        f"{cdn.base_url} a Cloudflare-compatible purge API?"
                    ) from None
                if not isinstance(body, dict) or not body.get("success"):
                    raise ConnectionFailed(
                        f"CDN purge in zone {cdn.zone_id} failed: {_api_error(response)}"
                    )
                result.requests += 1
                result.items += len(items)
                result.ids.append(str((body.get("result") or {}).get("id", "")))
                return
        result.waited_s += wait
        sleep(wait)
        attempt += 1


@task(name="purge_cdn", cache_policy=NO_CACHE)
def purge_cdn(cdn: CdnTarget, purge: dict[str, list[str]]) -> PurgeResult:
    """Purge `files`, `tags` and `prefixes` (each list in requests of at most 100), paced by the
    block's token bucket. Stops at the first request that fails for good, saying which."""
    result = PurgeResult()
    bucket = TokenBucket(cdn.requests_per_second, cdn.burst)
    with cdn.get_client() as client:
        for kind in ("files", "tags", "prefixes"):
            for part in chunks(sorted(set(purge.get(kind) or []))):
                try:
                    send_purge(cdn, client, bucket, kind, part, result)
                except ConnectionFailed as exc:
                    result.error = str(exc)
                    return result
    return result
