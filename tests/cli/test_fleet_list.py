"""`perfops fleet list` probes each kind of target by what it has: a cache target (a redis block
only) by asking its Redis, on the real Redis, without a Prefect server (the blocks are stubbed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from blocks import RedisTarget
from tests.conftest import REDIS_TEST_URL


def test_a_cache_target_is_probed_through_its_redis(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import blocks.resolve
    import cli.commands.fleet

    saved = {
        "cache-sessions": RedisTarget(url=REDIS_TEST_URL),
        "cache-down": RedisTarget(url="redis://127.0.0.1:1/0"),
    }
    monkeypatch.setattr(cli.commands.fleet, "use_prefect_server", lambda: None)
    monkeypatch.setattr(blocks.resolve, "load_block", lambda _type, name: saved[name])
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "targets:\n"
        "  - {name: sessions, blocks: {redis: cache-sessions}}\n"
        "  - {name: down, blocks: {redis: cache-down}}\n",
        encoding="utf-8",
    )
    assert perfops(["fleet", "list", "--fleet-file", str(fleet), "--json", "--timeout", "2"]) == 1
    captured = capsys.readouterr()
    rows = {t["name"]: t for t in json.loads(captured.out)["targets"]}
    # it said 'UNREACHABLE: no postgres block' for both, and exit 1 for a Redis that answers
    assert rows["sessions"]["reachable"] is True
    assert rows["sessions"]["detail"].startswith("Redis ")
    assert rows["down"]["reachable"] is False
    assert "Redis at redis://127.0.0.1:1/0 failed" in rows["down"]["detail"]
    assert "1 of 2 targets unreachable: down" in captured.err
