"""`perfops deploy` refuses bad input before it talks to Prefect (exit 2, one line naming it).
What it does against a real server is tested end to end in tests/e2e/test_production.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from blocks import PostgresTarget
from cli.commands.deploy import Planned, _apply, _masked, _schedule_key
from tests.command import PERFOPS, ROOT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--configured", "mongodb"], "--configured mongodb: unknown system"),
        (["--pool-env", "PERFOPS_POSTGRES_BLOCK"], "expected NAME=VALUE"),
        (["--pool-env", "PERFOPS_SLACK_TOKEN=xoxb-1"], "looks like a secret"),
        (
            ["--pool-env", "PERFOPS_REDIS_URL=redis://app:s3cret@cache:6379/0"],
            "--pool-env PERFOPS_REDIS_URL: its value holds a password",
        ),
        (
            ["--pool-env", "PERFOPS_REDIS_URL=redis://:s3cret@cache:6379/0"],
            "--pool-env PERFOPS_REDIS_URL: its value holds a password",
        ),
        (
            ["--pool-env", "PERFOPS_PROMETHEUS_URL=http://u:p@prom:9090"],
            "--pool-env PERFOPS_PROMETHEUS_URL: its value holds a password",
        ),
        (["no_such_deployment"], "not in prefect.yaml: no_such_deployment"),
    ],
)
def test_bad_input_is_refused_with_exit_2(
    perfops: Callable[[list[str]], int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # never reached
    assert perfops(["deploy", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_value_with_a_password_is_a_secret_whatever_its_name() -> None:
    from cli.commands.deploy import carries_secret

    assert carries_secret("postgresql://app:s3cret@db1:5432/orders")
    assert carries_secret("host=db1 user=app password=s3cret dbname=orders")
    assert carries_secret("redis://:s3cret@cache:6379/0")
    assert not carries_secret("redis://cache:6379/0")
    assert not carries_secret("redis://app@cache:6379/0")  # a user alone
    assert not carries_secret("/srv/perfops")
    assert not carries_secret("redis://cache:99999/0")  # not a secret, whatever else


def test_without_a_prefect_server_it_says_which_variable_to_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path)  # no profile naming a server either
    result = subprocess.run(
        [*PERFOPS, "deploy"], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "PREFECT_API_URL is not set" in result.stderr


def test_an_unreachable_server_fails_with_its_address(
    perfops: Callable[[list[str]], int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert perfops(["deploy", "--dry-run"]) == 1
    assert "cannot reach the Prefect API at http://127.0.0.1:9/api" in capsys.readouterr().err


def test_the_command_line_starts_without_importing_prefect() -> None:
    """The local Prefect server is chosen before prefect is imported (cli.support.
    use_prefect_server does nothing once it is): no command module may import it at start-up."""
    code = "import sys, cli.command; print('prefect' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_help_names_every_system_configured_takes(
    perfops: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    from decisions.deployments import SYSTEMS

    assert perfops(["deploy", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split()).replace("│", "").replace("  ", " ")
    assert all(name in shown for name in SYSTEMS), shown  # load_target was missing


def test_a_record_past_what_one_prefect_variable_holds_is_kept_in_parts(
    prefect_api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 300 keys set on warm_cache in the UI: the record (prefect.yaml's and the applied
    # parameters) passed the 5,000 characters of a variable and every perfops deploy failed
    # with "Prefect API refused updating variable ...: 422"
    from cli.commands.deploy import PrefectApi

    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)
    api = PrefectApi()
    name = f"test-record-{os.getpid()}"
    keys = [f'workflow:{n}:definition:"v1"' for n in range(300)]
    big = {"yaml": {"cache": "c"}, "applied": {"cache": "c", "keys": keys}, "schedules": {}}
    api.save_record(name, big)
    assert api.record(name) == big
    small = {"yaml": {"cache": "c"}, "applied": {"cache": "c"}, "schedules": {}}
    api.save_record(name, small)  # back to one variable
    assert api.record(name) == small
    api.save_record(name, big)  # and parts again, over the old ones
    assert api.record(name) == big


def _server(prefect_api_url: str) -> httpx.Client:
    """The harness's API, with the work pool prefect.yaml names."""
    http = httpx.Client(base_url=prefect_api_url.rstrip("/") + "/", timeout=30)
    if http.get("work_pools/perfops-process").status_code == 404:
        made = http.post("work_pools/", json={"name": "perfops-process", "type": "process"})
        assert made.status_code == 201, made.text
    return http


