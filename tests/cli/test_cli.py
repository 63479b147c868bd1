"""The perfops command line as a user runs it: help, exit codes, one-line errors, no secrets."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.command import run_perfops


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return run_perfops(*args, env=env, timeout=timeout)


def test_help_lists_every_command() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for command in ("doctor", "demo", "blocks"):
        assert command in result.stdout


def test_doctor_help_explains_flags_and_variables() -> None:
    result = _run("doctor", "--help")
    assert result.returncode == 0
    for text in ("--dsn", "PERFOPS_DSN", "--json", "--postgres-block"):
        assert text in result.stdout


def test_report_weekly_help_says_every_way_it_exits_1() -> None:
    result = _run("report", "weekly", "--help", env={"COLUMNS": "400"})
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "only archived" not in text  # it used to say so, but the run fails
    assert "with none the report is archived, not sent, and the command exits 1" in text
    for reason in (
        "no target could be scored",
        "a section is missing",
        "there are no recipients",
        "a recipient was refused",
        "the email could not be sent",
        "the archive refused the report",
        "a fleet target could not be read",
        "the --out copy could not be written",
    ):
        assert reason in text, reason


def test_bad_flag_is_one_line_and_exit_2() -> None:
    result = _run("doctor", "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "No such option: --no-such-flag" in result.stderr


def test_bad_value_is_one_line_and_exit_2() -> None:
    result = _run("doctor", "--smtp-port", "seventy")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--smtp-port" in result.stderr


def test_unreachable_dsn_is_one_line_exit_1_and_hides_the_password(prefect_api_url: str) -> None:
    secret = "cli-secret-never-printed"
    result = _run(
        "doctor",
        "--dsn",
        f"postgresql://app:{secret}@127.0.0.1:1/app",
        env={"PREFECT_API_URL": prefect_api_url},
    )
    assert result.returncode == 1, result.stderr
    # progress lines ("perfops: checking ...") then exactly one error line
    errors = [line for line in result.stderr.splitlines() if not line.endswith("...")]
    assert errors == ["perfops: unreachable: postgres (see the perfops-connections artifact)"]
    assert "Traceback" not in result.stdout + result.stderr
    assert secret not in result.stdout + result.stderr
    assert "app@127.0.0.1:1/app" in result.stdout


@pytest.mark.parametrize(
    "command",
    [["queries", "slow"], ["indexes", "suggest"], ["indexes", "health"], ["stats", "refresh"]],
    ids=" ".join,
)
def test_postgres_commands_on_an_unreachable_server(
    command: list[str], prefect_api_url: str
) -> None:
    secret = "cli-secret-of-" + "-".join(command)
    result = _run(
        *command,
        "--dsn",
        f"postgresql://app:{secret}@127.0.0.1:1/app",
        env={"PREFECT_API_URL": prefect_api_url},
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.endswith("...")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("perfops: cannot connect to PostgreSQL at app@127.0.0.1:1/app:")
    assert "Traceback" not in result.stdout + result.stderr
    assert secret not in result.stdout + result.stderr


def test_perfops_debug_shows_the_traceback_of_a_one_line_error(prefect_api_url: str) -> None:
    """README: "Set PERFOPS_DEBUG=1 to see a traceback instead of the one-line error". It used to
    apply only to unexpected exceptions: a failed connection printed its one line either way.
    The traceback passes through redaction like every other line."""
    secret = "cli-secret-in-a-debug-run"
    dsn = f"postgresql://app:{secret}@127.0.0.1:1/app"
    env = {"PREFECT_API_URL": prefect_api_url}
    plain = _run("stats", "refresh", "--dsn", dsn, env=env)
    debug = _run("stats", "refresh", "--dsn", dsn, env={**env, "PERFOPS_DEBUG": "1"})
    assert plain.returncode == debug.returncode == 1, debug.stderr
    assert "Traceback" not in plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr
    assert (
        "perfops.errors.ConnectionFailed: cannot connect to PostgreSQL at app@127.0.0.1:1/app"
        in (debug.stderr)
    )
    # the one line still ends the output, as a script reading the last line expects
    last = debug.stderr.strip().splitlines()[-1]
    assert last.startswith("perfops: cannot connect to PostgreSQL at app@127.0.0.1:1/app:")
    assert secret not in plain.stdout + plain.stderr + debug.stdout + debug.stderr


def test_doctor_json_is_machine_readable(prefect_api_url: str, pg_dsn: str, tmp_path: Path) -> None:
    result = _run(
        "doctor",
        "--json",
        env={
            "PREFECT_API_URL": prefect_api_url,
            "PERFOPS_DSN": pg_dsn,
            "PERFOPS_OUT_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["flow_run_state"] == "Completed"
    assert {s["system"]: s["status"] for s in report["systems"]} == {
        "postgres": "ok",
        "metrics": "ok",
        "redis": "ok",
        "archive": "ok",
        "slack": "ok",
        "email": "ok",
    }


@pytest.mark.parametrize("args", [["--version"], []])
def test_version_and_bare_command(args: list[str]) -> None:
    result = _run(*args)
    assert result.returncode == 0
    assert "perfops" in result.stdout


def test_help_keeps_every_placeholder_an_option_names() -> None:
    """`--help` is rendered as markdown, where a bare `<trace>` is an HTML tag and vanishes
    (`scaling backtest --chart` read "default out/scaling/backtest-.png"): every `<name>` an
    option's or command's help text holds must reach the rendered help."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from cli.command import app

    def commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            yield path, command
            return
        for name, sub in subcommands.items():
            yield from commands(sub, [*path, name])

    checked, lost = 0, []
    for path, command in commands(get_command(app), []):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        placeholders = {t for text in texts for t in re.findall(r"<[A-Za-z_][A-Za-z_ ]*>", text)}
        if not placeholders:
            continue
        output = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        shown = " ".join(output.split())
        checked += 1
        lost += [f"{' '.join(path)}: {t}" for t in sorted(placeholders) if t not in shown]
    assert checked >= 2  # scaling backtest and deploy name placeholders
    assert lost == [], lost
