"""Cache warm-up I/O: values fetched from the application over HTTP (httpx, bounded concurrency,
429 waited out per its Retry-After, 5xx and timeouts retried with backoff and jitter, other 4xx
and any redirect failing that key at once: what a redirect leads to, a login page, is not the
key's value; nor is any other answer than a 200: a 204 has none, a 202 a status), or keys
and values computed by a read-only PostgreSQL query; written to Redis with a TTL each,
pipelined (on a cluster, a pipeline that routes each key)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg.rows import tuple_row

from blocks import PostgresTarget, RedisTarget
from perfops.errors import ConfigurationError, ConnectionFailed
from tasks.cache_keys import connected
from tasks.cdn import backoff, retry_after
from tasks.postgres.server import connect

HTTP_RETRIES = 3
WRITE_BATCH = 500


@dataclass
class Fetched:
    """Values fetched (key -> body), failures (key -> why), 429s waited out."""

    values: dict[str, bytes] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    rate_limited: int = 0


def _fetch_one(
    client: httpx.Client, url: str, sleep: Callable[[float], None]
) -> tuple[bytes | None, str | None, int]:
    limited = 0
    for attempt in range(HTTP_RETRIES + 1):
        try:
            response = client.get(url)
        except httpx.TransportError as exc:
            if attempt == HTTP_RETRIES:
                return None, f"{type(exc).__name__}: {exc}", limited
            sleep(backoff(attempt))
            continue
        if response.status_code == 429 and attempt < HTTP_RETRIES:
            limited += 1
            sleep(retry_after(response) or backoff(attempt))
            continue
        if response.status_code >= 500 and attempt < HTTP_RETRIES:
            sleep(backoff(attempt))
            continue
        if response.is_redirect:  # a login page (SSO) or another resource: never the value
            where = response.headers.get("Location", "?")
            return (
                None,
                f"HTTP {response.status_code} from {url} redirects to {where}: not followed "
                "(give the URL that answers with the value)",
                limited,
            )
        if response.status_code >= 400:
            return None, f"HTTP {response.status_code} from {url}", limited
        if response.status_code != 200:  # 204 nothing to cache, 202 a status: not the value
            return (
                None,
                f"HTTP {response.status_code} from {url}: not a value (only a 200 answer is "
                "cached)",
                limited,
            )
        return response.content, None, limited
    return None, "retries exhausted", limited  # pragma: no cover - the loop always returns


@task(name="fetch_cache_values", cache_policy=NO_CACHE)
def fetch_values(urls: dict[str, str], concurrency: int, timeout_s: float = 10.0) -> Fetched:
    """GET each URL (key -> URL) with at most `concurrency` requests in flight."""
    out = Fetched()
    with (
        httpx.Client(timeout=timeout_s, follow_redirects=False) as client,
        ThreadPoolExecutor(max_workers=concurrency) as pool,
    ):
        results = pool.map(
            lambda item: (item[0], *_fetch_one(client, item[1], time.sleep)), urls.items()
        )
        for key, body, error, limited in results:
            out.rate_limited += limited
            if body is not None:
                out.values[key] = body
            else:
                out.failures[key] = str(error)
    return out


@task(name="query_cache_entries", cache_policy=NO_CACHE)
def query_entries(
    target: PostgresTarget, sql_text: str, statement_timeout_ms: int = 60_000
) -> list[tuple[str, str | None]]:
    """Run `sql_text` read-only: rows of (key) or (key, value). A NULL value stays None (the
    value is then fetched from the warm URL, as for a key alone); a NULL key is refused naming
    its row."""
    with connect(target, statement_timeout_ms=statement_timeout_ms) as conn:
        try:
            conn.execute("set transaction read only")
            # tuples: two unnamed columns would share one name in a dict row
            cursor = conn.cursor(row_factory=tuple_row)
            cursor.execute(sql_text)  # the operator's own query
            rows: list[Any] = cursor.fetchall()
            width = len(cursor.description or [])
        except psycopg.Error as exc:
            raise ConfigurationError(f"the warm-up query failed: {exc}".strip()) from exc
        finally:
            conn.rollback()
    if width not in (1, 2):
        raise ConfigurationError(
            f"the warm-up query must return (key) or (key, value) columns, got {width}"
        )
    out: list[tuple[str, str | None]] = []
    for number, row in enumerate(rows, start=1):
        if row[0] is None:
            raise ConfigurationError(
                f"the warm-up query returned a NULL key in row {number} of {len(rows)}: "
                "every row needs a key (add `where <key column> is not null`)"
            )
        value = None if width == 1 or row[1] is None else str(row[1])
        out.append((str(row[0]), value))
    return out


@task(name="write_cache_values", cache_policy=NO_CACHE)
def write_values(target: RedisTarget, entries: dict[str, bytes], ttls: dict[str, int]) -> int:
    """SET key value EX ttl for each entry, a pipelined batch at a time; returns how many."""
    written = 0
    items = list(entries.items())
    try:
        with connected(target) as conn:
            for i in range(0, len(items), WRITE_BATCH):
                pipe = conn.router.pipeline(transaction=False)
                for key, value in items[i : i + WRITE_BATCH]:
                    pipe.set(key, value, ex=ttls[key])
                written += sum(1 for ok in pipe.execute() if ok)
    except ConnectionFailed:
        raise
    return written
