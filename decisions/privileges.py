"""May perfops change these tables? The privilege preflight of every step that changes a table
(index builds and drops, ANALYZE, partition DDL): which tables the role may act on, and one
message for the rest, said once instead of one failure per table.

PostgreSQL lets only a table's owner (or a member of the owner role, or a superuser) build or
drop its indexes, alter or drop it; ANALYZE and VACUUM also let the database's owner. Building
an index or creating a partition also needs CREATE on the table's schema. The caller reads, in
one query, each table's owner and whether the current role has those privileges
(`tasks.postgres.privileges.fetch_table_privileges`); this module decides. Pure: no Prefect,
no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from pydantic import BaseModel

from decisions.staleness import display_name, quote_ident

LISTED_TABLES = 5  # per owner, in the message; the rest are counted
T = TypeVar("T")


class TablePrivilege(BaseModel):
    """One table as the privilege query saw it."""

    schema_name: str
    table_name: str
    owner: str | None = None  # None: no such table (dropped meanwhile: the step reports it)
    owner_superuser: bool = False  # granting a superuser role is never the fix
    permitted: bool  # owner, member of the owner role, superuser (ANALYZE: or database owner)
    can_create: bool = True  # CREATE on the schema, where the step creates (indexes, partitions)

    @property
    def name(self) -> str:
        return display_name(self.schema_name, self.table_name)

    @property
    def allowed(self) -> bool:
        return self.owner is None or (self.permitted and self.can_create)


class PrivilegeCheck(BaseModel):
    """Which tables the role may change, and what it needs for the others."""

    role: str
    permitted: list[TablePrivilege]
    denied: list[TablePrivilege]

    def allows(self, schema_name: str, table_name: str) -> bool:
        return all((t.schema_name, t.table_name) != (schema_name, table_name) for t in self.denied)

    def reasons(self) -> dict[tuple[str, str], str]:
        """(schema, table) -> the short reason its row gives, for each table not permitted."""
        return {(t.schema_name, t.table_name): f"not attempted: {_needs(t)}" for t in self.denied}

    def refused(
        self, items: Iterable[T], table: Callable[[T], tuple[str, str]]
    ) -> list[tuple[T, str]]:
        """The items (tables, indexes, policies) whose table (`table(item)`: schema, name) is not
        permitted, each with the reason its row gives, in the order given."""
        reasons = self.reasons()
        return [(item, reasons[table(item)]) for item in items if table(item) in reasons]

    @property
    def message(self) -> str | None:
        """`needs ownership of public.orders, public.items (owner app_owner): grant app_owner to
        perfops ...`, or None when every table is permitted."""
        return privilege_message(self.role, self.denied)


def _needs(t: TablePrivilege) -> str:
    needs = [] if t.permitted else [f"needs ownership (owner {t.owner})"]
    needs += [] if t.can_create else [f"needs CREATE on schema {quote_ident(t.schema_name)}"]
    return "; ".join(needs)


def check_privileges(role: str, tables: list[TablePrivilege]) -> PrivilegeCheck:
    """Split the tables into those the role may change and those it may not (each once, in the
    order given). A table that no longer exists counts as permitted: the step itself reports it
    as dropped meanwhile."""
    seen: set[tuple[str, str]] = set()
    permitted: list[TablePrivilege] = []
    denied: list[TablePrivilege] = []
    for t in tables:
        key = (t.schema_name, t.table_name)
        if key in seen:
            continue
        seen.add(key)
        (permitted if t.allowed else denied).append(t)
    return PrivilegeCheck(role=role, permitted=permitted, denied=denied)


def privilege_message(role: str, denied: list[TablePrivilege]) -> str | None:
    """One line for all the tables the role may not change: the ones it does not own grouped by
    owner (names sorted, the first few listed) with the grant that fixes it, then the schemas
    it may not create in; None when there are none."""
    if not denied:
        return None
    grantee = quote_ident(role)
    by_owner: dict[str, list[str]] = {}
    superusers: set[str] = set()
    for t in denied:
        if not t.permitted:
            by_owner.setdefault(t.owner or "?", []).append(t.name)
            if t.owner_superuser:
                superusers.add(t.owner or "?")
    parts = []
    if by_owner:
        listed = []
        for owner, names in by_owner.items():
            names.sort()
            shown = ", ".join(names[:LISTED_TABLES])
            more = len(names) - LISTED_TABLES
            listed.append(f"{shown}{f' and {more} more' if more > 0 else ''} (owner {owner})")
        fixes = []
        grantable = [quote_ident(o) for o in by_owner if o not in superusers]
        if grantable:
            fixes.append(f"grant {', '.join(grantable)} to {grantee}")
        if superusers:
            owners = ", ".join(quote_ident(o) for o in sorted(superusers))
            fixes.append(
                f"tables owned by the superuser {owners}: give them an owner role that "
                f"{grantee} may join (alter table ... owner to app_owner; grant app_owner to "
                f"{grantee}), never a superuser role"
            )
        parts.append(
            f"needs ownership of {'; '.join(listed)}: {'; '.join(fixes)} "
            "(or run perfops as the owner)"
        )
    schemas = sorted({quote_ident(t.schema_name) for t in denied if not t.can_create})
    if schemas:
        parts.append(
            f"needs CREATE on schema {', '.join(schemas)}: grant create on schema "
            f"{', '.join(schemas)} to {grantee}"
        )
    return "; ".join(parts)
