"""Email recipients: each entry one address, checked before a run does any work, and the
addresses a message goes to (its To and Cc headers parsed as RFC 5322 address lists, so a
display name with a comma, `"Doe, John" <john@example.com>`, is one recipient). Pure.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

from perfops.errors import ConfigurationError

# The address itself (after any display name): one @, no spaces, brackets or separators.
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+$")
EXAMPLE = 'sre@example.com or "Doe, John" <john@example.com>'


def recipient_problem(entry: str) -> str | None:
    """Why `entry` is not one email address (a line break, several addresses, no address), or
    None when it is one."""
    if any(ord(c) < 32 or ord(c) == 127 for c in entry):
        return "has a line break or another control character"
    parsed = [a for a in getaddresses([entry]) if any(a)]
    if len(parsed) != 1:
        return f"holds {len(parsed)} addresses: give each one on its own"
    if not _ADDRESS.match(parsed[0][1]):
        return "is not an email address"
    return None


def check_recipients(entries: list[str], source: str) -> None:
    """Raise `ConfigurationError` naming every entry of `source` (where they came from: the
    `recipients` parameter, a file) that is not one email address."""
    problems = [f"{e!r} {why}" for e in entries if (why := recipient_problem(e))]
    if problems:
        raise ConfigurationError(
            f"{source}: {'; '.join(problems)}; give one address per recipient, like {EXAMPLE}"
        )


def addresses_of(*headers: str) -> list[str]:
    """The addresses of address-list header values (To, Cc), display names left out."""
    return [address for _, address in getaddresses([h for h in headers if h]) if address]
