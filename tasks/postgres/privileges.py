"""Which tables the current role may change: the privilege preflight, one catalog query for all
the tables a run is about to touch (`decisions.privileges` decides and words the message)."""

from __future__ import annotations

from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql

from blocks import PostgresTarget
from decisions.privileges import PrivilegeCheck, TablePrivilege, check_privileges
from tasks.postgres.server import connect
from tasks.transient_errors import RETRY_DEFAULTS

# ANALYZE and VACUUM: the table's owner or the database's owner (or a member of either role), a
# superuser, or (PostgreSQL 17+) the MAINTAIN privilege on the table. DDL (DROP INDEX, DETACH,
# DROP TABLE): the table's owner only. "create" (CREATE INDEX, CREATE TABLE ... PARTITION OF):
# the table's owner and CREATE on its schema.
Action = Literal["analyze", "ddl", "create"]

_QUERY = sql.SQL("""
    select t.schema_name, t.table_name, r.rolname as owner, r.rolsuper as owner_superuser,
           coalesce(
               pg_has_role(current_user, c.relowner, 'USAGE')
               or (%(analyze)s and pg_has_role(current_user, d.datdba, 'USAGE'))
               or me.rolsuper{maintain},
               false) as permitted,
           (not %(create)s or n.oid is null
            or has_schema_privilege(current_user, n.oid, 'CREATE')) as can_create
    from unnest(%(schemas)s::text[], %(tables)s::text[]) as t(schema_name, table_name)
    left join pg_namespace n on n.nspname = t.schema_name
    left join pg_class c on c.relnamespace = n.oid and c.relname = t.table_name
    left join pg_roles r on r.oid = c.relowner
    cross join (select rolsuper from pg_roles where rolname = current_user) me
    cross join (select datdba from pg_database where datname = current_database()) d
""")
# PostgreSQL 17's MAINTAIN privilege (ANALYZE, VACUUM); older servers do not know the word.
_MAINTAIN = sql.SQL("\n or has_table_privilege(c.oid, 'MAINTAIN')")


@task(name="fetch_table_privileges", cache_policy=NO_CACHE, **RETRY_DEFAULTS)
def fetch_table_privileges(
    target: PostgresTarget, tables: list[tuple[str, str]], action: Action = "ddl"
) -> PrivilegeCheck:
    """For each (schema, table): its owner and whether the current role may `action` it, in one
    catalog query (no lock on any table); decided by `decisions.privileges.check_privileges`."""
    with connect(target, statement_timeout_ms=30_000) as conn:
        conn.read_only = True
        role_row = conn.execute("select current_user as role").fetchone()
        maintain = action == "analyze" and conn.info.server_version >= 170000
        query = _QUERY.format(maintain=_MAINTAIN if maintain else sql.SQL(""))
        rows = conn.execute(
            query,
            {
                "schemas": [s for s, _ in tables],
                "tables": [t for _, t in tables],
                "analyze": action == "analyze",
                "create": action == "create",
            },
        ).fetchall()
    role = str(role_row["role"]) if role_row else "?"
    return check_privileges(
        role,
        [
            TablePrivilege(
                schema_name=r["schema_name"],
                table_name=r["table_name"],
                owner=r["owner"],
                owner_superuser=bool(r["owner_superuser"]),
                permitted=bool(r["permitted"]) if r["owner"] is not None else True,
                can_create=bool(r["can_create"]),
            )
            for r in rows
        ],
    )
