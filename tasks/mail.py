"""Email tasks: build a message (plain text, optional HTML with inline images, attachments) and
send it through prefect-email's `EmailServerCredentials`, or write it to the file outbox.

prefect-email's `get_server()` opens the SMTP connection without a socket timeout, so a stalled
server would hang the run; `open_smtp` reads the same block fields and always sets one.
Transient SMTP failures (4xx replies, dropped or refused connections) are retried by Prefect with
backoff and jitter; a 5xx refusal fails at once. Recipients the server refuses are reported in the
result, not raised, whether others are accepted or not (every one refused for good, 5xx: nobody
got it, and the result says who and why); every one refused for now (4xx) is retried.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from prefect import task
from prefect_email import EmailServerCredentials
from prefect_email.credentials import SMTPType
from pydantic import BaseModel, Field

from blocks.resolve import EmailSink, FileOutbox
from decisions.recipients import addresses_of, check_recipients
from perfops.redaction import register_secret
from tasks.outbox import write_email
from tasks.transient_errors import RETRY_DEFAULTS, is_transient

SMTP_TIMEOUT_S = 30.0


class Attachment(BaseModel):
    filename: str
    content: bytes
    mime_type: str = Field(default="application/octet-stream", pattern=r"^[\w.+-]+/[\w.+-]+$")


class InlineImage(BaseModel):
    """An image the HTML part shows with `<img src="cid:CID">`."""

    cid: str = Field(pattern=r"^[\w.-]+$")
    content: bytes
    subtype: str = "png"


class SendResult(BaseModel):
    """Who got the message, who was refused, and where it went."""

    accepted: list[str]
    refused: dict[str, str]
    sink: str
    location: str | None = None


def build_message(
    *,
    sender: str,
    to: list[str],
    subject: str,
    text: str,
    html: str | None = None,
    inline_images: list[InlineImage] | None = None,
    attachments: list[Attachment] | None = None,
) -> EmailMessage:
    """A standards-compliant message: text, then HTML alternative with related inline images.
    Each of `to` must be one address (a display name may hold a comma); `ConfigurationError`
    names those that are not."""
    if not to:
        raise ValueError("an email needs at least one recipient")
    check_recipients(to, "email recipients")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "perfops.local")
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
        html_part = message.get_body(preferencelist=("html",))
        assert isinstance(html_part, EmailMessage)
        for image in inline_images or []:
            html_part.add_related(
                image.content,
                maintype="image",
                subtype=image.subtype,
                cid=f"<{image.cid}>",
                filename=f"{image.cid}.{image.subtype}",
                disposition="inline",
            )
    for item in attachments or []:
        maintype, _, subtype = item.mime_type.partition("/")
        message.add_attachment(
            item.content, maintype=maintype, subtype=subtype, filename=item.filename
        )
    return message


def open_smtp(creds: EmailServerCredentials, timeout_s: float = SMTP_TIMEOUT_S) -> smtplib.SMTP:
    """Connect and log in as the block describes, with a socket timeout."""
    host = str(getattr(creds.smtp_server, "value", creds.smtp_server))
    smtp_type = creds.smtp_type if isinstance(creds.smtp_type, SMTPType) else SMTPType.INSECURE
    port = creds.smtp_port or smtp_type.value
    context = ssl.create_default_context()
    if creds.verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    server: smtplib.SMTP
    if smtp_type == SMTPType.SSL:
        server = smtplib.SMTP_SSL(host, port, timeout=timeout_s, context=context)
    else:
        server = smtplib.SMTP(host, port, timeout=timeout_s)
        if smtp_type == SMTPType.STARTTLS:
            server.starttls(context=context)
    password = creds.password.get_secret_value() if creds.password else ""
    if creds.username:
        register_secret(password)
        server.login(creds.username, password)
    return server


@task(name="send_email", **RETRY_DEFAULTS)
def send_email(sink: EmailSink, message: EmailMessage) -> SendResult:
    """Send `message` to its To/Cc recipients (or write it to the outbox)."""
    recipients = addresses_of(str(message.get("To", "")), str(message.get("Cc", "")))
    if isinstance(sink, FileOutbox):
        path = write_email(sink, message)
        return SendResult(accepted=recipients, refused={}, sink="file", location=str(path))
    with open_smtp(sink) as server:
        try:
            refused_raw = server.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:  # every one refused: nothing was sent
            if is_transient(exc):
                raise  # all of them 4xx: a retry may get through
            refused_raw = exc.recipients
    refused = {
        addr: f"{code} {reply.decode(errors='replace')}"
        for addr, (code, reply) in refused_raw.items()
    }
    accepted = [r for r in recipients if r not in refused]
    host = str(getattr(sink.smtp_server, "value", sink.smtp_server))
    return SendResult(accepted=accepted, refused=refused, sink="smtp", location=host)


@task(name="fetch_smtp_greeting")
def fetch_smtp_greeting(creds: EmailServerCredentials) -> str:
    """Connect, log in if configured, and return the server's EHLO greeting line."""
    with open_smtp(creds) as server:
        code, reply = server.ehlo()
    if code >= 400:
        raise smtplib.SMTPResponseException(code, reply)
    return reply.decode(errors="replace").splitlines()[0]
