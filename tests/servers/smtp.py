"""A recording SMTP server (aiosmtpd) on 127.0.0.1 for e-mail tests.

Plain SMTP only (no STARTTLS/AUTH): use prefect-email's ``SMTPType.INSECURE`` without a username.
aiosmtpd's ``Controller`` cannot take port 0 (it connects to itself to check readiness), hence
:func:`free_port`.
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from demo.local_server import LocalServer, free_port

ReceivedMessage = tuple[str, list[str], EmailMessage]
"""(envelope MAIL FROM, envelope RCPT TOs, parsed message)."""


class _RecordingHandler:
    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.owner.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.owner._record((str(envelope.mail_from), list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class SmtpServer(LocalServer):
    """SMTP server recording every accepted message in ``.messages``."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.refuse = {a.lower() for a in refuse or set()}
        self.host = "127.0.0.1"
        self.port = 0
        self._messages: list[ReceivedMessage] = []
        self._cond = threading.Condition()
        self._controller: Controller | None = None

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._cond:
            return list(self._messages)

    def _record(self, item: ReceivedMessage) -> None:
        with self._cond:
            self._messages.append(item)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedMessage]:
        """Block until at least ``count`` messages arrived; return them (TimeoutError if not)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"got {len(self._messages)} of {count} messages")
                self._cond.wait(remaining)
            return list(self._messages)

    def reset(self) -> None:
        with self._cond:
            self._messages.clear()

    def start(self) -> SmtpServer:
        if self._controller is not None:
            raise RuntimeError("SmtpServer already started")
        self.port = free_port()
        controller = Controller(_RecordingHandler(self), hostname=self.host, port=self.port)
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
