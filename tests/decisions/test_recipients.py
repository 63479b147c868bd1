"""Recipients: one address per entry, checked before a run does any work; a message's
recipients counted as RFC 5322 address lists (a display name may hold a comma)."""

from __future__ import annotations

import pytest

from decisions.recipients import addresses_of, check_recipients, recipient_problem
from perfops.errors import ConfigurationError


@pytest.mark.parametrize(
    "entry", ["sre@example.com", '"Doe, John" <john@example.com>', "Ops <ops@example.test>"]
)
def test_one_address_with_or_without_a_display_name_is_fine(entry: str) -> None:
    assert recipient_problem(entry) is None


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("sre@example.com\nBcc: all@example.com", "has a line break"),
        ("sre@example.com\r\n", "has a line break"),
        ("a@example.com, b@example.com", "holds 2 addresses"),
        ("not an address", "is not an email address"),
        ("sre@", "holds 0 addresses"),
        ("", "holds 0 addresses"),
    ],
)
def test_what_is_not_one_address_is_named_with_why(entry: str, why: str) -> None:
    assert (recipient_problem(entry) or "").startswith(why)


def test_every_bad_entry_is_named_with_where_it_came_from() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_recipients(["ok@example.com", "x@y.test\nBcc: z@y.test", "nobody"], "recipients")
    message = str(caught.value)
    assert message.startswith("recipients: 'x@y.test\\nBcc: z@y.test' has a line break")
    assert "'nobody' is not an email address" in message and "ok@example.com" not in message
    check_recipients(["ok@example.com"], "recipients")  # no error


def test_a_display_name_with_a_comma_is_one_recipient() -> None:
    to = '"Doe, John" <john@example.com>, sre@example.com'
    assert addresses_of(to, "") == ["john@example.com", "sre@example.com"]
    assert addresses_of(to, "cc@example.com") == [
        "john@example.com",
        "sre@example.com",
        "cc@example.com",
    ]
