"""Bad input is refused before Prefect starts, in one line naming the flag, with exit code 2:
numbers out of their range on every command, and a local archive to restore that is not there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import cli.commands.partitions
from cli.commands.scaling import HISTORY_KEPT
from tasks.scaling_state import HISTORY_LENGTH


@pytest.fixture()
def no_flow_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command got as far as running its flow (starting Prefect)."""

    def run_flow(*_: object, **__: object) -> None:
        raise AssertionError("the bad input reached run_flow")

    monkeypatch.setattr(cli.commands.partitions, "run_flow", run_flow)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["scaling", "decide", "--group", "g", "--current", "-5"], "--current"),
        (["scaling", "history", "--limit", "0"], "--limit"),
        (["scaling", "history", "--limit", str(HISTORY_KEPT + 1)], "--limit"),
        (["scaling", "apply-schedule", "--group", "g", "--business-min", "-1"], "--business-min"),
        (["scaling", "apply-schedule", "--group", "g", "--business-max", "0"], "--business-max"),
        (["scaling", "apply-schedule", "--group", "g", "--off-min", "-1"], "--off-min"),
        (["scaling", "apply-schedule", "--group", "g", "--off-max", "0"], "--off-max"),
        (["stats", "refresh", "--threshold", "1.5"], "--threshold"),
        (["stats", "refresh", "--threshold", "0"], "--threshold"),
        (["stats", "refresh", "--parallel", "0"], "--parallel"),
        (["stats", "refresh", "--parallel", "9"], "--parallel"),
        (["stats", "refresh", "--lock-timeout-ms", "0"], "--lock-timeout-ms"),
        (["stats", "refresh", "--statement-timeout-ms", "10"], "--statement-timeout-ms"),
        (["stats", "refresh", "--vacuum-dead-ratio", "2"], "--vacuum-dead-ratio"),
        (["stats", "refresh", "--max-tables", "0"], "--max-tables"),
        (["stats", "refresh", "--min-rows", "-1"], "--min-rows"),
        (["partitions", "rotate", "--table", "a.b", "--premake", "400"], "--premake"),
        (["partitions", "rotate", "--table", "a.b", "--max-created", "0"], "--max-created"),
        (["partitions", "rotate", "--table", "a.b", "--lock-timeout-ms", "0"], "--lock-timeout-ms"),
        (["indexes", "health", "--min-size", "5000TB"], "--min-size"),
        (["indexes", "suggest", "--min-calls", "0"], "--min-calls"),
        (["indexes", "suggest", "--min-saving", "1.5"], "--min-saving"),
        (["indexes", "suggest", "--max-per-table", "0"], "--max-per-table"),
        (["queries", "slow", "--threshold-ms", "-1"], "--threshold-ms"),
        (["queries", "slow", "--top", "-1"], "--top"),
        (["scaling", "apply-schedule"], "--group"),  # neither a group nor a fleet
        (
            ["scaling", "apply-schedule", "--group", "g", "--timezone", "Europe/Berln"],
            "Invalid value for --timezone: unknown time zone 'Europe/Berln': give an IANA name",
        ),
        (
            ["scaling", "apply-schedule", "--group", "g", "--timezone", "localtime"],
            "Invalid value for --timezone: 'localtime' is no IANA time zone name",
        ),
        (["scaling", "decide", "--fleet", "prod", "--current", "3"], "--current"),
        (["scaling", "tune", "--fleet", "prod", "--metrics-block", "m"], "--metrics-block"),
        (["indexes", "suggest", "--fleet", "prod", "--dsn", "host=x"], "--dsn"),
        # each target's region is in the fleet file: a typed one would be ignored
        (["scaling", "decide", "--fleet", "prod", "--region", "eu-west-1"], "--region"),
        (["scaling", "apply-schedule", "--fleet", "prod", "--region", "eu-west-1"], "--region"),
        (["cache", "warm", "--cache", "agent_configs"], "nothing to warm: give keys (--key"),
        (["fleet", "list", "--no-probe", "--fleet", "nosuch"], "'nosuch' is neither a fleet"),
        # `--fleet "$FLEET"` with FLEET unset ran the single-database command instead
        (["stats", "refresh", "--fleet", "", "--dry-run"], "empty: name a fleet"),
        (["indexes", "health", "--fleet", " ", "--apply", "--drop", "a.b"], "empty: name a fleet"),
        (["cache", "stats", "--fleet", ""], "empty: name a fleet"),
        # a selection without the system the command works on: bad usage before Prefect starts
        (
            ["scaling", "decide", "--fleet", "payments"],
            "no target of the selection has autoscaling",
        ),
        (["scaling", "tune", "--fleet", "orders"], "no target of the selection has autoscaling"),
        (["cache", "stats", "--fleet", "payments"], "no target of the selection has redis"),
        (["stats", "refresh", "--fleet", "api"], "no target of the selection has postgres"),
        (["fleet", "list", "--fleet-file", "/nonexistent/fleet.yaml"], "cannot read the fleet"),
        (
            ["cache", "warm", "--cache", "agent_configs", "--key", "a", "--keys-sql", "select 1"],
            "or --keys-sql, not both",
        ),
    ],
)
def test_numbers_out_of_range_are_usage_errors(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    flag: str,
) -> None:
    assert perfops(args) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert err.strip().count("\n") == 0, err


