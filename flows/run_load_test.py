"""run_load_test: one named load test of `deployments/load_tests.yaml` against the target of a
`perfops-load-target` block, judged against its success criteria and its baseline. CLI
`perfops load run NAME`; nightly deployment.

1. The test and the target: the target's allow-list, production flag and caps (rps,
   connections, duration) refuse the test before any request is sent.
2. The load, with an open model (requests on the arrival schedule, latency from the intended
   start): in one generator process, or split into `shares` child flow runs
   (`run_load_share`), each asking rate/shares and starting at the same wall-clock time, their
   HDR histograms merged exactly. A share aborts when the error rate passes the test's limit.
3. The figures per endpoint and per step, the criteria judged, the comparison with the newest
   baseline (Mann-Whitney on per-second p95s and a minimum effect, decisions.load_baseline).
4. History in PostgreSQL (`perfops.load_test_runs`, created by an idempotent migration);
   `baseline=True` then establishes a new baseline from the last good runs.
5. The artifact `perfops-load-<test>` (table), `perfops-load-<test>-chart` (markdown with the
   latency-over-time PNG, also written under <out>/load-tests/), events `perfops.load.tested`,
   `perfops.load.regressed`, `perfops.load.aborted`, `perfops.load.baseline_established`.
6. Failed, with the artifact written, when a criterion was missed, the test aborted, an endpoint
   regressed, or history could not be written.
"""

from __future__ import annotations

import base64
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from blocks import LoadTarget
from blocks.resolve import resolve_load_target, resolve_postgres
from decisions.load_baseline import (
    ComparePolicy,
    NoBaseline,
    compare_to_baseline,
    establish_baseline,
)
from decisions.load_charts import latency_chart
from decisions.load_report import (
    LoadTestReport,
    artifact_rows,
    build_report,
    event_payload,
    history_record,
)
from decisions.load_results import ShareResult, judge, merge_shares
from decisions.load_scenarios import LoadTest, cap_problems, load_tests
from perfops.errors import ConfigurationError, PerfopsError
from perfops.heartbeats import heartbeats
from perfops.redaction import install_log_redaction, one_line
from perfops.settings import get_settings
from tasks.load_generator import LoadPlan, generate_load
from tasks.postgres.load_runs import (
    migrate_load_history,
    read_load_baseline,
    read_load_runs,
    record_load_run,
    save_load_baseline,
)
from tasks.records import emit, end_run, publish_markdown, publish_table

EVENT_TESTED = "perfops.load.tested"
EVENT_REGRESSED = "perfops.load.regressed"
EVENT_ABORTED = "perfops.load.aborted"
EVENT_BASELINE = "perfops.load.baseline_established"
EVENT_REFUSED = "perfops.load.refused"
MAX_SHARES = 16
SHARE_START_S = 8.0  # shares start together this long after the parent asks for them
HISTORY_FOR_BASELINE = 50


def _test(name: str, tests_file: str | None) -> LoadTest:
    return load_tests(Path(tests_file) if tests_file else get_settings().load_tests_file).get(name)


def _checked(test: LoadTest, target: LoadTarget, shares: int) -> None:
    """Refuse, before any request, a test the target's allow-list or caps do not allow."""
    problems = cap_problems(
        test,
        max_rps=target.max_rps,
        max_connections=target.max_connections,
        max_duration_s=target.max_duration_s,
    )
    for scenario in test.scenarios:
        for step in scenario.steps:
            url = step.url if not step.url.startswith("/") else target.base_url + step.url
            try:
                target.check_url(url)
            except ConfigurationError as exc:
                problems.append(str(exc))
    if shares > target.max_connections:
        problems.append(f"{shares} shares need more connections than the cap allows")
    if problems:
        raise ConfigurationError(f"load test {test.name} refused: " + "; ".join(problems))


