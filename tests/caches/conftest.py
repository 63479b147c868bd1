"""Fixtures of the cache tests: the test Redis (db from PERFOPS_TEST_REDIS_URL, flushed), one
3-master Redis Cluster for the session, the CDN purge API stand-in, and the HTTP application
stand-in the warm-up fetches values from (`app`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest
import redis

from blocks import RedisTarget
from blocks.cdn import CdnTarget
from tests.servers.cdn import TOKEN, ZONE, CdnStandIn
from tests.servers.redis_cluster import RedisCluster


@pytest.fixture(scope="session")
def _cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(directory=tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture()
def cluster_target(_cluster_session: RedisCluster) -> RedisTarget:
    _cluster_session.flush()
    return RedisTarget(url=_cluster_session.url)


@pytest.fixture(params=["single", "cluster"])
def cache_target(request: pytest.FixtureRequest) -> RedisTarget:
    """The same test on one Redis server and on the 3-master cluster."""
    if request.param == "cluster":
        target: RedisTarget = request.getfixturevalue("cluster_target")
        return target
    single: RedisTarget = request.getfixturevalue("redis_target")
    return single


def client_for(target: RedisTarget) -> Any:
    with redis.Redis.from_url(target.url) as probe:
        cluster = int(probe.info("cluster").get("cluster_enabled", 0)) == 1
    if cluster:
        return redis.RedisCluster.from_url(target.url)
    return redis.Redis.from_url(target.url)


@pytest.fixture(scope="session")
def _cdn_session() -> Iterator[CdnStandIn]:
    with CdnStandIn(rate=20.0, burst=3) as server:
        yield server


@pytest.fixture()
def cdn(_cdn_session: CdnStandIn) -> CdnStandIn:
    _cdn_session.reset()
    return _cdn_session


@pytest.fixture()
def cdn_target(cdn: CdnStandIn) -> CdnTarget:
    return CdnTarget(
        base_url=cdn.base_url, zone_id=ZONE, api_token=TOKEN, requests_per_second=100, burst=10
    )


class App:
    """GET /values/<key>: 200 with JSON; `gone` keys 404; `limited` keys 429 (Retry-After 1)
    the first time; `private` keys 302 to /login (200, a login page, as an app behind SSO
    answers a request without a session); `deleted` keys 204 (no content), `pending` keys 202
    (a status body). Records the most requests in flight at once (a
    request is in flight until its body is sent)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/login":
                    page = b"<html>sign in</html>"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                key = unquote(self.path.removeprefix("/values/"))
                with app.lock:
                    app.seen[key] = app.seen.get(key, 0) + 1
                    app.in_flight += 1
                    app.most_in_flight = max(app.most_in_flight, app.in_flight)
                    first = app.seen[key] == 1
                threading.Event().wait(0.02)
                status, headers = 200, {}
                if "gone" in key:
                    status = 404
                elif "limited" in key and first:
                    status, headers = 429, {"Retry-After": "1"}
                elif "private" in key:
                    status, headers = 302, {"Location": "/login"}
                body = json.dumps({"key": key}).encode()
                if "deleted" in key:  # nothing to cache: the entity is gone
                    status, body = 204, b""
                elif "pending" in key:  # computed later: the body is a status, not the value
                    status, body = 202, b'{"status": "pending"}'
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # Out of flight before the body goes: once it is sent the client may start its
                # next request before this thread runs again, and would be counted twice.
                with app.lock:
                    app.in_flight -= 1
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/values/{{key}}"


@pytest.fixture()
def app() -> Iterator[App]:
    server = App()
    yield server
    server.server.shutdown()
    server.server.server_close()
