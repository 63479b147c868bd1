"""run_load_test through Prefect against the real local target (127.0.0.1) and a PostgreSQL
database of its own: history, baseline, a regression flagged (Failed, event, artifact), a
target the allow-list refuses, two shares merged (spread asked, but without a run_load_share
deployment they run here; tests/e2e/test_load_spread.py spreads them over two workers), and the
CLI's history."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from blocks import LoadTarget
from decisions.load_baseline import ComparePolicy
from demo.target_server import TargetBehaviour, TargetServer
from flows.run_load_test import run_load_test
from tests.conftest import ADMIN_DSN
from tests.records import artifact_rows, failed_run, wait_for_event

pytestmark = pytest.mark.usefixtures("prefect_harness")

DB = f"perfops_load_test_{os.getpid()}"
TESTS = """\
tests:
  - name: smoke
    duration: 3s
    pattern: {rps: 60}
    scenarios:
      - name: list
        steps: [{url: /api/v1/agents, assert: {status: [200], json: {status: ok}}}]
    criteria:
      - {endpoint: GET /api/v1/agents, p95_ms: 1000, min_rps: 55}
  - name: steady
    duration: 4s
    pattern: {rps: 40}
    scenarios:
      - name: list
        steps: [{url: /api/v1/agents}]
    criteria:
      - {endpoint: GET /api/v1/agents, p95_ms: 200}
  - name: elsewhere
    duration: 1s
    pattern: {rps: 5}
    scenarios:
      - name: away
        steps: [{url: "http://example.com/api"}]
