"""collect_cache_stats on the private 3-master cluster (INFO counters are server-wide, so not on
the shared Redis): two runs measure the hit ratio between them."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blocks import RedisTarget
from decisions.fleet import FleetReport
from flows.collect_cache_stats import collect_cache_stats
from tests.caches.conftest import client_for
from tests.records import artifact_rows, failed_run, one_target, wait_for_event

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
