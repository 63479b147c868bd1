"""collect_cache_stats on the private 3-master cluster (INFO counters are server-wide, so not on
the shared Redis): two runs measure the hit ratio between them."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from blocks import RedisTarget
from decisions.cache_stats import StatsReport
from decisions.fleet import FleetReport
from flows.collect_cache_stats import collect_cache_stats
from perfops.errors import report_of
from tasks.cache_stats import STATE_KEY
from tests.caches.conftest import client_for
from tests.records import artifact_rows, failed_run, latest_artifact, one_target, wait_for_event
from tests.servers.ports import free_port
from tests.servers.redis_cluster import (
    REDIS_SERVER,
    restart_private_redis,
    start_private_redis,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_two_runs_measure_the_hit_ratio_and_raise_a_low_ratio_event(
    cluster_target: RedisTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFOPS_REDIS_URL", cluster_target.url)
    since = datetime.now(UTC)
    client = client_for(cluster_target)
    pipe = client.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"user:{i}:profile:p", "x" * 100, ex=3600)
    pipe.execute()
    client.set("legacy:blob", "y" * 2_000_000)  # no TTL, over big_key_bytes
    first = one_target(collect_cache_stats)
    assert first.hit_ratio is None and "first sample" in first.nodes[0].note
    for i in range(30):
        client.get(f"user:{i}:profile:p")  # 30 hits
    for i in range(70):
        client.get(f"user:{i}:missing")  # 70 misses
    second = one_target(collect_cache_stats)
    assert (second.hits, second.misses, second.cluster) == (30, 70, True)
    assert second.hit_ratio == 0.3 and len(second.nodes) == 3
    assert [b.key for b in second.big_keys] == ["legacy:blob"]
    prefixes = {p.prefix: p for p in second.prefixes}
    assert prefixes["user_profiles"].estimated_keys == 300
    assert prefixes["legacy:"].no_ttl == 1
    rows = artifact_rows("perfops-cache-stats")
    assert rows[0]["what"].startswith("node ") and rows[0]["result"] == "hit ratio low"
    event = wait_for_event("perfops.cache.hit_ratio_low", since=since)
    assert "under the target 80%" in event.payload["reason"]
    wait_for_event("perfops.cache.stats_collected", since=since, at_least=1)


def test_a_fleet_run_measures_each_cache_and_the_down_one_fails_alone(
    cluster_target: RedisTarget, redis_target: RedisTarget, tmp_path: Path
) -> None:
    """Caches as fleet targets: the targets with a `redis` block, one child run each (its own
    artifact `perfops-cache-stats-<target>`), the parent's summary, the unreachable one failed
    alone; a target without a redis block is left out."""
    run = uuid.uuid4().hex[:6]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = int(s.getsockname()[1])
    for name, target in {
        "single": redis_target,
        "cluster": cluster_target,
        "down": RedisTarget(url=f"redis://127.0.0.1:{closed}/0"),
    }.items():
        target.save(f"cache-{run}-{name}", overwrite=True)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "targets:\n"
        + "".join(
            f"  - name: {n}-{run}\n    blocks: {{redis: cache-{run}-{n}}}\n"
            for n in ("single", "cluster", "down")
        )
        + f"  - name: db-{run}\n    blocks: {{postgres: nowhere-{run}}}\n",
        encoding="utf-8",
    )
    state = collect_cache_stats(targets="all", fleet_file=str(fleet), return_state=True)
    report, message = failed_run(state)
    assert isinstance(report, FleetReport)
    assert [(t.target, t.result) for t in report.targets] == [
        (f"single-{run}", "done"),
        (f"cluster-{run}", "done"),
        (f"down-{run}", "failed"),
    ]
    assert message.startswith(f"1 of 3 targets failed: down-{run}: ")
    rows = artifact_rows(f"perfops-cache-stats-cluster-{run}")
    assert sum(1 for r in rows if str(r["what"]).startswith("node ")) == 3
    summary = artifact_rows("perfops-cache-stats-fleet")
    assert [r["target"] for r in summary] == [f"{n}-{run}" for n in ("single", "cluster", "down")]


PASSWORD = "s3cretpw-for-the-stats-test"


@pytest.fixture()
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A private redis-server with `requirepass`: its URL carries the password."""
    port = free_port()
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.05)
    yield url
    server.terminate()
    server.wait(timeout=10)


def test_a_password_in_the_redis_url_never_reaches_the_artifact_the_hash_or_the_log(
    redis_with_password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFOPS_REDIS_URL", redis_with_password)
    client = redis.Redis.from_url(redis_with_password)
    client.set("user:1:profile:p", "x", ex=60)
    # what versions before 2026-12-07 left: the node named from the URL, password and all
    client.hset(STATE_KEY, redis_with_password.split("//")[-1], "{}")
    state = collect_cache_stats(return_state=True)
    report = report_of(state.result(raise_on_failure=False))
    assert isinstance(report, StatsReport), report
    port = redis_with_password.rsplit(":", 1)[1].split("/")[0]
    assert [n.node for n in report.nodes] == [f"127.0.0.1:{port}/0"]
    assert client.hkeys(STATE_KEY) == [f"127.0.0.1:{port}/0".encode()]
    artifact = latest_artifact("perfops-cache-stats")
    assert f"127.0.0.1:{port}/0" in artifact and PASSWORD not in artifact
    assert PASSWORD not in json.dumps(report.model_dump())
    logs = ""
    with get_client(sync_client=True) as api:
        deadline = time.monotonic() + 20
        while "127.0.0.1" not in logs and time.monotonic() < deadline:
            only = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
            logs = "\n".join(log.message for log in api.read_logs(only))
            time.sleep(0.3)
    assert "127.0.0.1" in logs and PASSWORD not in logs


def test_a_redis_restarted_since_the_last_sample_is_said_so_even_with_counters_past_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that keeps its keys on disk (the previous sample with them) restarted after a
    sample taken early in its life: by the next run its new counters and uptime had passed the
    old ones, so the deltas mixed two processes' counters into a hit ratio of neither. The
    server's run_id tells."""
    port = free_port()

    servers = [start_private_redis(port, tmp_path)]
    try:
        monkeypatch.setenv("PERFOPS_REDIS_URL", f"redis://127.0.0.1:{port}/0")
        client = redis.Redis(port=port)
        client.set("user:1:profile:p", "x", ex=3600)
        for _ in range(50):
            client.get("user:1:profile:p")
        first = one_target(collect_cache_stats)
        assert "first sample" in first.nodes[0].note
        sampled = json.loads(client.hget(STATE_KEY, first.nodes[0].node) or "{}")  # type: ignore[arg-type]
        restart_private_redis(servers, port, tmp_path)
        client = redis.Redis(port=port)
        for _ in range(400):  # more hits and misses than before the restart
            client.get("user:1:profile:p")
            client.get("user:2:profile:p")
        while int(client.info("server")["uptime_in_seconds"]) <= sampled["uptime_s"]:  # type: ignore[index]
            time.sleep(0.2)
        second = one_target(collect_cache_stats)
        [node] = second.nodes
        assert node.note == "restarted or reset since the last sample"
        assert node.hit_ratio is None and second.hit_ratio is None
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=20)
