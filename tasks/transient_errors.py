"""Is an error worth retrying? A pure classification shared by every task's retry policy.

Transient: timeouts, refused or dropped connections, HTTP 429 and 5xx, PostgreSQL serialization
failures, deadlocks, lock timeouts and admin shutdowns, SMTP 4xx replies. Everything else
(bad SQL, a missing table, 4xx from an API, a refused recipient) is permanent and fails at once.
"""

from __future__ import annotations

import smtplib
import socket
from typing import Any

import psycopg
from prefect.tasks import exponential_backoff

# PostgreSQL SQLSTATE classes and codes that a retry can cure.
_PG_TRANSIENT_CLASSES = (
    "08",
    "53",
    "57P",
)  # connection exception, insufficient resources, shutdown
_PG_TRANSIENT_CODES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
}
_PG_PERMANENT_CODES = {"57014"}  # query_canceled (statement_timeout): retrying repeats the wait


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same call later can reasonably succeed.

    perfops wraps client errors in its own one-line errors (`ConnectionFailed`, ...); the
    original error, kept as `__cause__`, decides.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_transient_one(current):
            return True
        current = current.__cause__
    return False


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, psycopg.Error):
        code = exc.sqlstate
        if code is None:
            # No SQLSTATE: the client failed to connect or lost the connection.
            return isinstance(exc, psycopg.OperationalError)
        if code in _PG_PERMANENT_CODES:
            return False
        return code in _PG_TRANSIENT_CODES or code.startswith(_PG_TRANSIENT_CLASSES)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return True
    status = _http_status(exc)
    if status is not None:
        return status == 429 or status >= 500
    return isinstance(exc, TimeoutError | ConnectionError | socket.timeout)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status carried by an httpx, requests, botocore or slack-sdk error, if any."""
    response = getattr(exc, "response", None)
    for attr in ("status_code", "status"):
        value = getattr(response, attr, None)
        if isinstance(value, int):
            return value
    if isinstance(response, dict):  # botocore ClientError
        meta = response.get("ResponseMetadata", {})
        value = meta.get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    return None


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only when the failure is transient."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classifying is the point
        return is_transient(exc)
    return False


RETRY_DEFAULTS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_transient,
}
"""Task options for one I/O step: 2 retries about 1 and 2 s apart (+-50% jitter), transient
errors only, so an unreachable server still fails within a few seconds."""
