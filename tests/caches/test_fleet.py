"""invalidate_cache and warm_cache over a fleet of two caches, the local Redis and the private
3-master cluster: one child run per target (named and keyed after it, its events labelled with
it), the parent's summary, the right keys gone and warmed on both and no other touched; and the
`--fleet` option of `perfops cache invalidate` / `perfops cache warm`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blocks import RedisTarget
from decisions.fleet import FleetReport
from flows.collect_cache_stats import collect_cache_stats
from flows.invalidate_cache import invalidate_cache
from flows.warm_cache import warm_cache
from tests.caches.conftest import App, client_for
from tests.caches.test_invalidation import existing, seed
from tests.records import artifact_rows, failed_run, wait_for_events

pytestmark = pytest.mark.usefixtures("prefect_harness")
MINE = ["user:42:profile:main", "user:42:preferences:ui"]
OTHERS = ["user:43:profile:main", "user:420:profile:main", "session:42"]


@pytest.fixture()
def fleet(
    redis_target: RedisTarget, cluster_target: RedisTarget, tmp_path: Path
) -> Iterator[tuple[Path, dict[str, RedisTarget]]]:
    """Two caches saved as blocks and named in a fleet file (with a database target, which
    the cache flows leave out): (the file, target name -> its Redis)."""
    run = uuid.uuid4().hex[:6]
    caches = {f"single-{run}": redis_target, f"cluster-{run}": cluster_target}
    entries = ""
    for name, target in caches.items():
        target.save(f"cache-{name}", overwrite=True)
        entries += f"  - name: {name}\n    blocks: {{redis: cache-{name}}}\n"
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"targets:\n{entries}  - name: db-{run}\n    blocks: {{postgres: nowhere-{run}}}\n",
        encoding="utf-8",
    )
    yield path, caches


def test_an_event_invalidates_every_cache_of_the_fleet_and_a_warm_up_fills_each(
    fleet: tuple[Path, dict[str, RedisTarget]],
) -> None:
    path, caches = fleet
    for target in caches.values():
        seed(target, MINE + OTHERS)
    since = datetime.now(UTC)
    report = invalidate_cache(
        event="platform.user.updated", payload={"user_id": "42"}, apply=True,
        targets="all", fleet_file=str(path),
    )  # fmt: skip
    assert isinstance(report, FleetReport) and report.failure is None, report
    assert [(t.target, t.result) for t in report.targets] == [(n, "done") for n in caches]
    assert all(t.changed.startswith("dropped 2 of 2 keys") for t in report.targets), report
    for name, target in caches.items():
        assert existing(target, MINE + OTHERS) == set(OTHERS), name
        rows = artifact_rows(f"perfops-cache-invalidation-{name}")
        assert [r["result"] for r in rows] == ["dropped", "dropped", "notified"], name
    summary = artifact_rows("perfops-cache-invalidation-fleet")
    assert [(r["target"], r["result"]) for r in summary] == [(n, "done") for n in caches]
    assert all(r["run"] for r in summary)
    events = wait_for_events("perfops.cache.invalidated", since=since, at_least=2)
    assert sorted(e.resource["perfops.target"] for e in events) == sorted(caches)

    app = App()
    try:
        warmed = warm_cache(
            cache="agent_configs", keys=["agent:1:config:main", "agent:2:config:main"],
            url_template=app.url, targets="all", fleet_file=str(path),
        )  # fmt: skip
    finally:
        app.server.shutdown()
        app.server.server_close()
    assert isinstance(warmed, FleetReport) and warmed.failure is None, warmed
    assert [t.changed for t in warmed.targets] == [
        "warmed 2 of 2 keys of agent_configs from urls, 0 failed"
    ] * 2
    for name, target in caches.items():
        value = client_for(target).get("agent:2:config:main")
        assert json.loads(value) == {"key": "agent:2:config:main"}, name
    assert artifact_rows(f"perfops-cache-warmup-{next(iter(caches))}")[0]["result"] == "warmed"
    assert len(artifact_rows("perfops-cache-warmup-fleet")) == 2


def test_cli_fleet_dry_run_counts_on_every_cache_and_refuses_a_single_redis_too(
    fleet: tuple[Path, dict[str, RedisTarget]],
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, caches = fleet
    for target in caches.values():
        seed(target, MINE + OTHERS)
    common = ["--fleet", "all", "--fleet-file", str(path)]
    code = perfops(["cache", "invalidate", "--pattern", "user:42:*", *common, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert [(t["target"], t["result"]) for t in report["targets"]] == [(n, "done") for n in caches]
    assert all("would drop 2 keys" in t["changed"] for t in report["targets"])
    assert report["dry_run"] is True
    for target in caches.values():  # a dry run changes nothing
        assert existing(target, MINE + OTHERS) == set(MINE + OTHERS)

    single = ["--redis-url", next(iter(caches.values())).url]
    assert perfops(["cache", "invalidate", "--pattern", "user:42:*", *common, *single]) == 2
    assert "--fleet runs over the fleet file's blocks" in capsys.readouterr().err
    warm = ["cache", "warm", "--cache", "agent_configs", "--key", "agent:1:config:main"]
    assert perfops([*warm, "--fleet", "nowhere", "--fleet-file", str(path)]) == 2
    assert "'nowhere' is neither a fleet" in capsys.readouterr().err


def test_a_target_whose_block_cannot_be_used_fails_alone_and_is_named(
    redis_target: RedisTarget, tmp_path: Path
) -> None:
    """A block whose URL has a port out of range (ValueError while the parent prepares the
    target's slots) is that target's `not run` row; the other cache is measured and the fleet
    summary is written (it aborted the parent before, naming no target)."""
    run = uuid.uuid4().hex[:6]
    redis_target.save(f"cache-good-{run}", overwrite=True)
    RedisTarget(url="redis://127.0.0.1:99999/1").save(f"cache-bad-{run}", overwrite=True)
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"targets:\n  - {{name: good-{run}, blocks: {{redis: cache-good-{run}}}}}\n"
        f"  - {{name: bad-{run}, blocks: {{redis: cache-bad-{run}}}}}\n",
        encoding="utf-8",
    )
    state = collect_cache_stats(targets="all", fleet_file=str(path), return_state=True)
    report, message = failed_run(state)
    assert isinstance(report, FleetReport)
    assert message.startswith(
        f"1 of 2 targets failed: bad-{run}: cannot prepare its run from its blocks: "
        "ValueError: Port"
    ), message
    assert [(t.target, t.result) for t in report.targets] == [
        (f"good-{run}", "done"),
        (f"bad-{run}", "not run"),
    ]
    rows = artifact_rows("perfops-cache-stats-fleet")
    assert [(r["target"], r["result"]) for r in rows] == [
        (f"good-{run}", "done"),
        (f"bad-{run}", "not run"),
    ]
