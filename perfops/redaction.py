"""Keep secrets out of output: passwords in DSNs and URLs, and any registered secret value.

Alertmanager redacts webhook URLs from its errors; perfops does the same for every line it prints
or logs. `redact()` is applied to CLI errors and to records passing through the log handlers that
`install_log_redaction()` decorates.
"""

from __future__ import annotations

import logging
import re
import threading

REDACTED = "***"

# scheme://user:password@host  ->  scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)", re.I)
# password=secret or password='se cret' in libpq key/value strings
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s&]+)", re.I)
# ?password=... in URIs is caught by the key/value rule above.

# Utility statements (ALTER ROLE ... PASSWORD '...') reach pg_stat_statements verbatim.
_SECRET_WORDS = re.compile(r"\b(password|secret|token)\b", re.IGNORECASE)
_LITERAL = re.compile(r"'(?:[^']|'')*'|\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$", re.DOTALL)

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value so `redact()` hides it wherever it appears."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return `text` with passwords and registered secrets replaced by `***`."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)
    text = _KV_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


_DSN_HAS_PASSWORD = re.compile(r"password|://[^/@]*:[^/@]*@", re.IGNORECASE)
_QUOTED = re.compile(r'"[^"]*"')


def dsn_parse_error(reason: str, dsn: str) -> str:
    """libpq's reason a DSN does not parse, without the pieces of it libpq quotes (`missing "="
    after "horse"`: a word of a password with a space) when the DSN holds a password."""
    if _DSN_HAS_PASSWORD.search(dsn):
        reason = _QUOTED.sub(lambda m: m[0] if m[0] == '"="' else '"..."', reason)
    return redact(reason.strip())


def one_line(exc: BaseException, empty: str | None = None) -> str:
    """The first line of an error's message, redacted (its type name, or `empty`, when blank)."""
    text = str(exc).strip()
    if not text:
        return empty if empty is not None else type(exc).__name__
    return redact(text.splitlines()[0])


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Attach the redacting filter to every handler of the root and Prefect loggers."""
    for name in (None, "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


def mask_statement_secrets(query: str) -> str:
    """Mask every string literal of a statement that mentions a password, secret or token.

    pg_stat_statements replaces constants by `$n` in plannable statements only: a utility
    statement such as `ALTER ROLE app PASSWORD 'x'` is kept verbatim, password included.
    """
    if not _SECRET_WORDS.search(query):
        return query
    return _LITERAL.sub("'***'", query)
