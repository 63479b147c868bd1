"""CDN purge against the Cloudflare-compatible stand-in: 100 items a request, the token bucket,
429 + Retry-After, 5xx retried, 4xx (bad token, unknown zone) failing at once. The bucket's
pacing is checked with an injected clock."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from blocks.cdn import CdnTarget
from perfops.redaction import redact
from tasks.cdn import MAX_ITEMS, TokenBucket, purge_cdn
from tests.servers.cdn import TOKEN, ZONE, CdnStandIn


def test_250_urls_go_in_requests_of_at_most_100(cdn: CdnStandIn, cdn_target: CdnTarget) -> None:
    urls = [f"https://cdn.example.com/static/v1/{i}.js" for i in range(250)]
    result = purge_cdn.fn(cdn_target, {"files": urls, "prefixes": ["cdn.example.com/static/v1/"]})
    assert result.error is None and (result.requests, result.items) == (4, 251)
    assert [len(r.body.get("files", [])) for r in cdn.requests[:3]] == [100, 100, 50]
    assert sorted(cdn.purged["files"]) == sorted(urls)
    assert cdn.purged["prefixes"] == ["cdn.example.com/static/v1/"]


def test_the_stand_in_refuses_101_items_like_cloudflare(cdn: CdnStandIn) -> None:
    import httpx

    response = httpx.post(
        f"{cdn.base_url}/zones/{ZONE}/purge_cache",
        json={"files": [f"u{i}" for i in range(MAX_ITEMS + 1)]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 400 and not response.json()["success"]


def test_a_429_waits_its_retry_after() -> None:
    # a client that ignores the server's rate meets its 429s and waits them out; the stand-in
    # refills 1 token a second (burst 3), so the 4th request is refused however slow the
    # machine is (at the session stand-in's 20/s a loaded machine refilled in time)
    with CdnStandIn(rate=1.0, burst=3) as cdn:
        greedy = CdnTarget(
            base_url=cdn.base_url, zone_id=ZONE, api_token=TOKEN, requests_per_second=1000,
            burst=100,
        )  # fmt: skip
        started = time.monotonic()
        result = purge_cdn.fn(greedy, {"tags": [f"user-{i}" for i in range(500)]})
        elapsed = time.monotonic() - started
        statuses = [r.status for r in cdn.requests]
    assert result.error is None and result.requests == 5 and result.items == 500
    assert result.rate_limited >= 1 and 429 in statuses
    assert elapsed >= 1.0  # Retry-After: 1 s was honoured
    assert set(statuses) <= {200, 429}


def test_5xx_is_retried_and_a_bad_token_or_zone_fails_at_once(
    cdn: CdnStandIn, cdn_target: CdnTarget
) -> None:
    cdn.fail_next(503, count=2)
    result = purge_cdn.fn(cdn_target, {"files": ["https://cdn.example.com/a.js"]})
    assert result.error is None and result.server_errors == 2 and result.items == 1
    cdn.reset()
    cdn.fail_next(503, count=cdn_target.retries + 1)  # past the retries: unavailable, not refused
    result = purge_cdn.fn(cdn_target, {"files": ["https://cdn.example.com/a.js"]})
    assert result.error and "unavailable after 4 retries: HTTP 503" in result.error
    assert result.error.endswith("; a later run retries it") and "refused" not in result.error
    cdn.reset()
    wrong = cdn_target.model_copy(update={"api_token": SecretStr("wrong-token-9999")})
    result = purge_cdn.fn(wrong, {"files": ["https://cdn.example.com/a.js"]})
    assert result.error and "HTTP 403" in result.error and "Authentication error" in result.error
    assert len(cdn.requests) == 1  # not retried
    assert "wrong-token-9999" not in redact(result.error)
    elsewhere = cdn_target.model_copy(update={"zone_id": "nope"})
    result = purge_cdn.fn(elsewhere, {"files": ["https://cdn.example.com/a.js"]})
    assert result.error and "HTTP 404" in result.error and "in zone nope" in result.error


def test_the_token_bucket_paces_to_its_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0], sleep=sleep)
    waits = [bucket.take() for _ in range(7)]
    assert waits[:3] == [0, 0, 0]  # the burst
    assert waits[3:] == pytest.approx([0.5, 0.5, 0.5, 0.5])  # then 2 a second
    assert now[0] == pytest.approx(2.0)
