"""The PostgreSQL target block."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from prefect.blocks.core import Block
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool
from pydantic import Field, SecretStr

from perfops.errors import ConfigurationError
from perfops.redaction import dsn_parse_error, register_secret

DEFAULT_APPLICATION_NAME = "perfops"
DEFAULT_LOCK_TIMEOUT_MS = 5_000
DEFAULT_STATEMENT_TIMEOUT_MS = 60_000
DEFAULT_CONNECT_TIMEOUT_S = 10


def database_address(params: Mapping[str, object]) -> tuple[str, str, str, str]:
    """(user, host, port, dbname) of parsed DSN `params`, normalised so that one database has
    one address however its DSN spells it: it names the database's event resource and its
    concurrency slots (`perfops-db-...`, `perfops-cluster-...`).

    Host names lowercased without a trailing dot (`DB1.Internal.` -> `db1.internal`); a Unix
    socket directory (`/var/run/postgresql`) kept as its path; no host: `hostaddr`, else
    `localhost`. Port as a number (`05432` -> `5432`), 5432 when not given. A host or port
    list (`h1,h2`) keeps each entry, normalised. dbname defaults to the user, as in libpq.
    Not merged: names and addresses of one machine (`localhost`, `127.0.0.1`, `::1`).
    """

    def host_of(raw: str) -> str:
        raw = raw.strip()
        return raw if raw.startswith("/") else raw.lower().rstrip(".")

    def port_of(raw: str) -> str:
        raw = raw.strip()
        return str(int(raw)) if raw.isdigit() else raw or "5432"

    user = str(params.get("user") or "")
    hosts = str(params.get("host") or params.get("hostaddr") or "localhost")
    host = ",".join(host_of(h) for h in hosts.split(",")) or "localhost"
    port = ",".join(port_of(p) for p in str(params.get("port") or "5432").split(","))
    dbname = str(params.get("dbname") or user)
    return user, host, port, dbname


class PostgresTarget(Block):
    """A PostgreSQL database that perfops reads statistics from and maintains.

    Every connection carries `application_name` (so `pg_stat_activity` shows who is working) and
    the default `lock_timeout` and `statement_timeout`; tasks tighten or widen them per statement.
    A Prefect timeout cannot interrupt a blocking psycopg call, so these server-side timeouts are
    what keeps a run from waiting forever.

    Example:
        Load a saved target and run a query:
        ```python
        from blocks import PostgresTarget

        target = PostgresTarget.load("BLOCK_NAME")
        with target.get_connection() as conn:
            print(conn.execute("select version()").fetchone())
        ```
    """

    _block_type_name = "perfops PostgreSQL Target"
    _block_type_slug = "perfops-postgres-target"
    _description = "A PostgreSQL database perfops analyses and maintains (DSN kept secret)."

    dsn: SecretStr = Field(
        default=...,
        description=(
            "libpq connection string or URI, e.g. postgresql://perfops@db.internal:5432/app. "
            "Stored encrypted; never logged."
        ),
    )
    application_name: str = Field(
        default=DEFAULT_APPLICATION_NAME,
        description="Shown in pg_stat_activity and the server log for every perfops session.",
    )
    lock_timeout_ms: int = Field(
        default=DEFAULT_LOCK_TIMEOUT_MS,
        ge=0,
        le=600_000,
        description="Default lock_timeout in milliseconds (0 disables it; not recommended).",
    )
    statement_timeout_ms: int = Field(
        default=DEFAULT_STATEMENT_TIMEOUT_MS,
        ge=0,
        le=86_400_000,
        description="Default statement_timeout in milliseconds (0 disables it).",
    )
    connect_timeout_s: int = Field(
        default=DEFAULT_CONNECT_TIMEOUT_S,
        ge=1,
        le=300,
        description="Seconds to wait for the server to accept a connection.",
    )

    def conninfo(self, **overrides: Any) -> str:
        """The full connection string with perfops' session settings (contains the password)."""
        dsn = self.dsn.get_secret_value()
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(
                f"invalid PostgreSQL DSN: {dsn_parse_error(str(exc), dsn)}"
            ) from None
        register_secret(str(params.get("password") or ""))
        lock_ms = overrides.pop("lock_timeout_ms", self.lock_timeout_ms)
        statement_ms = overrides.pop("statement_timeout_ms", self.statement_timeout_ms)
        # The DSN's own `options` (`-c search_path=app,extensions`) are kept; perfops' timeouts
        # come after them, so they win where both set one.
        own = str(params.get("options") or "").strip()
        timeouts = f"-c lock_timeout={int(lock_ms)} -c statement_timeout={int(statement_ms)}"
        return make_conninfo(
            dsn,
            application_name=self.application_name,
            connect_timeout=self.connect_timeout_s,
            options=f"{own} {timeouts}".strip(),
            **overrides,
        )

    def _address(self) -> tuple[str, str, str, str] | None:
        """(user, host, port, dbname) of the DSN, without the password, normalised
        (`database_address`); None if it is invalid."""
        try:
            params = conninfo_to_dict(self.dsn.get_secret_value())
        except psycopg.ProgrammingError:
            return None
        return database_address(params)

    def describe(self) -> str:
        """Where this target points, without the password: `user@host:port/dbname`."""
        address = self._address()
        if address is None:
            return "(invalid DSN)"
        user, host, port, dbname = address
        return f"{user}@{host}:{port}/{dbname}" if user else f"{host}:{port}/{dbname}"

    def resource_id(self) -> str:
        """The event resource id of this database: `perfops.postgres.<host>:<port>/<dbname>`."""
        address = self._address()
        if address is None:
            return "perfops.postgres.invalid-dsn"
        _, host, port, dbname = address
        return f"perfops.postgres.{host}:{port}/{dbname}"

    def get_connection(
        self,
        *,
        autocommit: bool = False,
        lock_timeout_ms: int | None = None,
        statement_timeout_ms: int | None = None,
    ) -> psycopg.Connection[DictRow]:
        """Open a connection whose rows are dicts, with this target's session settings."""
        overrides: dict[str, Any] = {}
        if lock_timeout_ms is not None:
            overrides["lock_timeout_ms"] = lock_timeout_ms
        if statement_timeout_ms is not None:
            overrides["statement_timeout_ms"] = statement_timeout_ms
        return psycopg.connect(
            self.conninfo(**overrides), autocommit=autocommit, row_factory=dict_row
        )

    def get_client(self) -> psycopg.Connection[DictRow]:
        """The upstream blocks' name for `get_connection()` with the target's defaults."""
        return self.get_connection()

    def get_pool(self, *, min_size: int = 1, max_size: int = 4) -> ConnectionPool:
        """A connection pool with this target's session settings (caller opens and closes it)."""
        return ConnectionPool(
            self.conninfo(),
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row},
            open=False,
        )