def _plan(
    test: LoadTest, target: LoadTarget, share: int, shares: int, start_at: float | None
) -> LoadPlan:
    auth = target.auth()
    return LoadPlan(
        test=test,
        base_url=target.base_url,
        auth_header=auth[0] if auth else None,
        auth_value=auth[1] if auth else None,
        share=share,
        shares=shares,
        max_connections=max(1, min(test.max_connections, target.max_connections // shares)),
        start_at_unix=start_at,
    )


@flow(
    name="run_load_share",
    description="One share of a load test (rate/shares), sent from this worker; its histograms "
    "go back to the parent run_load_test.",
    log_prints=False,
)
def run_load_share(
    name: str,
    share: int,
    shares: int,
    start_at_unix: float,
    target_block: str | None = None,
    tests_file: str | None = None,
) -> ShareResult:
    """Send one share of test `name`; the target (and its secret) is resolved here, never
    passed as a parameter."""
    install_log_redaction()
    test = _test(name, tests_file)
    target = resolve_load_target(target_block).value
    _checked(test, target, shares)
    return generate_load(_plan(test, target, share, shares, start_at_unix))


def _run_shares(
    test: LoadTest, target_block: str | None, tests_file: str | None, shares: int
) -> ShareResult:
    start_at = time.time() + SHARE_START_S

    def one(k: int) -> ShareResult:
        with heartbeats(False):
            child = run_load_share.with_options(flow_run_name=f"run_load_share-{test.name}-{k}")
            state = child(
                name=test.name,
                share=k,
                shares=shares,
                start_at_unix=start_at,
                target_block=target_block,
                tests_file=tests_file,
                return_state=True,
            )
        result = state.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            raise PerfopsError(f"share {k} of {shares} failed: {result}")
        return result

    with ThreadPoolExecutor(max_workers=shares, thread_name_prefix="perfops-share") as pool:
        futures = [pool.submit(copy_context().run, one, k) for k in range(shares)]
        return merge_shares([f.result() for f in futures])


def _chart(report: LoadTestReport) -> tuple[bytes, Path]:
    png = latency_chart(report)
    folder = get_settings().out_dir / "load-tests" / report.test
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"{report.started_at:%Y%m%dT%H%M%S}-{report.run_id[:8]}.png").resolve()
    path.write_bytes(png)
    return png, path


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
    postgres_block: str | None = None,
    tests_file: str | None = None,
    baseline: bool = False,
    shares: int = 1,
    compare: ComparePolicy = ComparePolicy(),  # noqa: B008 - frozen defaults
    keep_history: bool = True,
) -> LoadTestReport:
    """Run load test `name` and judge it.

    Args:
        name: a test of the tests file (`perfops load run --help` lists them).
        target_block: a saved `perfops-load-target` block (allow-list, caps, auth header);
            default PERFOPS_LOAD_TARGET_BLOCK, else PERFOPS_LOAD_TARGET_URL (loopback only).
        postgres_block: where history is kept (`perfops.load_test_runs`); default PERFOPS_DSN,
            else the local demo database.
        tests_file: default PERFOPS_LOAD_TESTS_FILE, else deployments/load_tests.yaml.
        baseline: after this run, establish a new baseline from the last `compare.runs` good
            runs (this one included when good).
        shares: split the load into this many child runs (each rate/shares, in its own process,
            started together); histograms merged exactly.
        compare: the baseline comparison (runs, alpha, min_effect, min_windows).
        keep_history: record the run (and read the baseline) in PostgreSQL.
    """
    install_log_redaction()
    if not 1 <= shares <= MAX_SHARES:
        raise ConfigurationError(f"shares must be 1..{MAX_SHARES}, got {shares}")
    logger = get_run_logger()
    test = _test(name, tests_file)
    resolved = resolve_load_target(target_block)
    target = resolved.value
    try:
        _checked(test, target, shares)
    except ConfigurationError as exc:  # refused before any request: the record says why
        publish_table(
            f"perfops-load-{test.name}",
            [{"what": f"test {test.name}", "result": "refused", "reason": str(exc)}],
            f"Load test {test.name} refused before any request was sent.",
        )
        emit(
            EVENT_REFUSED,
            f"perfops.load.{urlsplit(target.base_url).netloc}",
            {"test": test.name, "reason": str(exc)},
            **{"perfops.test": test.name},
        )
        raise
    run_id = str(flow_run.get_id() or uuid.uuid4())
    history = resolve_postgres(postgres_block).value if keep_history else None
    previous = None
    if history is not None:
        migrate_load_history(history)
        previous = read_load_baseline(history, test.name)
    logger.info(
        "%s against %s: %s %s for %.0f s in %d share(s)",
        test.name,
        resolved.description,
        test.pattern.kind,
        f"{test.pattern.rps:g} rps" if test.pattern.open_model else f"{test.pattern.vus} vus",
        test.seconds,
        shares,
    )
    if shares == 1:
        merged = generate_load(_plan(test, target, 0, 1, None))
    else:
        merged = _run_shares(test, target_block, tests_file, shares)
    stats_report = build_report(
        test, merged, [], run_id=run_id, target=target.base_url
    )  # figures first, then the criteria on them
    report = stats_report.model_copy(
        update={"criteria": judge(test.criteria, stats_report.endpoints)}
    )
    record = history_record(report, merged)
    if previous is not None:
        report.comparisons = compare_to_baseline(previous, record.endpoints, compare)
        report.baseline = (
            f"baseline of {previous.established_at:%Y-%m-%d %H:%M} UTC from "
            f"{len(previous.run_ids)} runs"
        )
    elif history is not None:
        report.baseline = "no baseline yet: run with --baseline (baseline=true) to establish one"
    history_error: str | None = None
    if history is not None:
        record = history_record(report, merged)
        try:
            record_load_run(history, record)
            if baseline:
                runs = read_load_runs(history, test.name, HISTORY_FOR_BASELINE)
                made = establish_baseline(test.name, runs, datetime.now(UTC), compare)
                save_load_baseline(history, made)
                report.established_baseline = True
                report.baseline = (
                    (report.baseline + "; ") if report.baseline else ""
                ) + f"new baseline established from {len(made.run_ids)} runs"
        except NoBaseline as exc:
            history_error = f"no baseline established: {exc}"
        except Exception as exc:  # noqa: BLE001 - the load test's record must still be written
            history_error = f"history not written: {one_line(exc, empty=type(exc).__name__)}"
    logger.info("%s", report.summary)

    png, chart_path = _chart(report)
    key = f"perfops-load-{test.name}"
    publish_table(
        key,
        artifact_rows(report),
        f"Load test {test.name} against {target.base_url}: {report.summary}. Latency is measured "
        "from each request's intended start (open model). "
        + (report.baseline or "history off")
        + f". Chart: {chart_path}",
    )
    publish_markdown(
        f"{key}-chart",
        f"# Load test {test.name}\n\n{report.summary}\n\n"
        f"![latency per second](data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
        f"File: `{chart_path}`\n",
        f"Latency over time of load test {test.name}",
    )
    host = urlsplit(target.base_url).netloc
    resource = f"perfops.load.{host}"
    labels: dict[str, Any] = {"perfops.test": test.name}
    payload = event_payload(report)
    emit(EVENT_TESTED, resource, payload, **labels, **{"perfops.outcome": _outcome(report)})
    if report.regressed:
        emit(EVENT_REGRESSED, resource, payload, **labels)
    if report.aborted:
        emit(EVENT_ABORTED, resource, payload, **labels)
    if report.established_baseline:
        emit(EVENT_BASELINE, resource, {"test": test.name, "run_id": run_id}, **labels)
    failure = report.failure
    if history_error:
        failure = f"{failure} | {history_error}" if failure else f"{test.name}: {history_error}"
    return end_run(report, failure)


def _outcome(report: LoadTestReport) -> str:
    if report.aborted:
        return "aborted"
    if report.regressed:
        return "regressed"
    return "passed" if report.passed else "failed"
