"""run_load_test: one named load test of `deployments/load_tests.yaml` against the target of a
`perfops-load-target` block, judged against its success criteria and its baseline. CLI
`perfops load run NAME`; nightly deployment.

1. The test and the target: the target's allow-list, production flag and caps (rps,
   connections, duration) refuse the test before any request is sent.
2. The load, with an open model (requests on the arrival schedule, latency from the intended
   start): in one generator process, or split into `shares` runs of `run_load_share`
   (flows/run_load_share.py), each asking rate/shares and beginning at the same wall-clock
   time, their HDR histograms merged exactly; with `spread`, shares 2..N are runs of the
   `run_load_share` deployment that other workers of the pool take (tasks/load_shares.py).
   A share aborts when the error rate passes the test's limit.
3. The figures per endpoint and per step, the criteria judged, whether the shares ran
   together, the comparison with the newest baseline of this test against this target
   (Mann-Whitney on per-second p95s and a minimum effect, decisions.load_baseline).
4. History in PostgreSQL (`perfops.load_test_runs`, created by an idempotent migration);
   `baseline=True` then establishes a new baseline from the last good runs.
5. The artifact `perfops-load-<test>` (table), `perfops-load-<test>-chart` (markdown with the
   latency-over-time PNG, also written under <out>/load-tests/), events `perfops.load.tested`,
   `perfops.load.regressed`, `perfops.load.aborted`, `perfops.load.baseline_established`;
   `perfops.load.refused` for a test refused before sending, `perfops.load.failed` for one
   whose load could not be measured.
6. Failed, with the artifact written, when a criterion was missed, the test aborted, the
   shares did not run together, an endpoint regressed, or history could not be written.
"""

from __future__ import annotations

import uuid

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from blocks import LoadTarget
from blocks.resolve import Resolved, resolve_load_target, resolve_postgres
from decisions.fleet import load_target_limit
from decisions.load_baseline import ComparePolicy
from decisions.load_report import LoadTestReport, add_comparison, assemble_report
from decisions.load_results import ShareResult, merge_shares
from decisions.load_scenarios import LoadTest, definition_hash
from decisions.load_shares import ShareRun, identity_problems, share_runs
from flows.run_load_share import run_load_share
from perfops.errors import ConfigurationError, PerfopsError
from perfops.heartbeats import heartbeats
from perfops.redaction import install_log_redaction
from tasks import fleet_runs
from tasks.fleet_runs import hold_slots
from tasks.load_generator import check_test, generate_load, read_test, share_plan
from tasks.load_records import keep_history as record_history
from tasks.load_records import publish_load_run, publish_refusal, publish_unmeasured
from tasks.load_shares import SHARE_DEPLOYMENT, run_shares, share_deployment
from tasks.postgres.load_runs import migrate_load_history, read_load_baseline
from tasks.records import end_run

__all__ = ["run_load_share", "run_load_test"]

MAX_SHARES = 16


def _send(
    test: LoadTest,
    resolved: Resolved[LoadTarget],
    tests_file: str | None,
    shares: int,
    spread: bool,
) -> tuple[ShareResult, list[ShareRun]]:
    """The load sent, in one generator process or in shares; the merged result and, for
    shares, where each ran. Every share resolves the block or local URL this run resolved
    (not its own environment's) and is told the base URL and the test's hash this run
    checked; a share result that differs in either fails the test before anything is merged."""
    target = resolved.value
    if shares == 1:
        return generate_load(share_plan(test, target, 0, 1, None)), []
    deployment = share_deployment() if spread else None
    if spread and deployment is None:
        get_run_logger().info(
            "spread: no %s deployment on this server, so every share runs here", SHARE_DEPLOYMENT
        )

    def here(k: int, start_at: float) -> ShareResult:
        with heartbeats(False):  # the parent's run beats for this process
            child = run_load_share.with_options(
                flow_run_name=f"run_load_share-{test.name}-{k + 1}-of-{shares}"
            )
            state = child(share=k, start_at_unix=start_at, return_state=True, **parameters)
        result = state.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            raise PerfopsError(f"share {k + 1} of {shares} failed: {result}")
        return result

    test_hash = definition_hash(test)
    parameters = {
        "name": test.name,
        "shares": shares,
        "target_block": resolved.name if resolved.origin == "block" else None,
        "target_url": target.base_url if resolved.origin != "block" else None,
        "base_url": target.base_url,
        "test_hash": test_hash,
        "tests_file": tests_file,
    }
    results, where = run_shares(test.name, shares, test.seconds, here, parameters, deployment)
    mixed = identity_problems(results, target.base_url, test_hash)
    if mixed:
        raise PerfopsError(
            f"load test {test.name}: the shares' figures were not merged: " + "; ".join(mixed)
        )
    return merge_shares(results), share_runs(results, where)


