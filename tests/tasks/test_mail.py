"""Email through a real SMTP server (aiosmtpd), and the .eml outbox."""

from __future__ import annotations

from email import message_from_bytes, policy
from pathlib import Path

import pytest
from prefect_email import EmailServerCredentials
from pydantic import SecretStr

from blocks.resolve import FileOutbox, resolve_email
from perfops.errors import ConfigurationError
from perfops.settings import PerfopsSettings
from tasks.mail import Attachment, InlineImage, build_message, send_email
from tests.servers import SmtpServer

pytestmark = pytest.mark.usefixtures("prefect_harness")

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
CSV = b"endpoint,p95_ms\n/api/v1/agents,87\n"


def _message(to: list[str]):  # type: ignore[no-untyped-def]
    return build_message(
        sender="perfops@example.test",
        to=to,
        subject="Weekly performance report",
        text="p95 87 ms (target 100 ms)",
        html='<p>p95 <b>87 ms</b></p><img src="cid:latency">',
        inline_images=[InlineImage(cid="latency", content=PNG)],
        attachments=[Attachment(filename="latency.csv", content=CSV, mime_type="text/csv")],
    )


def _creds(server: SmtpServer) -> EmailServerCredentials:
    resolved = resolve_email(settings=PerfopsSettings(smtp_host=server.host, smtp_port=server.port))
    assert resolved.origin == "environment"
    assert isinstance(resolved.value, EmailServerCredentials)
    return resolved.value


def test_email_arrives_with_inline_image_and_attachment(smtp_server: SmtpServer) -> None:
    smtp_server.reset()
    result = send_email(_creds(smtp_server), _message(["sre@example.test"]))
    assert result.accepted == ["sre@example.test"] and result.refused == {}
    [(sender, rcpts, msg)] = smtp_server.wait_for(1)
    assert (sender, rcpts) == ("perfops@example.test", ["sre@example.test"])
    assert msg["Subject"] == "Weekly performance report"
    parts = {p.get_content_type(): p for p in msg.walk()}
    assert parts["image/png"]["Content-ID"] == "<latency>"
    assert parts["image/png"].get_content() == PNG
    attachment = next(p for p in msg.iter_attachments() if p.get_filename() == "latency.csv")
    assert attachment.get_content().encode() == CSV
    assert "87 ms" in parts["text/plain"].get_content()


def test_refused_recipient_is_reported_and_others_still_receive(smtp_server: SmtpServer) -> None:
    smtp_server.reset()
    result = send_email(_creds(smtp_server), _message(["sre@example.test", "nobody@example.test"]))
    assert result.accepted == ["sre@example.test"]
    assert list(result.refused) == ["nobody@example.test"]
    assert result.refused["nobody@example.test"].startswith("550")
    [(_, rcpts, _)] = smtp_server.wait_for(1)
    assert rcpts == ["sre@example.test"]


def test_a_display_name_with_a_comma_is_one_recipient(smtp_server: SmtpServer) -> None:
    smtp_server.reset()
    result = send_email(_creds(smtp_server), _message(['"Doe, John" <john@example.test>']))
    assert result.accepted == ["john@example.test"] and result.refused == {}
    [(_, rcpts, _)] = smtp_server.wait_for(1)
    assert rcpts == ["john@example.test"]


def test_a_recipient_with_a_line_break_is_refused_naming_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        _message(["a@example.test\nBcc: b@example.test"])
    assert "'a@example.test\\nBcc: b@example.test' has a line break" in str(caught.value)


def test_smtp_down_is_retried_then_fails(caplog: pytest.LogCaptureFixture) -> None:
    from tests.servers import free_port

    creds = EmailServerCredentials(
        smtp_server="127.0.0.1", smtp_port=free_port(), smtp_type="INSECURE", password=SecretStr("")
    )
    state = send_email.with_options(retries=2, retry_delay_seconds=0)(
        creds, _message(["sre@example.test"]), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ConnectionRefusedError):
        state.result()
    assert sum("will start immediately" in r.getMessage() for r in caplog.records) == 2


def test_outbox_writes_an_eml_a_mail_client_opens(tmp_path: Path) -> None:
    result = send_email(FileOutbox(directory=tmp_path), _message(["sre@example.test"]))
    assert result.sink == "file" and result.location
    parsed = message_from_bytes(Path(result.location).read_bytes(), policy=policy.default)
    assert parsed["To"] == "sre@example.test"
    assert any(p.get_filename() == "latency.csv" for p in parsed.iter_attachments())


def test_message_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        _message([])


def test_every_recipient_refused_is_reported_as_refused_not_as_a_server_failure(
    smtp_server: SmtpServer,
) -> None:
    """One recipient (a team list, mistyped) the server refuses with 550 raised
    SMTPRecipientsRefused: the run said 'FAILED to send ... {'nobody@...': (550, b'...')}' as if
    the server were down, with `refused` empty in the result and the event."""
    smtp_server.reset()
    result = send_email(_creds(smtp_server), _message(["nobody@example.test"]))
    assert result.accepted == []
    assert result.refused == {"nobody@example.test": "550 5.1.1 mailbox unavailable"}