def _patch(http: httpx.Client, path: str, body: dict[str, object]) -> None:
    """PATCH on the harness, again while its SQLite answers 503 (busy: its scheduler writes
    the runs of a schedule a deploy just turned on)."""
    for _ in range(20):
        answer = http.patch(path, json=body)
        if answer.status_code != 503:
            break
        time.sleep(0.5)
    assert answer.status_code == 204, answer.text


def _deploy(prefect_api_url: str, *args: str) -> str:
    result = subprocess.run(
        [*PERFOPS, "deploy", *args],
        env={**os.environ, "PREFECT_API_URL": prefect_api_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_deployment_an_operator_paused_stays_paused_across_redeploys(
    prefect_api_url: str,
) -> None:
    # The Prefect 3 UI's toggle on a deployment's page pauses the deployment (`paused`), not
    # its schedules. `prefect deploy` un-paused it, and perfops deploy printed "schedule on":
    # every paused deployment resumed its schedule on the next release.
    http = _server(prefect_api_url)

    def deploy() -> str:
        return _deploy(prefect_api_url, "check_connections")

    def paused() -> bool:
        found = http.get("deployments/name/check_connections/check_connections")
        return bool(found.json()["paused"])

    deploy()
    deployment_id = http.get("deployments/name/check_connections/check_connections").json()["id"]
    _patch(http, f"deployments/{deployment_id}", {"paused": True})
    first = deploy()
    assert paused(), first
    assert "deployment paused (schedule on)" in first
    assert "deployment: kept paused as set on the server" in first
    assert paused(), deploy()  # and on every later deploy, not only the first
    _patch(http, f"deployments/{deployment_id}", {"paused": False})
    resumed = deploy()
    assert not paused(), resumed
    assert "deployment paused" not in resumed


def test_a_schedule_paused_with_its_time_zone_edited_stays_paused(prefect_api_url: str) -> None:
    # An operator moved refresh_stale_statistics' schedule to Europe/Paris in the UI and paused
    # it. Its key no longer matched prefect.yaml's (UTC), so the next perfops deploy took it
    # for a new schedule: prefect.yaml's UTC schedule came back active, with no note.
    http = _server(prefect_api_url)
    name = "refresh_stale_statistics"

    def schedules() -> list[tuple[bool, str]]:
        found = http.get(f"deployments/name/{name}/{name}").json()["schedules"]
        return [(s["active"], s["schedule"]["timezone"]) for s in found]

    _deploy(prefect_api_url, name, "--configured", "postgres")
    assert schedules() == [(True, "UTC")]
    deployment = http.get(f"deployments/name/{name}/{name}").json()
    [schedule] = deployment["schedules"]
    _patch(
        http,
        f"deployments/{deployment['id']}/schedules/{schedule['id']}",
        {"active": False, "schedule": {"cron": "23 3 * * *", "timezone": "Europe/Paris"}},
    )
    out = _deploy(prefect_api_url, name, "--configured", "postgres")
    assert schedules() == [(False, "UTC")], out  # prefect.yaml's timing, the operator's pause
    assert "replaces cron 23 3 * * * Europe/Paris set on the server" in out
    assert "kept paused as set on the server" in out
    again = _deploy(prefect_api_url, name, "--configured", "postgres")
    assert schedules() == [(False, "UTC")], again


def test_a_block_named_in_the_deployments_own_job_variables_survives_a_redeploy(
    prefect_api_url: str,
) -> None:
    # The operator named this deployment's database in its job variables (the deployment's
    # Edit page: env PERFOPS_POSTGRES_BLOCK). prefect deploy reset them to prefect.yaml's {}:
    # the next runs took the work pool's block, another database, and the schedule stayed off
    # as "not configured" because only the pool's environment was read.
    http = _server(prefect_api_url)
    name = "find_slow_queries"
    block = f"r4-jobvar-{os.getpid()}"
    PostgresTarget(dsn=SecretStr("postgresql://perfops@127.0.0.1:5432/nowhere")).save(
        block, overwrite=True
    )
    _deploy(prefect_api_url, name)
    deployment = http.get(f"deployments/name/{name}/{name}").json()
    env = {"env": {"PERFOPS_POSTGRES_BLOCK": block}}
    _patch(http, f"deployments/{deployment['id']}", {"job_variables": env})
    out = _deploy(prefect_api_url, name)
    after = http.get(f"deployments/name/{name}/{name}").json()
    assert after["job_variables"] == env, out
    assert f"job variables: kept env.PERFOPS_POSTGRES_BLOCK={block!r} set on the server" in out
    assert f"postgres: ok, block {block!r} (job variable PERFOPS_POSTGRES_BLOCK)" in out
    assert [s["active"] for s in after["schedules"]] == [True], out
    _deploy(prefect_api_url, name)  # and on the next deploy too
    assert http.get(f"deployments/name/{name}/{name}").json()["job_variables"] == env


def test_an_interval_schedule_is_the_same_in_prefect_yaml_and_on_the_server() -> None:
    # prefect.yaml's `interval: 600` comes back from the server as 600.0: the keys differed,
    # so the server's schedule was never found and an operator's pause of it was lost.
    ours = _schedule_key({"interval": 600, "active": True})
    server = {"schedule": {"interval": 600.0, "anchor_date": "2026-12-08T01:58:04Z"}}
    assert ours == _schedule_key({**server, "active": False}) == "interval 600 UTC"
    assert _schedule_key({"interval": 90.5}) == "interval 90.5 UTC"


def test_a_secret_in_a_kept_job_variable_is_not_printed() -> None:
    # kept job variables are listed with their values: an operator's PERFOPS_DSN with its
    # password must not reach the deploy's output (a CI log)
    masked = _masked(
        {"env": {"PERFOPS_DSN": "postgresql://u:s3cret@db/app", "PERFOPS_REDIS_BLOCK": "cache"}}
    )
    assert masked is not None
    assert "s3cret" not in str(masked)
    assert masked["env"]["PERFOPS_REDIS_BLOCK"] == "cache"
    assert masked["env"]["PERFOPS_DSN"].startswith("<hidden ")


def test_a_schedule_perfops_left_off_comes_on_when_ready_after_prefect_yaml_retimes_it() -> None:
    # The last deploy left the 03:23 schedule off (postgres not configured); this release moves
    # it to 04:23 and postgres is now configured: the schedule comes on. Paired with the
    # server's 03:23 schedule, the old off state must read as perfops', not as an operator's.
    old, new = "cron 23 3 * * * UTC", "cron 23 4 * * * UTC"
    item = Planned(
        name="refresh_stale_statistics",
        flow="refresh_stale_statistics",
        pool="perfops-process",
        parameters={},
        schedules=[new],
        yaml_active=[False],
    )
    before = {
        "id": "d",
        "parameters": {},
        "paused": False,
        "schedules": [{"id": "s", "active": False, "schedule": {"cron": "23 3 * * *"}}],
    }
    record = {"yaml": {}, "applied": {}, "schedules": {old: False}, "planned": {old: False}}
    _apply(None, item, before, record, {}, {}, {"postgres"}, True)  # type: ignore[arg-type]
    assert item.active == [True], item.notes
    # and one an operator paused stays paused through the same release
    operator = {**record, "schedules": {old: True}, "planned": {old: True}}
    _apply(None, item, before, operator, {}, {}, {"postgres"}, True)  # type: ignore[arg-type]
    assert item.active == [False], item.notes
