"""Secrets never reach output: DSN and URL passwords, and registered secret values."""

import logging

from perfops.redaction import RedactingFilter, redact, register_secret


def test_uri_password_is_hidden_and_the_rest_kept() -> None:
    text = 'connection to "postgresql://app:s3cr3t-pw@db.internal:5432/prod" failed'
    assert redact(text) == 'connection to "postgresql://app:***@db.internal:5432/prod" failed'


def test_keyword_password_is_hidden_quoted_or_not() -> None:
    assert redact("host=db password=hunter2 user=app") == "host=db password=*** user=app"
    assert redact("host=db password='with space' user=app") == "host=db password=*** user=app"


def test_registered_secret_is_hidden_anywhere() -> None:
    register_secret("xoxb-registered-token-123")
    assert redact("token xoxb-registered-token-123 refused") == "token *** refused"


def test_short_values_are_not_registered() -> None:
    register_secret("abc")
    assert redact("abc def") == "abc def"


def test_log_filter_rewrites_the_record() -> None:
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "dsn %s", ("redis://u:pw123@h",), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "dsn redis://u:***@h"
