"""Retry only what a retry can cure."""

import smtplib
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError
from psycopg import errors as pg_errors

from tasks.transient_errors import RETRY_DEFAULTS, is_transient


def _client_error(status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": "X", "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (psycopg.OperationalError("connection refused"), True),
        (pg_errors.SerializationFailure(), True),
        (pg_errors.DeadlockDetected(), True),
        (pg_errors.LockNotAvailable(), True),
        (pg_errors.AdminShutdown(), True),
        (pg_errors.QueryCanceled(), False),
        (pg_errors.UndefinedTable(), False),
        (pg_errors.SyntaxError(), False),
        (smtplib.SMTPResponseException(451, b"try later"), True),
        (smtplib.SMTPResponseException(550, b"no such user"), False),
        (smtplib.SMTPServerDisconnected("gone"), True),
        (smtplib.SMTPRecipientsRefused({"a@x": (450, b"busy")}), True),
        (smtplib.SMTPRecipientsRefused({"a@x": (550, b"unknown")}), False),
        (_client_error(503), True),
        (_client_error(429), True),
        (_client_error(403), False),
        (TimeoutError(), True),
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (ValueError("bad input"), False),
    ],
)
def test_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_retry_defaults_back_off_with_jitter() -> None:
    delays = RETRY_DEFAULTS["retry_delay_seconds"](RETRY_DEFAULTS["retries"])
    assert delays == [1, 2]
    assert RETRY_DEFAULTS["retry_jitter_factor"] > 0


def test_wrapped_errors_are_classified_by_their_cause() -> None:
    from perfops.errors import ConnectionFailed

    try:
        try:
            raise psycopg.OperationalError("connection refused")
        except psycopg.OperationalError as inner:
            raise ConnectionFailed("cannot connect") from inner
    except ConnectionFailed as outer:
        assert is_transient(outer)
    try:
        try:
            raise _client_error(403)
        except ClientError as inner:
            raise ConnectionFailed("denied") from inner
    except ConnectionFailed as outer:
        assert not is_transient(outer)
