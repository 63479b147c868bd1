"""warm_cache against a real HTTP application stand-in (429 with Retry-After, a 404) and the
real PostgreSQL and Redis."""

from __future__ import annotations

import json

import pytest

from blocks import PostgresTarget, RedisTarget
from decisions.cache_warmup import ttl_with_jitter
from flows.warm_cache import warm_cache
from perfops.errors import ConfigurationError
from tasks.cache_warmup import query_entries, write_values
from tests.caches.conftest import App, client_for
from tests.records import artifact_rows, failed_run, one_target


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


@pytest.mark.usefixtures("prefect_harness")
def test_a_redirect_fails_its_key_instead_of_caching_where_it_leads(
    app: App, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app behind SSO answers a request without a session with a redirect to its login
    page: following it cached the login page as the key's value."""
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    keys = ["agent:1:config:main", "agent:private:config:main"]
    state = warm_cache(cache="agent_configs", keys=keys, url_template=app.url, return_state=True)
    report, message = failed_run(state)
    assert (report.warmed, report.failed) == (1, 1)
    private_url = app.url.replace("{key}", "agent%3Aprivate%3Aconfig%3Amain")
    assert message == (
        f"1 of 2 keys of agent_configs failed to warm: agent:private:config:main: HTTP 302 from "
        f"{private_url} redirects to /login: not followed (give the URL that answers with the "
        "value)"
    )
    client = client_for(redis_target)
    assert client.get("agent:private:config:main") is None
    assert "/login" not in app.seen


@pytest.mark.usefixtures("prefect_harness")
def test_a_no_content_or_accepted_answer_fails_its_key_instead_of_caching_it(
    app: App, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After workflow_deleted the app has nothing for the key (204) or computes it later
    (202 and a status body): the warm-up cached an empty value, or the status, for 30 min."""
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    keys = ["agent:1:config:main", "agent:deleted:config:main", "agent:pending:config:main"]
    state = warm_cache(cache="agent_configs", keys=keys, url_template=app.url, return_state=True)
    report, _ = failed_run(state)
    assert (report.warmed, report.failed) == (1, 2)
    reasons = {f.key: f.reason for f in report.failures}
    deleted_url = app.url.replace("{key}", "agent%3Adeleted%3Aconfig%3Amain")
    assert reasons["agent:deleted:config:main"] == (
        f"HTTP 204 from {deleted_url}: not a value (only a 200 answer is cached)"
    )
    assert reasons["agent:pending:config:main"].startswith("HTTP 202 from ")
    client = client_for(redis_target)
    assert client.exists("agent:deleted:config:main", "agent:pending:config:main") == 0


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


def test_a_null_value_is_fetched_from_the_url_and_a_null_key_is_refused_naming_its_row(
    pg_target: PostgresTarget,
) -> None:
    rows = query_entries.fn(
        pg_target,
        "select 'workflow:1:definition:v1', null::text union all select 'workflow:2:definition:v1',"
        " 'steps 2' union all select 'workflow:3:definition:v1', 'None'",
    )
    # NULL is None (fetched from the warm URL), never the text "None"; a real "None" stays text
    assert rows == [("workflow:1:definition:v1", None), ("workflow:2:definition:v1", "steps 2"),
                    ("workflow:3:definition:v1", "None")]  # fmt: skip
    for sql_text in ("select 'a:1', 'x' union all select null, 'y'", "select null::text"):
        with pytest.raises(ConfigurationError, match=r"returned a NULL key in row \d+ of"):
            query_entries.fn(pg_target, sql_text)


@pytest.mark.usefixtures("prefect_harness")
def test_a_warm_up_from_sql_fetches_a_null_value_instead_of_writing_none(
    app: App, pg_dsn: str, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    monkeypatch.setenv("PERFOPS_DSN", pg_dsn)
    report = one_target(
        warm_cache, cache="agent_configs", url_template=app.url,
        keys_sql="select 'agent:1:config:main', 'v1' union all "
        "select 'agent:2:config:main', null::text",
    )  # fmt: skip
    assert report.warmed == 2
    client = client_for(redis_target)
    assert client.get("agent:1:config:main") == b"v1"
    assert json.loads(client.get("agent:2:config:main")) == {"key": "agent:2:config:main"}
    assert list(app.seen) == ["agent:2:config:main"]


@pytest.mark.usefixtures("prefect_harness")
def test_keys_that_are_not_the_caches_are_refused_before_anything_is_written(
    app: App, redis_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key of another cache (or perfops' own state) was fetched from this cache's URL and
    written with this cache's TTL: a wrong --cache overwrote other caches' values."""
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_target.url)
    client = client_for(redis_target)
    client.set("user:42:profile:main", b"the user's")
    keys = ["agent:1:config:main", "user:42:profile:main", "perfops:scaling:web:state"]
    with pytest.raises(
        ConfigurationError,
        match=r"2 of 3 keys are not keys of cache agent_configs \(agent:\{agent_id\}:config:\*\): "
        r"user:42:profile:main \(a key of user_profiles\), perfops:scaling:web:state; nothing "
        r"warmed",
    ):
        warm_cache(cache="agent_configs", keys=keys, url_template=app.url)
    assert client.get("user:42:profile:main") == b"the user's"
    assert client.get("agent:1:config:main") is None and app.seen == {}


def test_ttl_jitter_stays_within_bounds() -> None:
    assert ttl_with_jitter(1000, 0.1, lambda: 0.0) == 900
    assert ttl_with_jitter(1000, 0.1, lambda: 1.0) == 1100
    assert ttl_with_jitter(1, 0.5, lambda: 0.0) == 1
