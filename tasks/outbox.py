"""The file outbox: where Slack notices and emails go when no Slack token or SMTP server is
configured. Each notice is one JSON line; each email one `.eml` file a mail client opens."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from prefect import task

from blocks.resolve import FileOutbox

SLACK_LOG = "messages.jsonl"


def write_slack_notice(outbox: FileOutbox, record: dict[str, Any]) -> str:
    """Append a notice; returns a Slack-like `ts` so callers can thread and update as usual."""
    outbox.directory.mkdir(parents=True, exist_ok=True)
    ts = record.get("ts") or f"{time.time():.6f}"
    line = {"ts": ts, "written_at": datetime.now(UTC).isoformat(), **record}
    with (outbox.directory / SLACK_LOG).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, default=str) + "\n")
    return str(ts)


def read_slack_notices(outbox: FileOutbox) -> list[dict[str, Any]]:
    """Every notice written so far, oldest first."""
    path = outbox.directory / SLACK_LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_email(outbox: FileOutbox, message: EmailMessage) -> Path:
    """Write the message as an `.eml` file and return its path."""
    outbox.directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = outbox.directory / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
    path.write_bytes(bytes(message))
    return path


@task(name="check_outbox_writable")
def check_outbox_writable(outbox: FileOutbox) -> str:
    """Create the outbox folder if needed and prove a file can be written there."""
    outbox.directory.mkdir(parents=True, exist_ok=True)
    probe = outbox.directory / ".perfops-write-probe"
    probe.write_text("ok\n")
    probe.unlink()
    return str(outbox.directory)
