"""Self-checks: every stand-in in tests/servers works over a real 127.0.0.1 socket."""

from __future__ import annotations

import base64
import hashlib
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from prometheus_api_client import PrometheusConnect
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from tests.servers import (
    DEFAULT_TOKEN,
    MetricSeries,
    MotoServer,
    PrometheusServer,
    SlackStandIn,
    SmtpServer,
    openmetrics_text,
)

NOW = int(time.time()) // 300 * 300
END = NOW - 3600  # back-filled data stops ~1 h ago ...
START = END - 14 * 86400  # ... and covers 14 days
TIMES = range(START, END + 1, 300)  # 5-minute resolution keeps the test fast


def _gauge(t: int) -> float:
    return round(0.25 + (t // 300) % 40 / 100, 2)


SERIES = [
    MetricSeries(
        "pg_cpu_ratio", "gauge", {"instance": "db1"}, [(t, _gauge(t)) for t in reversed(TIMES)]
    ),
    MetricSeries(
        "http_requests_total",
        "counter",
        {"route": "/api", "code": "200"},
        [(t, float((t - START) // 300 * 7)) for t in TIMES],
        help="Requests served.",
    ),
]


# -- Prometheus --------------------------------------------------------------------------------


def test_openmetrics_text_groups_families_and_names_counters() -> None:
    text = openmetrics_text(
        [
            MetricSeries("jobs_total", "counter", {"q": 'a"b'}, [(20, 2), (10, 1)], help="x\ny"),
            MetricSeries("load", "gauge", {}, [(10, 0.5)]),
            MetricSeries("jobs", "counter", {"q": "c"}, [(10, 3)], help="x\ny"),
        ]
    )
    assert text.splitlines() == [
        "# TYPE jobs counter",
        "# HELP jobs x\\ny",
        'jobs_total{q="a\\"b"} 1 10',
        'jobs_total{q="a\\"b"} 2 20',
        'jobs_total{q="c"} 3 10',
        "# TYPE load gauge",
        "load 0.5 10",
        "# EOF",
    ]
    with pytest.raises(ValueError, match="different type"):
        openmetrics_text([MetricSeries("a", "gauge", {}, []), MetricSeries("a", "counter", {}, [])])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prometheus"), SERIES) as server:
        yield server


def test_prometheus_serves_backfilled_values_exactly(prometheus: PrometheusServer) -> None:
    prom = PrometheusConnect(url=prometheus.url, disable_ssl=True)
    result = prom.custom_query_range(
        "pg_cpu_ratio",
        start_time=datetime.fromtimestamp(START, UTC),
        end_time=datetime.fromtimestamp(NOW, UTC),
        step="300",
    )
    assert len(result) == 1
    assert result[0]["metric"] == {"__name__": "pg_cpu_ratio", "instance": "db1"}
    values = [(int(t), float(v)) for t, v in result[0]["values"]]
    # One point per written sample: exact values at exact times ...
    assert values[: len(TIMES)] == [(t, _gauge(t)) for t in TIMES]
    # ... and Prometheus 2.x's 5m lookback includes its edge: the last sample shows once more.
    assert values[len(TIMES) :] == [(END + 300, _gauge(END))]


def test_prometheus_counter_queryable_by_total_name(prometheus: PrometheusServer) -> None:
    response = httpx.get(
        f"{prometheus.url}/api/v1/query_range",
        params={"query": "http_requests_total", "start": START, "end": END, "step": 3600},
    )
    data = response.json()["data"]["result"]
    assert data[0]["metric"] == {"__name__": "http_requests_total", "route": "/api", "code": "200"}
    assert data[0]["values"][0] == [START, "0"]
    assert data[0]["values"][-1] == [END, str((END - START) // 300 * 7)]


# -- Slack -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slack_server() -> Iterator[SlackStandIn]:
    with SlackStandIn() as server:
        yield server


@pytest.fixture
def slack(slack_server: SlackStandIn) -> SlackStandIn:
    slack_server.reset()
    return slack_server


def test_slack_post_update_and_errors(slack: SlackStandIn) -> None:
    client = WebClient(token=DEFAULT_TOKEN, base_url=slack.base_url)
    assert client.auth_test()["user_id"]
    perf = slack.channel_id("#perfops")
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*p95 up*"}}]
    first = client.chat_postMessage(channel="#perfops", text="p95 up", blocks=blocks)
    assert first["channel"] == perf  # a post takes a name and answers with the id
    reply = client.chat_postMessage(channel=perf, text="details", thread_ts=first["ts"])
    assert float(reply["ts"]) > float(first["ts"])
    client.chat_update(channel=perf, ts=first["ts"], text="p95 back to normal")
    assert client.conversations_info(channel=perf)["channel"]["name"] == "perfops"

    root, threaded = slack.messages
    assert root["blocks"] == blocks and root["text"] == "p95 back to normal"
    assert root["updates"] == [{"text": "p95 up", "blocks": blocks}]
    assert threaded["thread_ts"] == first["ts"] and threaded["channel"] == perf
    assert slack.requests[1].body["blocks"] == blocks

    with pytest.raises(SlackApiError) as missing:
        client.chat_update(channel=perf, ts="1.000000", text="x")
    assert missing.value.response["error"] == "message_not_found"
    with pytest.raises(SlackApiError) as bad_auth:
        WebClient(token="xoxb-wrong", base_url=slack.base_url).auth_test()
    assert bad_auth.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as unknown:
        client.api_call("nope.nothing")
    assert unknown.value.response["error"] == "unknown_method"


def test_slack_refuses_metadata_outside_its_documented_shape(slack: SlackStandIn) -> None:
    client = WebClient(token=DEFAULT_TOKEN, base_url=slack.base_url)
    perf = slack.channel_id("#perfops")
    good = {"event_type": "perfops_test", "event_payload": {"k": "1", "rows": [{"a": 1}]}}
    nested = {"event_type": "perfops_test", "event_payload": {"rows": [{"labels": {"a": "1"}}]}}
    null = {"event_type": "perfops_test", "event_payload": {"acked_by": None}}
    for bad in (nested, null):
        with pytest.raises(SlackApiError) as refused:
            client.chat_postMessage(channel=perf, text="x", metadata=bad)
        assert refused.value.response["error"] == "invalid_metadata_format"
        assert refused.value.response["response_metadata"]["messages"]
    assert slack.messages == []  # nothing stored
    posted = client.chat_postMessage(channel=perf, text="x", metadata=good)
    with pytest.raises(SlackApiError) as refused:
        client.chat_update(channel=perf, ts=posted["ts"], text="y", metadata=nested)
    assert refused.value.response["error"] == "invalid_metadata_format"
    [message] = slack.messages
    assert message["text"] == "x" and message["metadata"] == good and message["updates"] == []
    changed = {"event_type": "perfops_test", "event_payload": {"k": "2"}}
    client.chat_update(channel=perf, ts=posted["ts"], text="y", metadata=changed)
    [read] = client.conversations_history(channel=perf, include_all_metadata=True)["messages"]
    assert read["metadata"] == changed and read["text"] == "y"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.chat_update(channel="#perfops", ts="1.0", text="x"),
        lambda c: c.conversations_history(channel="#perfops"),
        lambda c: c.conversations_replies(channel="#perfops", ts="1.0"),
        lambda c: c.conversations_info(channel="#perfops"),
    ],
    ids=["chat.update", "conversations.history", "conversations.replies", "conversations.info"],
)
def test_slack_reads_and_updates_take_ids_only(slack: SlackStandIn, call: Any) -> None:
    with pytest.raises(SlackApiError) as err:
        call(WebClient(token=DEFAULT_TOKEN, base_url=slack.base_url))
    assert err.value.response["error"] == "channel_not_found"


def test_slack_membership_and_missing_channels(slack: SlackStandIn) -> None:
    client = WebClient(token=DEFAULT_TOKEN, base_url=slack.base_url)
    outside = slack.add_channel("#outside", member=False)
    secret = slack.add_channel("#secret", private=True, member=False)
    archived = slack.add_channel("#old", archived=True)
    for channel, error in (
        ("#outside", "not_in_channel"),
        (outside, "not_in_channel"),
        ("#secret", "channel_not_found"),
        ("#nowhere", "channel_not_found"),
        ("#old", "is_archived"),
    ):
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(channel=channel, text="x")
        assert err.value.response["error"] == error, channel
    with pytest.raises(SlackApiError, match="not_in_channel"):
        client.conversations_history(channel=outside)
    assert client.conversations_info(channel=outside)["channel"]["is_member"] is False
    with pytest.raises(SlackApiError, match="channel_not_found"):
        client.conversations_info(channel=secret)
    names = {
        c["name"]
        for c in client.conversations_list(types="public_channel,private_channel")["channels"]
    }
    assert "outside" in names and "secret" not in names and "old" in names
    listed = client.conversations_list(exclude_archived=True)["channels"]
    assert archived not in {c["id"] for c in listed}


def test_slack_paging_threads_and_broadcasts(slack: SlackStandIn) -> None:
    client = WebClient(token=DEFAULT_TOKEN, base_url=slack.base_url)
    for i in range(5):
        slack.add_channel(f"extra-{i}")
    pages, cursor = [], None
    while True:
        page = client.conversations_list(limit=4, cursor=cursor)
        pages.append([c["name"] for c in page["channels"]])
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            break
    assert [len(p) for p in pages] == [4, 4, 4] and len({n for p in pages for n in p}) == 12
    perf = slack.channel_id("#perfops")
    root = client.chat_postMessage(channel=perf, text="root")["ts"]
    client.chat_postMessage(channel=perf, text="quiet reply", thread_ts=root)
    loud = client.chat_postMessage(
        channel=perf, text="loud reply", thread_ts=root, reply_broadcast=True
    )["ts"]
    history = client.conversations_history(channel=perf)["messages"]
    assert [m["text"] for m in history] == ["loud reply", "root"]  # newest first
    assert history[0]["subtype"] == "thread_broadcast" and history[1]["reply_count"] == 2
    first = client.conversations_history(channel=perf, limit=1)
    assert first["has_more"] and len(first["messages"]) == 1
    rest = client.conversations_history(
        channel=perf, limit=1, cursor=first["response_metadata"]["next_cursor"]
    )
    assert [m["text"] for m in rest["messages"]] == ["root"] and not rest["has_more"]
    thread = client.conversations_replies(channel=perf, ts=loud)["messages"]
    assert [m["text"] for m in thread] == ["root", "quiet reply", "loud reply"]
    assert "metadata" not in history[0]  # only with include_all_metadata
    assert client.conversations_history(channel=perf, oldest=root)["messages"][0]["ts"] == loud


def test_slack_rate_limit_is_retried(slack: SlackStandIn) -> None:
    client = WebClient(
        token=DEFAULT_TOKEN,
        base_url=slack.base_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    slack.fail_next(429, retry_after=1)
    assert client.chat_postMessage(channel="#perfops", text="hello")["ok"]
    assert [r.status for r in slack.requests] == [429, 200]
    assert len(slack.messages) == 1


def test_slack_server_error_needs_retry_handler(slack: SlackStandIn) -> None:
    slack.fail_next(500)
    with pytest.raises(SlackApiError) as err:
        WebClient(token=DEFAULT_TOKEN, base_url=slack.base_url).chat_postMessage(
            channel="#perfops", text="x"
        )
    assert err.value.response.status_code == 500
    slack.fail_next(503)
    retrying = WebClient(
        token=DEFAULT_TOKEN, base_url=slack.base_url, retry_handlers=[ServerErrorRetryHandler()]
    )
    assert retrying.chat_postMessage(channel="#perfops", text="x")["ok"]


def test_slack_500_after_storing_makes_a_blind_retry_post_twice(slack: SlackStandIn) -> None:
    """Why perfops does not let slack-sdk retry chat.postMessage after a 5xx."""
    retrying = WebClient(
        token=DEFAULT_TOKEN, base_url=slack.base_url, retry_handlers=[ServerErrorRetryHandler()]
    )
    slack.fail_next(500, method="chat.postMessage", after_handling=True)
    assert retrying.chat_postMessage(channel="#perfops", text="once")["ok"]
    assert [m["text"] for m in slack.messages] == ["once", "once"]
    slack.reset()
    slack.delay_next(1.5, method="chat.postMessage")
    with pytest.raises(TimeoutError):
        WebClient(token=DEFAULT_TOKEN, base_url=slack.base_url, timeout=1).chat_postMessage(
            channel="#perfops", text="held"
        )
    assert [m["text"] for m in slack.messages] == ["held"]  # stored all the same


# -- SMTP --------------------------------------------------------------------------------------


def test_smtp_receives_attachment_and_refuses_one_recipient() -> None:
    with SmtpServer(refuse={"gone@example.com"}) as smtp:
        msg = EmailMessage()
        msg["From"] = "perfops@example.com"
        msg["To"] = "ops@example.com, gone@example.com"
        msg["Subject"] = "Weekly report"
        msg.set_content("See attachment.")
        msg.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="r.csv")
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
            refused = client.send_message(msg)
        assert refused == {"gone@example.com": (550, b"5.1.1 mailbox unavailable")}

        ((mail_from, rcpt_tos, received),) = smtp.wait_for(1)
        assert (mail_from, rcpt_tos) == ("perfops@example.com", ["ops@example.com"])
        assert received["Subject"] == "Weekly report"
        (attachment,) = received.iter_attachments()
        assert attachment.get_filename() == "r.csv"
        assert attachment.get_content() == "a,b\n1,2\n"


# -- moto --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


def test_moto_s3_round_trip_with_sha256(moto: MotoServer) -> None:
    s3 = boto3.client("s3", **moto.client_kwargs())
    s3.create_bucket(Bucket="perfops-reports")
    body = b"report-bytes"
    s3.put_object(Bucket="perfops-reports", Key="r.csv", Body=body, ChecksumAlgorithm="SHA256")
    got = s3.get_object(Bucket="perfops-reports", Key="r.csv", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    moto.reset()
    assert s3.list_buckets()["Buckets"] == []


def test_moto_autoscaling(moto: MotoServer) -> None:
    asg = boto3.client("autoscaling", **moto.client_kwargs())
    asg.create_launch_configuration(
        LaunchConfigurationName="web-lc", ImageId="ami-12345678", InstanceType="t3.micro"
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName="web",
        LaunchConfigurationName="web-lc",
        MinSize=1,
        MaxSize=6,
        DesiredCapacity=2,
        AvailabilityZones=["us-east-1a"],
    )
    asg.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=4)
    asg.put_scheduled_update_group_action(
        AutoScalingGroupName="web", ScheduledActionName="night", Recurrence="0 22 * * *",
        DesiredCapacity=1,
    )  # fmt: skip
    (group,) = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])["AutoScalingGroups"]
    assert group["DesiredCapacity"] == 4 and len(group["Instances"]) == 4
    actions = asg.describe_scheduled_actions(AutoScalingGroupName="web")
    assert [a["Recurrence"] for a in actions["ScheduledUpdateGroupActions"]] == ["0 22 * * *"]


# -- clean shutdown ----------------------------------------------------------------------------


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_servers_stop_without_leftovers(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    slack, smtp, moto_server = SlackStandIn().start(), SmtpServer().start(), MotoServer().start()
    prom = PrometheusServer(tmp_path, SERIES[:1]).start()
    ports = [slack.port, smtp.port, prom.port, int(moto_server.endpoint_url.rsplit(":", 1)[1])]
    WebClient(token=DEFAULT_TOKEN, base_url=slack.base_url).auth_test()
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        assert client.noop()[0] == 250
    assert boto3.client("s3", **moto_server.client_kwargs()).list_buckets()["Buckets"] == []
    assert httpx.get(f"{prom.url}/-/healthy").status_code == 200
    for server in (slack, smtp, moto_server, prom):
        server.stop()
    assert [t for t in threading.enumerate() if t not in before] == []
    assert all(_port_closed(p) for p in ports)
