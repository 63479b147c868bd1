"""PostgreSQL tasks and helpers: queries and statements with per-statement timeouts, an advisory
lock, and what the server offers (version, extensions, preload libraries, recovery).

Statements are `psycopg.sql.Composable` (identifiers through `sql.Identifier`) or literal strings;
values always travel as parameters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from prefect import task
from psycopg import sql
from psycopg.abc import QueryNoTemplate as Query
from psycopg.rows import DictRow

from blocks import PostgresTarget
from decisions.diagnosis import ExtensionInfo, PostgresInfo
from perfops.errors import ConnectionFailed, LockBusy, ReadOnlyServer
from perfops.redaction import one_line
from tasks.transient_errors import RETRY_DEFAULTS

Params = Sequence[Any] | Mapping[str, Any] | None


@contextmanager
def connect(
    target: PostgresTarget,
    *,
    autocommit: bool = False,
    lock_timeout_ms: int | None = None,
    statement_timeout_ms: int | None = None,
) -> Iterator[psycopg.Connection[DictRow]]:
    """Open a connection to `target`; a failure to connect becomes a one-line `ConnectionFailed`."""
    try:
        conn = target.get_connection(
            autocommit=autocommit,
            lock_timeout_ms=lock_timeout_ms,
            statement_timeout_ms=statement_timeout_ms,
        )
    except psycopg.OperationalError as exc:
        first_line = one_line(exc, empty="failed")
        raise ConnectionFailed(
            f"cannot connect to PostgreSQL at {target.describe()}: {first_line}"
        ) from exc
    with conn:
        yield conn


def set_timeouts(
    conn: psycopg.Connection[Any],
    *,
    lock_timeout_ms: int | None = None,
    statement_timeout_ms: int | None = None,
    local: bool = True,
) -> None:
    """Set `lock_timeout` / `statement_timeout` for this transaction (`local`) or session."""
    for name, value in (
        ("lock_timeout", lock_timeout_ms),
        ("statement_timeout", statement_timeout_ms),
    ):
        if value is not None:
            conn.execute("select set_config(%s, %s, %s)", (name, f"{int(value)}ms", local))


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (same in every process and release)."""
    digest = hashlib.blake2b(f"perfops:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def advisory_lock(conn: psycopg.Connection[Any], name: str) -> Iterator[int]:
    """Hold a session-level advisory lock named `name`, or raise `LockBusy` at once.

    Session-level so it spans `CONCURRENTLY` statements that run outside a transaction; released
    on exit, and by the server if the connection drops (a crashed run never leaves it held).
    """
    key = lock_key(name)
    row = conn.execute("select pg_try_advisory_lock(%s) as locked", (key,)).fetchone()
    if not row or not _first(row):
        raise LockBusy(
            f"another perfops run holds the lock {name!r} (key {key}); nothing was changed, "
            "try again when it finishes"
        )
    try:
        yield key
    finally:
        if not conn.closed:
            conn.execute("select pg_advisory_unlock(%s)", (key,))


def ensure_primary(conn: psycopg.Connection[Any], what: str) -> None:
    """Refuse to change anything on a replica."""
    row = conn.execute("select pg_is_in_recovery() as in_recovery").fetchone()
    if row and _first(row):
        raise ReadOnlyServer(f"refusing to {what}: the server is a replica (pg_is_in_recovery())")


def extension_off_path(conn: psycopg.Connection[Any], name: str) -> str | None:
    """Why the installed extension `name` cannot be used by its bare names in this session (it
    lives in a schema not on the search_path: its views and functions are "not found"), with
    the fix; None when it is on the path (or not installed: the caller says that)."""
    gap = extension_path_gap(conn, name)
    return f"{gap[0]}: {gap[1]}" if gap else None


def extension_path_gap(conn: psycopg.Connection[Any], name: str) -> tuple[str, str] | None:
    """`extension_off_path` as (what is wrong, the fix), for a report that shows them apart."""
    row = conn.execute(
        "select n.nspname as schema, n.nspname = any(current_schemas(false)) as on_path, "
        "array_to_string(current_schemas(false), ', ') as path, current_user as role "
        "from pg_extension e join pg_namespace n on n.oid = e.extnamespace "
        "where e.extname = %s",
        (name,),
    ).fetchone()
    if row is None or row["on_path"]:
        return None
    schema = sql.Identifier(row["schema"]).as_string(conn)
    path = row["path"] or "(empty)"
    return (
        f"{name} is installed in schema {row['schema']} of database {conn.info.dbname}, which "
        f"is not on the search_path of {row['role']} ({path})",
        f"ALTER ROLE {sql.Identifier(row['role']).as_string(conn)} SET search_path = "
        f'"$user", public, {schema}; (or ALTER EXTENSION {name} SET SCHEMA public;)',
    )


def _first(row: Any) -> Any:
    return next(iter(row.values())) if isinstance(row, Mapping) else row[0]


@task(name="run_query", **RETRY_DEFAULTS)
def run_query(
    target: PostgresTarget,
    query: Query,
    params: Params = None,
    *,
    statement_timeout_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Run one read-only query and return its rows as dicts."""
    with connect(target, statement_timeout_ms=statement_timeout_ms) as conn:
        conn.read_only = True
        return [dict(r) for r in conn.execute(query, params).fetchall()]


@task(name="run_statement", **RETRY_DEFAULTS)
def run_statement(
    target: PostgresTarget,
    statement: Query,
    params: Params = None,
    *,
    lock_timeout_ms: int | None = None,
    statement_timeout_ms: int | None = None,
    autocommit: bool = False,
) -> int:
    """Run one statement (in its own transaction, or autocommit for `CONCURRENTLY`) and return the
    affected row count."""
    with connect(
        target,
        autocommit=autocommit,
        lock_timeout_ms=lock_timeout_ms,
        statement_timeout_ms=statement_timeout_ms,
    ) as conn:
        cur = conn.execute(statement, params)
        return cur.rowcount


WATCHED_EXTENSIONS = ("pg_stat_statements", "hypopg", "pg_partman")
# Used by their bare names (pg_partman's functions are called schema-qualified): off the role's
# search_path, the flows that use them fail (`extension_off_path`).
BARE_NAME_EXTENSIONS = ("pg_stat_statements", "hypopg")


@task(name="fetch_postgres_info", **RETRY_DEFAULTS)
def fetch_postgres_info(target: PostgresTarget) -> PostgresInfo:
    """Read version, role, recovery state, preload libraries and the extensions perfops uses."""
    with connect(target, statement_timeout_ms=10_000) as conn:
        head = conn.execute(
            """
            select current_setting('server_version') as server_version,
                   current_setting('server_version_num')::int as server_version_num,
                   current_database() as database,
                   current_user as current_user,
                   r.rolsuper as is_superuser,
                   (r.rolsuper or has_database_privilege(current_database(), 'CREATE'))
                       as can_create_extensions,
                   pg_is_in_recovery() as in_recovery,
                   -- a role without pg_read_all_settings may not read it: pg_settings then
                   -- hides the row (NULL), where current_setting() would fail the whole check
                   (select s.setting from pg_settings s
                    where s.name = 'shared_preload_libraries') as preload,
                   (r.rolsuper or pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'))
                       as reads_all_statements
            from pg_roles r where r.rolname = current_user
            """
        ).fetchone()
        assert head is not None
        rows = conn.execute(
            """
            select a.name, a.default_version as available_version,
                   a.installed_version
            from pg_available_extensions a
            where a.name = any(%s)
            """,
            (list(WATCHED_EXTENSIONS),),
        ).fetchall()
        gaps = {
            r["name"]: extension_path_gap(conn, r["name"])
            for r in rows
            if r["installed_version"] and r["name"] in BARE_NAME_EXTENSIONS
        }
    extensions = {r["name"]: ExtensionInfo(**r, off_path=gaps.get(r["name"])) for r in rows}
    setting = head.pop("preload")
    preload = None if setting is None else [p.strip() for p in setting.split(",") if p.strip()]
    return PostgresInfo(**head, shared_preload_libraries=preload, extensions=extensions)


PROBE_TIMEOUT_S = 3


def probe_postgres(target: PostgresTarget, timeout_s: int = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Can perfops reach `target`? Connects with a short `connect_timeout` and asks the server's
    version: (True, "PostgreSQL 15.8, primary") or (False, one line saying why). A plain
    function, not a task: `perfops fleet list` probes many targets at once from threads."""
    quick = target.model_copy(update={"connect_timeout_s": max(1, int(timeout_s))})
    try:
        with connect(quick, statement_timeout_ms=int(timeout_s * 1000)) as conn:
            row = conn.execute(
                "select current_setting('server_version') as version, "
                "pg_is_in_recovery() as replica"
            ).fetchone()
    except (ConnectionFailed, psycopg.Error) as exc:
        return False, one_line(exc, empty="failed")
    assert row is not None
    return True, f"PostgreSQL {row['version']}, {'replica' if row['replica'] else 'primary'}"
