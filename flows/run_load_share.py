"""run_load_share: one share of a load test (rate/shares, beginning at the wall-clock time its
parent passes in), started by `run_load_test`: as a subflow in the parent's process, or, with
`spread`, as a run of this deployment that any worker of the pool takes. Its result (HDR
histograms, encoded) goes back to the parent as the flow's return value and as the artifact
`perfops-load-<test>-share` of its run (tasks/load_shares.py); the parent merges them exactly.
"""

from __future__ import annotations

from prefect import flow

from blocks.resolve import resolve_load_target
from decisions.load_results import ShareResult
from decisions.load_scenarios import definition_hash
from perfops.errors import ConfigurationError
from perfops.redaction import install_log_redaction
from tasks.load_generator import check_test, generate_load, read_test, share_plan
from tasks.load_shares import publish_share_result, signed


@flow(
    name="run_load_share",
    description="One share of a load test (rate/shares), sent from this worker at the start its "
    "parent run_load_test gives; its histograms go back to the parent (artifact "
    "perfops-load-<test>-share).",
    log_prints=False,
)
def run_load_share(
    name: str,
    share: int,
    shares: int,
    start_at_unix: float,
    target_block: str | None = None,
    tests_file: str | None = None,
    target_url: str | None = None,
    base_url: str | None = None,
    test_hash: str | None = None,
) -> ShareResult:
    """Send share `share` (0-based) of `shares` of test `name`, beginning at `start_at_unix`
    (a share that begins later reports by how much: the parent fails a test whose shares did
    not run together). The target (and its secret) is resolved here from the block or local
    URL the parent resolved (`target_block` / `target_url`), never passed as a value; the same
    caps and allow-list as the parent's are checked again. With `base_url` and `test_hash`
    (the parent's), a share whose target or test definition differs here is refused before it
    sends anything; its result carries both, and the parent checks them again."""
    install_log_redaction()
    test = read_test(name, tests_file)
    target = resolve_load_target(target_block, url=target_url).value
    which = f"share {share + 1} of {shares} of load test {test.name}"
    if base_url is not None and target.base_url != base_url:
        raise ConfigurationError(
            f"{which}: the target resolved here is {target.base_url}, not {base_url} that the "
            "parent checked; give this worker the same block"
        )
    if test_hash is not None and definition_hash(test) != test_hash:
        raise ConfigurationError(
            f"{which}: the test read here ({tests_file or 'the default tests file'}) differs from "
            f"the parent's (hash {definition_hash(test)}, parent {test_hash}); give this worker "
            "the same tests file"
        )
    check_test(test, target, shares)
    result = signed(generate_load(share_plan(test, target, share, shares, start_at_unix)))
    publish_share_result(test.name, result)
    return result