def test_history_limit_is_what_redis_keeps() -> None:
    assert HISTORY_KEPT == HISTORY_LENGTH


def test_the_cli_per_table_cap_is_the_advisor_default() -> None:
    import inspect

    from cli.commands.indexes import suggest
    from decisions.indexing import IndexAdvisorSettings

    cli_default = inspect.signature(suggest).parameters["max_per_table"].default
    assert cli_default == IndexAdvisorSettings().max_new_per_table


@pytest.mark.usefixtures("no_flow_runs")
def test_restore_from_a_missing_file_says_so(
    perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert perfops(["partitions", "restore", "--from", "/nonexistent.parquet"]) == 2
    err = capsys.readouterr().err
    assert "--from: the archive /nonexistent.parquet does not exist" in err
    assert "ValueError" not in err and err.strip().count("\n") == 0


@pytest.mark.usefixtures("no_flow_runs")
@pytest.mark.parametrize(
    ("present", "given", "missing"),
    [
        ("p.parquet", "p.parquet", "manifest {dir}/p.manifest.json"),
        ("p.manifest.json", "p.manifest.json", "Parquet file {dir}/p.parquet"),
    ],
)
def test_restore_needs_the_parquet_file_and_its_manifest(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    present: str,
    given: str,
    missing: str,
) -> None:
    (tmp_path / present).write_bytes(b"")
    assert perfops(["partitions", "restore", "--from", str(tmp_path / given)]) == 2
    err = capsys.readouterr().err
    assert f"the archive's {missing.format(dir=tmp_path)} does not exist" in err
    assert err.strip().count("\n") == 0


@pytest.mark.usefixtures("no_flow_runs")
def test_restore_from_a_folder_asks_for_the_file(
    perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert perfops(["partitions", "restore", "--from", str(tmp_path)]) == 2
    assert "is a folder; name the archive's .parquet file in it" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value", "args"),
    [
        ("PERFOPS_DSN", "host=db1 dbname=app", ["stats", "refresh"]),
        ("PERFOPS_POSTGRES_BLOCK", "perfops-postgres", ["queries", "slow"]),
        ("PERFOPS_REDIS_URL", "redis://cache:6379/0", ["cache", "stats"]),
    ],
)
def test_a_single_target_variable_in_the_environment_does_not_refuse_fleet(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    args: list[str],
) -> None:
    # exported for single runs (README: every flag has a PERFOPS_* variable), it is only a
    # default the fleet's blocks replace: the command goes on to check the selection itself
    monkeypatch.setenv(variable, value)
    assert perfops([*args, "--fleet", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "'nosuch' is neither a fleet" in err and "drop --" not in err, err


def test_fleet_list_json_stays_json_when_discovery_leaves_blocks_out(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import json

    import blocks.resolve
    import cli.commands.fleet

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "targets:\n  - {name: orders, blocks: {postgres: pg-orders}}\n"
        "discover:\n  - {block_prefix: pg-}\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(cli.commands.fleet, "use_prefect_server", lambda: None)
    monkeypatch.setattr(blocks.resolve, "saved_block_names", lambda _: ["pg-orders", "pg-bill"])
    assert perfops(["fleet", "list", "--fleet-file", str(fleet), "--no-probe", "--json"]) == 0
    captured = capsys.readouterr()
    listed = json.loads(captured.out)  # the note on a block left out was on stdout before it
    assert [t["name"] for t in listed["targets"]] == ["orders", "bill"]
    assert listed["targets"][0]["cluster"] is None  # not a human placeholder in --json
    assert "not a fleet target: pg-orders: a target 'orders' exists already" in captured.err


BAD_FLEET_FILES = {
    "missing": (None, "cannot read the fleet file"),
    "not YAML": ("targets: [\n", "not valid YAML"),
    "empty": ("", "expected a mapping with targets"),
    "no targets": ("targets: []\n", "list targets, or discover them"),
    "unknown target": (
        "targets:\n  - {name: orders, blocks: {postgres: pg-orders}}\n"
        "fleets:\n  prod: {targets: [orders, nosuch]}\n",
        "fleet 'prod' names unknown targets: nosuch",
    ),
}
FLEET_COMMANDS = [
    ["fleet", "list", "--no-probe"],
    ["stats", "refresh"],
    ["scaling", "apply-schedule"],
    ["partitions", "rotate", "--table", "public.t", "--interval", "month"],
    ["report", "weekly"],
]


def _fleet_file(tmp_path: Path, problem: str) -> Path:
    text = BAD_FLEET_FILES[problem][0]
    path = tmp_path / "fleet.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("problem", list(BAD_FLEET_FILES))
@pytest.mark.parametrize("command", FLEET_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_bad_fleet_file_is_reported_against_fleet_file_not_fleet(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
    problem: str,
) -> None:
    path = _fleet_file(tmp_path, problem)
    assert perfops([*command, "--fleet", "all", "--fleet-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for --fleet-file: " in err, err
    assert BAD_FLEET_FILES[problem][1] in err and "for --fleet:" not in err, err
    assert err.strip().count("\n") == 0, err


@pytest.mark.parametrize("problem", ["missing", "not YAML", "unknown target"])
def test_a_bad_fleet_file_from_the_variable_names_the_variable(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    problem: str,
) -> None:
    monkeypatch.setenv("PERFOPS_FLEET_FILE", str(_fleet_file(tmp_path, problem)))
    assert perfops(["stats", "refresh", "--fleet", "all"]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for PERFOPS_FLEET_FILE: " in err, err
    assert BAD_FLEET_FILES[problem][1] in err and "--fleet:" not in err, err


@pytest.mark.parametrize("command", FLEET_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_an_empty_fleet_file_option_is_refused_naming_it(
    perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # `--fleet-file "$FLEET_FILE"` with the variable unset: it read the directory "."
    assert perfops([*command, "--fleet", "all", "--fleet-file", ""]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for --fleet-file: empty: name the fleet file" in err, err


def test_an_empty_fleet_file_variable_is_unset_not_the_directory(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PERFOPS_FLEET_FILE", "")
    assert perfops(["fleet", "list", "--no-probe", "--fleet", "nosuch"]) == 2
    err = capsys.readouterr().err  # the default fleet file was read: the selection is wrong
    assert "Invalid value for --fleet: 'nosuch' is neither a fleet" in err, err


def test_a_wrong_selection_in_a_good_file_still_names_fleet(
    perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("targets:\n  - {name: orders, blocks: {postgres: pg-orders}}\n")
    assert perfops(["stats", "refresh", "--fleet", "env=prod", "--fleet-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for --fleet: no target has the label 'env=prod'" in err, err


def test_load_run_refuses_bad_usage_with_exit_2_before_prefect_starts(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """docs/load-tests.md: exit 1 is the test's outcome (a criterion missed, aborted, regressed),
    2 bad usage. A test the file does not define, a tests file that cannot be read or is
    malformed, and a --target-url that names no loopback server used to exit 1 like a failed
    test (the last one after starting Prefect)."""
    import cli.commands.load

    def run_flow(*_: object, **__: object) -> None:
        raise AssertionError("the bad input reached run_flow")

    monkeypatch.setattr(cli.commands.load, "run_flow", run_flow)
    bad = tmp_path / "bad.yaml"
    good = "deployments/load_tests.yaml"
    bad.write_text(Path(good).read_text().replace("rps: 1600", "rps: 0", 1))
    cases = [
        (["nope", "--tests-file", good], "Invalid value for NAME: no load test named 'nope'"),
        (
            ["platform-api", "--tests-file", str(tmp_path / "missing.yaml")],
            "Invalid value for --tests-file: cannot read load tests",
        ),
        (
            ["platform-api", "--tests-file", str(bad)],
            f"Invalid value for --tests-file: {bad} line",
        ),
        (
            ["platform-api", "--tests-file", good, "--target-url", "http://staging.example.com"],
            "Invalid value for --target-url: target_url may name a loopback host only",
        ),
        (
            [
                "platform-api",
                "--tests-file",
                good,
                "--target-url",
                "http://127.0.0.1:8089",
                "--target-block",
                "staging",
            ],
            "Invalid value for --target-url: name one load target, not two",
        ),
    ]
    for args, message in cases:
        assert perfops(["load", "run", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0, err
    monkeypatch.setenv("PERFOPS_LOAD_TESTS_FILE", str(tmp_path / "missing.yaml"))
    assert perfops(["load", "run", "platform-api"]) == 2
    assert "Invalid value for PERFOPS_LOAD_TESTS_FILE: cannot read" in capsys.readouterr().err


def test_report_weekly_refuses_a_to_that_is_not_one_address_with_exit_2(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README: a bad flag value is refused with exit 2 before any server starts. `--to 'a, b'`
    used to start Prefect and exit 1, like a report that could not be sent."""
    import cli.commands.report

    def run_flow(*_: object, **__: object) -> None:
        raise AssertionError("the bad input reached run_flow")

    monkeypatch.setattr(cli.commands.report, "run_flow", run_flow)
    args = ["report", "weekly", "--to", "sre@example.com", "--to", "a@x.com, b@x.com"]
    assert perfops(args) == 2
    err = capsys.readouterr().err
    assert "Invalid value for --to: 'a@x.com, b@x.com' holds 2 addresses" in err, err
    assert err.strip().count("\n") == 0 and "sre@example.com'" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--event", "nosuch", "--payload", "{}"], "no event 'nosuch' in the cache policy"),
        (
            ["--event", "user_updated", "--payload", "{}"],
            "event user_updated: cache user_profiles needs 'user_id' in the payload",
        ),
        (["--tag", "nosuch=1"], "tag 'nosuch' is not declared by any cache"),
        (["--versions", "user_profiles"], "cache user_profiles is not versioned"),
    ],
    ids=["unknown event", "payload without its field", "undeclared tag", "unversioned cache"],
)
def test_cache_invalidate_refuses_a_request_the_policy_cannot_resolve_with_exit_2(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    """README: a bad flag value is refused with exit 2 before any server starts. These used to
    start Prefect and exit 1, as a refused or failed step does."""
    import cli.commands.cache

    def run_flow(*_: object, **__: object) -> None:
        raise AssertionError("the bad input reached run_flow")

    monkeypatch.setattr(cli.commands.cache, "run_flow", run_flow)
    assert perfops(["cache", "invalidate", *args]) == 2
    err = capsys.readouterr().err
    assert f"Invalid value: {message}" in err and err.strip().count("\n") == 0, err


def test_cache_warm_refuses_keys_of_another_cache_with_exit_2(
    perfops: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A --key that is not the --cache's own used to start Prefect and exit 1, as a key that
    failed to warm does."""
    import cli.commands.cache

    def run_flow(*_: object, **__: object) -> None:
        raise AssertionError("the bad input reached run_flow")

    monkeypatch.setattr(cli.commands.cache, "run_flow", run_flow)
    args = ["cache", "warm", "--cache", "agent_configs", "--key", "agent:1:config:main"]
    args += ["--key", "user:42:profile:main", "--url-template", "http://127.0.0.1:1/{key}"]
    assert perfops(args) == 2
    err = capsys.readouterr().err
    assert (
        "Invalid value for --key/--keys-file: 1 of 2 keys are not keys of cache agent_configs "
        "(agent:{agent_id}:config:*): user:42:profile:main (a key of user_profiles)" in err
    ), err
