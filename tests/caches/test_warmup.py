"""warm_cache against a real HTTP application stand-in (429 with Retry-After, a 404) and the
real PostgreSQL and Redis."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest

from blocks import PostgresTarget, RedisTarget
from decisions.cache_warmup import ttl_with_jitter
from flows.warm_cache import warm_cache
from tasks.cache_warmup import query_entries, write_values
from tests.caches.conftest import client_for
from tests.records import artifact_rows, failed_run


class App:
    """GET /values/<key>: 200 with JSON; `gone` keys 404; `limited` keys 429 (Retry-After 1)
    the first time. Records the most requests in flight at once (a request is in flight until
    its body is sent)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
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
                body = json.dumps({"key": key}).encode()
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


@pytest.mark.usefixtures("prefect_harness")
def test_warm_fetches_with_bounded_concurrency_waits_out_429_and_reports_a_404(
    app: App, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    keys = [f"agent:{i}:config:main" for i in range(40)] + ["agent:limited:config:main",
                                                            "agent:gone:config:main"]  # fmt: skip
    state = warm_cache(cache="agent_configs", keys=keys, url_template=app.url, concurrency=4,
                       return_state=True)  # fmt: skip
    report, message = failed_run(state)
    assert message.startswith("1 of 42 keys of agent_configs failed to warm: agent:gone")
    assert (report.warmed, report.failed, report.rate_limited) == (41, 1, 1)
    assert app.most_in_flight <= 4 and app.seen["agent:limited:config:main"] == 2
    client = client_for(redis_target)
    assert json.loads(client.get("agent:7:config:main")) == {"key": "agent:7:config:main"}
    ttls = [client.ttl(k) for k in keys[:40]]
    assert all(1620 - 2 <= t <= 1980 for t in ttls)  # 30 min +-10%
    assert len(set(ttls)) > 5  # spread, not one expiry for all
    rows = artifact_rows("perfops-cache-warmup")
    gone_url = app.url.replace("{key}", "agent%3Agone%3Aconfig%3Amain")
    assert rows[1] == {"key": "agent:gone:config:main", "result": "failed",
                       "reason": f"HTTP 404 from {gone_url}", "count": 1}  # fmt: skip


def test_values_computed_in_postgresql_are_written_pipelined(
    pg_target: PostgresTarget, redis_target: RedisTarget
) -> None:
    rows = query_entries.fn(
        pg_target,
        "select 'workflow:' || g || ':definition:v1', 'steps ' || g "
        "from generate_series(1, 1200) g",
    )
    assert len(rows) == 1200 and rows[0] == ("workflow:1:definition:v1", "steps 1")
    written = write_values.fn(
        redis_target, {k: str(v).encode() for k, v in rows}, {k: 60 for k, _ in rows}
    )
    assert written == 1200
    assert client_for(redis_target).get("workflow:1200:definition:v1") == b"steps 1200"
    with pytest.raises(Exception, match="must return \\(key\\) or \\(key, value\\)"):
        query_entries.fn(pg_target, "select 1, 2, 3")


def test_ttl_jitter_stays_within_bounds() -> None:
    assert ttl_with_jitter(1000, 0.1, lambda: 0.0) == 900
    assert ttl_with_jitter(1000, 0.1, lambda: 1.0) == 1100
    assert ttl_with_jitter(1, 0.5, lambda: 0.0) == 1