@flow(
    name="run_load_test",
    description="Run a named load test (deployments/load_tests.yaml) against an allow-listed "
    "target with an open model; HDR percentiles per endpoint and step, criteria, comparison "
    "with the baseline (perfops.load.regressed), history in PostgreSQL.",
    log_prints=False,
)
def run_load_test(
    name: str,
    target_block: str | None = None,
    target_url: str | None = None,
    postgres_block: str | None = None,
    tests_file: str | None = None,
    baseline: bool = False,
    shares: int = 1,
    spread: bool = False,
    compare: ComparePolicy = ComparePolicy(),  # noqa: B008 - frozen defaults
    keep_history: bool = True,
) -> LoadTestReport:
    """Run load test `name` and judge it.

    Args:
        name: a test of the tests file (`perfops load run --help` lists them).
        target_block: a saved `perfops-load-target` block (allow-list, caps, auth header).
        target_url: instead of a block, a local server's base URL (loopback only). Named
            explicitly, either wins over the environment (PERFOPS_LOAD_TARGET_BLOCK, then
            PERFOPS_LOAD_TARGET_URL); both at once are refused. Shares use what this run
            resolved, never their own environment's.
        postgres_block: where history is kept (`perfops.load_test_runs`); default PERFOPS_DSN,
            else the local demo database.
        tests_file: default PERFOPS_LOAD_TESTS_FILE, else deployments/load_tests.yaml.
        baseline: after this run, establish a new baseline from the last `compare.runs` good
            runs (this one included when good).
        shares: split the load into this many runs of run_load_share (each rate/shares, in its
            own process, beginning together); histograms merged exactly.
        spread: shares 2..N as runs of the `run_load_share` deployment, which any worker of
            its pool takes (other machines); one no worker takes in time runs here. Without
            that deployment on the server, every share runs here.
        compare: the baseline comparison (runs, alpha, min_effect, min_windows).
        keep_history: record the run (and read the baseline) in PostgreSQL.
    """
    install_log_redaction()
    if not 1 <= shares <= MAX_SHARES:
        raise ConfigurationError(f"shares must be 1..{MAX_SHARES}, got {shares}")
    logger = get_run_logger()
    test = read_test(name, tests_file)
    resolved = resolve_load_target(target_block, url=target_url)
    target = resolved.value
    try:
        check_test(test, target, shares)
    except ConfigurationError as exc:  # refused before any request: the record says why
        publish_refusal(test.name, target.base_url, str(exc))
        raise
    run_id = str(flow_run.get_id() or uuid.uuid4())
    history = resolve_postgres(postgres_block).value if keep_history else None
    previous = None
    if history is not None:
        migrate_load_history(history)
        previous = read_load_baseline(history, test.name, target.base_url)
    logger.info(
        "%s against %s: %s %s for %.0f s in %d share(s)%s",
        test.name,
        resolved.description,
        test.pattern.kind,
        f"{test.pattern.rps:g} rps" if test.pattern.open_model else f"{test.pattern.vus} vus",
        test.seconds,
        shares,
        ", spread over the pool's workers" if spread and shares > 1 else "",
    )
    try:  # one load test of a target at a time: a second would measure this one's load too
        with hold_slots(
            {load_target_limit(target.base_url): 1},
            fleet_runs.SLOT_TIMEOUT_S,
            held_by="another load test kept sending to this target",
        ):
            merged, ran = _send(test, resolved, tests_file, shares, spread)
    except PerfopsError as exc:  # a generator or a share failed: the record says which
        publish_unmeasured(test.name, target.base_url, str(exc))
        raise
    report = assemble_report(test, merged, run_id=run_id, target=target.base_url, shares=ran)
    add_comparison(
        report, merged, previous, compare, kept=history is not None, establishing=baseline
    )
    history_error = None
    if history is not None:
        history_error = record_history(history, report, merged, baseline=baseline, policy=compare)
    logger.info("%s", report.summary)
    publish_load_run(report)
    failure = report.failure
    if history_error:
        failure = f"{failure} | {history_error}" if failure else f"{test.name}: {history_error}"
    return end_run(report, failure)
