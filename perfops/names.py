"""Table names as a person types them on the command line (`--table`), read one way by every
command: `stats refresh`, `indexes suggest` and `partitions rotate`.

PostgreSQL reads `schema.table` with unquoted parts folded to lower case and double-quoted parts
kept as written (`"Sales"."Events"`, `""` for a quote). Every error that lists tables writes them
that way (`display_name`), so a name copied from an error is a name the flag accepts. The table
filters of `stats` and `indexes suggest` also keep accepting the name exactly as stored
(`Sales.Events`), as they always did.
"""

from __future__ import annotations

import re

_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")
_PART = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_QUALIFIED = re.compile(rf"({_PART})\.({_PART})")
_BARE = re.compile(rf"({_PART})")


def quote_ident(name: str) -> str:
    """Quote an identifier the way `quote_ident()` does when it is not plain lower case."""
    if _PLAIN_IDENTIFIER.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def display_name(schema: str, table: str) -> str:
    """`schema.table` as PostgreSQL would quote it (for people; SQL uses `sql.Identifier`)."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def unquote(part: str) -> str:
    """One part as PostgreSQL reads it: quoted kept (`""` -> `"`), unquoted folded to lower."""
    if part.startswith('"'):
        return part[1:-1].replace('""', '"')
    return part.lower()


def schema_name(value: str) -> str:
    """A schema filter name as stored: `Mixed Case` as it is, or as PostgreSQL quotes it and
    perfops prints it (`"Mixed Case"`, `""` for a quote) unquoted."""
    text = value.strip()
    if re.fullmatch(r'"(?:[^"]|"")+"', text):
        return unquote(text)
    return value


def read_qualified(value: str) -> tuple[str, str] | None:
    """`schema.table` as PostgreSQL reads it -> (schema, table) as stored; None when it is not
    one schema-qualified name."""
    match = _QUALIFIED.fullmatch(value.strip())
    return (unquote(match.group(1)), unquote(match.group(2))) if match else None


def read_table_name(value: str) -> tuple[str | None, str] | None:
    """`schema.table` or a bare `table` as PostgreSQL reads it -> (schema or None, table);
    None when it is neither (a glob, say)."""
    qualified = read_qualified(value)
    if qualified is not None:
        return qualified
    match = _BARE.fullmatch(value.strip())
    return (None, unquote(match.group(1))) if match else None


def names_table(value: str, schema: str, table: str) -> bool:
    """Does the filter name `value` name the table `schema.table`: as stored (`Sales.Events`,
    `Events`) or as PostgreSQL reads it (`"Sales"."Events"`, `sales.events` for a lower-case
    table)?"""
    if value in (f"{schema}.{table}", table):
        return True
    read = read_table_name(value)
    return read is not None and read[1] == table and read[0] in (None, schema)