"""
# 4 s runs give 4 one-second windows each (a short sample: a lenient alpha; 4 against 4
# clearly apart give p = 1/70)
LENIENT = ComparePolicy(runs=2, alpha=0.05, min_effect=0.2, min_windows=3)


@pytest.fixture(scope="module")
def history_dsn() -> Iterator[str]:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(DB)))
    yield psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=DB)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DB)))


@pytest.fixture()
def tests_file(tmp_path: Path) -> str:
    path = tmp_path / "load_tests.yaml"
    path.write_text(TESTS)
    return str(path)


@pytest.fixture()
def local(monkeypatch: pytest.MonkeyPatch, history_dsn: str) -> Callable[[TargetServer], None]:
    monkeypatch.setenv("PERFOPS_DSN", history_dsn)

    def point_at(server: TargetServer) -> None:
        monkeypatch.setenv("PERFOPS_LOAD_TARGET_URL", server.url)

    return point_at


def test_a_baseline_then_a_slower_server_is_flagged_with_the_record_kept(
    tests_file: str, local: Callable[[TargetServer], None], history_dsn: str
) -> None:
    with TargetServer(TargetBehaviour(median_ms=10, seed=1)) as server:
        local(server)
        first = run_load_test(name="steady", tests_file=tests_file, baseline=True, compare=LENIENT)
    assert first.passed and first.established_baseline
    # the first baseline: not told to establish one, as it just did
    assert (
        first.baseline == "no earlier baseline to compare with; new baseline established from 1 run"
    )
    assert first.endpoints[1].requests == 160 and first.endpoints[1].p50_ms is not None
    assert 9 <= first.endpoints[1].p50_ms <= 100
    wait_for_event("perfops.load.baseline_established")

    # the same target (base URL) slower: compared with its baseline
    with TargetServer(TargetBehaviour(median_ms=250, seed=2), port=server.port) as slower:
        local(slower)
        state = run_load_test(
            name="steady", tests_file=tests_file, compare=LENIENT, return_state=True
        )
    report, message = failed_run(state)
    assert [c.endpoint for c in report.regressed] == ["all", "GET /api/v1/agents"]
    assert "1 of 2 criteria missed: GET /api/v1/agents p95_ms" in message
    assert "regressed against the baseline: all p95" in message
    event = wait_for_event("perfops.load.regressed")
    assert event.payload["regressions"][0]["baseline_p95_ms"] is not None
    assert event.resource.id == f"perfops.load.127.0.0.1:{slower.port}"
    rows = artifact_rows("perfops-load-steady")
    assert rows[1]["what"] == "endpoint GET /api/v1/agents"
    assert rows[1]["result"] == "regressed"
    with psycopg.connect(history_dsn) as conn:
        kept = conn.execute(
            "select passed, regressed from perfops.load_test_runs order by started_at"
        ).fetchall()
    assert kept == [(True, False), (False, True)]


def test_a_run_against_another_target_is_not_compared_with_this_ones_baseline(
    tests_file: str, local: Callable[[TargetServer], None], history_dsn: str
) -> None:
    with TargetServer(TargetBehaviour(median_ms=5, seed=1)) as fast:
        local(fast)
        first = run_load_test(name="smoke", tests_file=tests_file, baseline=True)
    assert first.established_baseline
    with TargetServer(TargetBehaviour(median_ms=60, seed=2)) as elsewhere:  # another system
        local(elsewhere)
        other = run_load_test(name="smoke", tests_file=tests_file, baseline=True)
    # not judged against the first target's baseline (it would have "regressed")
    assert other.regressed == [] and other.baseline is not None
    assert other.baseline.startswith("no earlier baseline to compare with")
    assert other.established_baseline  # from its own runs only: one run
    with psycopg.connect(history_dsn) as conn:
        kept = conn.execute(
            "select target, baseline->'run_ids' from perfops.load_test_baselines "
            "where test = 'smoke' order by established_at"
        ).fetchall()
    assert kept == [(fast.url, [first.run_id]), (elsewhere.url, [other.run_id])]


def test_a_host_outside_the_allow_list_is_refused_before_any_request(
    tests_file: str, local: Callable[[TargetServer], None]
) -> None:
    with TargetServer() as server:
        LoadTarget(base_url=server.url).save("perfops-load-test-refuse", overwrite=True)
        state = run_load_test(
            name="elsewhere",
            tests_file=tests_file,
            target_block="perfops-load-test-refuse",
            keep_history=False,
            return_state=True,
        )
        assert server.log is not None and server.log.numbers == []
    assert state.is_failed()
    assert "host 'example.com' is not in the load target's allow-list" in str(
        state.result(raise_on_failure=False)
    )
    [row] = artifact_rows("perfops-load-elsewhere")
    assert row["result"] == "refused" and "allowed_hosts" in row["reason"]
    wait_for_event("perfops.load.refused")


def test_two_shares_ask_half_each_and_merge_into_one_result(
    tests_file: str, local: Callable[[TargetServer], None]
) -> None:
    # the shares begin tasks.load_shares.START_HERE_S (8 s) after the parent asks: both subflows
    # start within it, even on a busy machine
    with TargetServer(TargetBehaviour(median_ms=5)) as server:
        local(server)
        report = run_load_test(
            name="smoke", tests_file=tests_file, shares=2, spread=True, keep_history=False
        )
        assert server.log is not None
        numbers = sorted(server.log.numbers)
    assert report.shares == 2 and report.asked == 180
    assert numbers == list(range(180))  # each arrival once, from one share or the other
    assert report.endpoints[1].requests == 180
    # no run_load_share deployment on this server: both shares ran here, together
    assert [(r.share, r.where, r.asked) for r in report.share_runs] == [
        (1, "here", 90),
        (2, "here", 90),
    ]
    assert report.apart is None and report.passed
    assert all(r.flow_run_id for r in report.share_runs), report.share_runs
    assert len({r.ran_on for r in report.share_runs}) == 1  # one process: the parent's
    rows = artifact_rows("perfops-load-smoke")
    assert [r["what"] for r in rows[-2:]] == ["share 1 of 2", "share 2 of 2"]


def test_shares_send_to_the_target_the_parent_resolved_not_their_environments(
    tests_file: str, local: Callable[[TargetServer], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    with TargetServer(TargetBehaviour(median_ms=5)) as named, TargetServer() as other:
        local(other)  # the environment names another local server
        LoadTarget(base_url=other.url).save("perfops-load-test-env", overwrite=True)
        monkeypatch.setenv("PERFOPS_LOAD_TARGET_BLOCK", "perfops-load-test-env")
        report = run_load_test(
            name="smoke", tests_file=tests_file, target_url=named.url, shares=2, keep_history=False
        )
        assert named.log is not None and other.log is not None
        assert len(named.log.numbers) == 180 and other.log.numbers == []
    assert report.target == named.url and report.shares == 2


def test_a_share_whose_target_differs_from_the_parents_sends_nothing(
    tests_file: str, local: Callable[[TargetServer], None]
) -> None:
    import time

    from flows.run_load_share import run_load_share

    with TargetServer() as here, TargetServer() as checked:
        state = run_load_share(
            name="smoke",
            share=1,
            shares=2,
            start_at_unix=time.time() + 1,
            tests_file=tests_file,
            target_url=here.url,
            base_url=checked.url,
            return_state=True,
        )
        assert here.log is not None and here.log.numbers == []
    assert state.is_failed()
    assert (
        f"share 2 of 2 of load test smoke: the target resolved here is {here.url}, not "
        f"{checked.url} that the parent checked"
    ) in str(state.result(raise_on_failure=False))


def test_the_command_lines_target_url_wins_over_the_environments_block(
    perfops: Callable[[list[str]], int],
    tests_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with TargetServer(TargetBehaviour(median_ms=5)) as named, TargetServer() as other:
        LoadTarget(base_url=other.url).save("perfops-load-test-env", overwrite=True)
        monkeypatch.setenv("PERFOPS_LOAD_TARGET_BLOCK", "perfops-load-test-env")
        args = ["load", "run", "smoke", "--tests-file", tests_file, "--no-history", "--json"]
        assert perfops([*args, "--target-url", named.url]) == 0
        assert named.log is not None and other.log is not None
        assert len(named.log.numbers) == 180 and other.log.numbers == []
        # both named on the command line: refused, nothing sent
        code = perfops([*args, "--target-url", named.url, "--target-block", "x"])
        assert code != 0 and len(named.log.numbers) == 180


def test_two_load_tests_of_one_target_never_overlap(
    local: Callable[[TargetServer], None],
    tests_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A load test from the command line while the nightly one runs (the deployment's
    concurrency limit holds only its own runs) measured both loads: it waits for the target's
    slot instead, and past the wait sends nothing, saying why."""
    import threading

    from prefect.concurrency.sync import concurrency

    from decisions.fleet import load_target_limit
    from tasks import fleet_runs

    monkeypatch.setattr(fleet_runs, "SLOT_TIMEOUT_S", 2.0)
    with TargetServer(TargetBehaviour(median_ms=2)) as server:
        local(server)
        limit = load_target_limit(server.url)
        fleet_runs.ensure_limits({limit: 1})
        holding, done = threading.Event(), threading.Event()

        def other_load_test() -> None:
            with concurrency([limit], occupy=1, strict=True):
                holding.set()
                done.wait(60)

        thread = threading.Thread(target=other_load_test)
        thread.start()
        try:
            assert holding.wait(30)
            state = run_load_test(name="smoke", tests_file=tests_file, return_state=True)
        finally:
            done.set()
            thread.join()
        served = len(server.log.numbers) if server.log else 0
    assert state.is_failed() and served == 0
    assert f"no slot of {limit} within 2 s: another load test kept sending to this target" in (
        state.message or ""
    )


