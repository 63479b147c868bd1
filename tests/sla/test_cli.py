"""`perfops sla`: bad definitions fail fast with the line and field; --help explains."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path

from blocks import RedisTarget
from tests.command import ROOT, run_perfops
from tests.conftest import REDIS_TEST_URL
from tests.servers import PrometheusServer, SlackStandIn
from tests.servers.slack import DEFAULT_TOKEN
from tests.sla.conftest import OUTAGE
from tests.sla.helpers import DEFINITIONS


def perfops(*args: str) -> subprocess.CompletedProcess[str]:
    return run_perfops(*args, keep_perfops_env=True, timeout=120)


def test_malformed_definitions_name_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "slos.yaml"
    text = (ROOT / "deployments" / "slos.yaml").read_text()
    bad.write_text(text.replace("objective: 0.999", "objective: 99.9", 1))
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "objective: 99.9" in t)
    result = perfops("sla", "evaluate", "--definitions", str(bad))
    assert result.returncode == 1
    assert f"slos.yaml line {line}, slos[0].objective: Input should be less than 1" in (
        result.stderr
    )
    result = perfops("sla", "ack", "x/y", "--definitions", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_help_explains() -> None:
    result = perfops("sla", "evaluate", "--help")
    assert result.returncode == 0
    assert "burn rates" in result.stdout and "--no-notify" in result.stdout


def test_evaluate_command_replays_a_minute(
    prefect_api_url: str, sla_prometheus: PrometheusServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFOPS_")}
    env["PERFOPS_WARM"] = "off"  # leave no warm command process (cli/warm.py)
    env.update({"PREFECT_API_URL": prefect_api_url, "PERFOPS_OUT_DIR": str(tmp_path)})
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(DEFINITIONS)
    args = [
        "sla",
        "evaluate",
        "--definitions",
        str(definitions),
        "--prometheus-url",
        sla_prometheus.url,
        "--redis-url",
        REDIS_TEST_URL,
        "--no-notify",
    ]
    before = (OUTAGE.start - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    result = run_perfops(*args, "--at", before, "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {s["name"]: s["status"] for s in report["statuses"]}["availability"] == "ok"
    during = (OUTAGE.start + timedelta(minutes=4)).strftime("%Y-%m-%dT%H:%M")
    result = run_perfops(*args, "--at", during, env=env)
    assert result.returncode == 1
    assert "firing      availability" in result.stdout
    assert "alerts firing: availability/page-fast" in result.stderr


def test_ack_command_with_at_against_strict_slack_after_redis_lost_its_state(
    prefect_api_url: str,
    sla_prometheus: PrometheusServer,
    slack: SlackStandIn,
    redis_target: RedisTarget,
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFOPS_")}
    env["PERFOPS_WARM"] = "off"  # leave no warm command process (cli/warm.py)
    env.update(
        {
            "PREFECT_API_URL": prefect_api_url,
            "PERFOPS_OUT_DIR": str(tmp_path),
            "PERFOPS_REDIS_URL": REDIS_TEST_URL,
            "PERFOPS_SLACK_TOKEN": DEFAULT_TOKEN,
            "PERFOPS_SLACK_API_URL": slack.base_url,
        }
    )
    definitions = tmp_path / "slos.yaml"
    definitions.write_text(DEFINITIONS)
    common = ["--definitions", str(definitions)]

    def minute(offset: int) -> str:
        return (OUTAGE.start + timedelta(minutes=offset)).strftime("%Y-%m-%dT%H:%M")

    evaluate = ["sla", "evaluate", *common, "--prometheus-url", sla_prometheus.url, "--at"]
    result = run_perfops(*evaluate, minute(4), env=env)
    assert result.returncode == 1 and "notice fire level 1 -> slack #oncall: sent" in (
        result.stdout
    ), result.stdout + result.stderr
    root = next(m for m in slack.messages if "availability" in m["text"])
    redis_target.get_client().flushdb()  # Redis lost its data: the ack rebuilds from Slack
    result = run_perfops(
        "sla", "ack", "availability/page-fast", "--by", "alice", "--at", minute(6), *common, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "acknowledged by alice at level 1" in result.stdout
    assert "thread reply: #oncall ts=" in result.stdout
    ack = slack.messages[-1]
    assert ack["thread_ts"] == root["ts"] and ack["channel"] == slack.channel_id("#oncall")
    assert "Acknowledged by *alice* at " in str(ack["blocks"])
    result = run_perfops(*evaluate, minute(25), "--json", env=env)
    report = json.loads(result.stdout)
    escalated = [d["group"] for d in report["delivery"]["delivered"] if d["kind"] == "escalate"]
    assert "default:slo=availability" not in escalated  # acknowledged: no level 2
    keys = [m["metadata"]["event_payload"]["key"] for m in slack.messages]
    assert len(keys) == len(set(keys))