def test_a_run_whose_load_was_not_measured_says_so_in_an_event() -> None:
    from prefect import flow

    from tasks.load_records import publish_unmeasured

    reason = "load test smoke: share 2 (run r2) ended Crashed with no result"

    @flow(name="publish_unmeasured_here")
    def unmeasured() -> None:
        publish_unmeasured("smoke", "http://127.0.0.1:8089", reason)

    unmeasured()
    event = wait_for_event("perfops.load.failed", where=lambda e: e.payload["reason"] == reason)
    assert event.payload == {"test": "smoke", "reason": reason}
    assert event.resource.id == "perfops.load.127.0.0.1:8089"
    assert event.resource.get("perfops.test") == "smoke"
    [row] = artifact_rows("perfops-load-smoke")
    assert (row["result"], row["reason"]) == ("failed", reason)


def test_history_lists_runs_newest_first(
    perfops: Callable[[list[str]], int],
    history_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert perfops(["load", "history", "steady", "--dsn", history_dsn, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["regressed"] for r in runs][:2] == [True, False]
    assert perfops(["load", "run", "nope", "--tests-file", "deployments/load_tests.yaml"]) == 2
    assert "no load test named 'nope'; defined: platform-api" in capsys.readouterr().err


RESHAPED = """\
tests:
  - name: reshaped
    duration: 4s
    pattern: {rps: %d}
    scenarios:
      - name: list
        steps: [{url: /api/v1/agents}]
    criteria:
      - {endpoint: GET /api/v1/agents, p95_ms: 2000}
"""


def test_a_baseline_of_another_definition_of_the_test_is_not_compared_nor_mixed_in(
    tmp_path: Path, local: Callable[[TargetServer], None], history_dsn: str
) -> None:
    """The tests file edited (the same test name, another load): the runs are no longer
    comparable with the baseline of the old definition, and a new baseline is made from the
    new definition's runs only."""
    before, after = tmp_path / "before.yaml", tmp_path / "after.yaml"
    before.write_text(RESHAPED % 40)
    after.write_text(RESHAPED % 20)
    with TargetServer(TargetBehaviour(median_ms=10, seed=1)) as server:
        local(server)
        first = run_load_test(
            name="reshaped", tests_file=str(before), baseline=True, compare=LENIENT
        )
    assert first.established_baseline
    with TargetServer(TargetBehaviour(median_ms=250, seed=2), port=server.port) as slower:
        local(slower)
        other = run_load_test(
            name="reshaped", tests_file=str(after), baseline=True, compare=LENIENT
        )
    # not judged against the other definition's baseline (it would have "regressed")
    assert other.regressed == [] and other.comparisons == []
    assert other.baseline is not None
    assert other.baseline.startswith(
        "not compared: the newest baseline of reshaped against this target was made from "
        "another definition of the test"
    ), other.baseline
    assert other.baseline.endswith("new baseline established from 1 run")
    with psycopg.connect(history_dsn) as conn:
        kept = conn.execute(
            "select baseline->'run_ids' from perfops.load_test_baselines "
            "where test = 'reshaped' order by established_at"
        ).fetchall()
    assert kept == [([first.run_id],), ([other.run_id],)]
