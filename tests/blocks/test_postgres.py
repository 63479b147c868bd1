"""The address of a PostgreSQL target: one database has one event resource id, and so one
`perfops-db-...` and `perfops-cluster-...` slot, however its DSN spells the host and port."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from blocks import PostgresTarget
from blocks.postgres import database_address
from decisions.fleet import cluster_limit, database_limit, server_of


def resource(dsn: str) -> str:
    return PostgresTarget(dsn=SecretStr(dsn)).resource_id()


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db1.internal port=5432 dbname=orders",
        "host=DB1.Internal port=5432 dbname=orders",
        "host=db1.internal. port=5432 dbname=orders",  # the fully qualified name
        "host=db1.internal port=05432 dbname=orders",
        "host=db1.internal dbname=orders",  # the default port
        "postgresql://app:secret@DB1.internal:5432/orders",
    ],
)
def test_one_database_one_address_however_the_dsn_spells_it(dsn: str) -> None:
    assert resource(dsn) == "perfops.postgres.db1.internal:5432/orders"
    assert database_limit(resource(dsn)) == "perfops-db-db1.internal:5432:orders"
    assert server_of(resource(dsn)) == "db1.internal:5432"


def test_a_socket_keeps_its_path_and_other_servers_stay_apart() -> None:
    socket = resource("host=/var/run/postgresql dbname=orders user=app")
    assert socket == "perfops.postgres./var/run/postgresql:5432/orders"
    assert cluster_limit(server_of(socket)) != "perfops-cluster-"
    assert resource("host=/Tmp/PG dbname=orders") == "perfops.postgres./Tmp/PG:5432/orders"
    assert resource("host=db1.internal port=6432 dbname=orders") != resource(
        "host=db1.internal dbname=orders"
    )
    assert resource("host=db1.internal dbname=Orders") != resource(
        "host=db1.internal dbname=orders"
    )  # database names are case-sensitive


def test_what_the_address_falls_back_to() -> None:
    assert database_address({"user": "app"}) == ("app", "localhost", "5432", "app")
    assert database_address({"hostaddr": "10.0.0.7", "dbname": "x"})[1:3] == (
        "10.0.0.7",
        "5432",
    )
    assert database_address({"host": "H1.,h2", "port": "5432,05433", "dbname": "x"}) == (
        "",
        "h1,h2",
        "5432,5433",
        "x",
    )
    # left as they are (documented): two names of one machine
    assert resource("host=localhost dbname=x") != resource("host=127.0.0.1 dbname=x")


def test_a_dsn_that_does_not_parse_names_no_piece_of_its_password() -> None:
    """libpq quotes the word it stopped at (`missing "=" after "horse"`): with a password of
    several words left unquoted, a word of it. A saved block's DSN fails in the flow, where the
    message becomes the run's state, the doctor's detail and a fleet row's reason."""
    from perfops.errors import ConfigurationError

    target = PostgresTarget(dsn=SecretStr("host=db.internal password=correct horse battery"))
    with pytest.raises(ConfigurationError) as caught:
        target.conninfo()
    assert str(caught.value) == (
        'invalid PostgreSQL DSN: missing "=" after "..." in connection info string'
    )
    plain = PostgresTarget(dsn=SecretStr("host=db.internal dbname"))
    with pytest.raises(ConfigurationError, match='after "dbname"'):  # no password: as it is
        plain.conninfo()


def test_the_dsn_options_are_kept_and_perfops_timeouts_win(pg_dsn: str) -> None:
    """Before, perfops replaced the DSN's `options` with its timeouts: a DSN reaching its
    extensions with `-c search_path=...` lost it (hypopg 'not on the search_path', statements
    resolved in another schema), and every other setting given there was dropped silently."""
    from psycopg.conninfo import make_conninfo

    from tasks.postgres.server import connect

    dsn = make_conninfo(
        pg_dsn, options="-c search_path=pg_catalog,public -c work_mem=7MB -c lock_timeout=9"
    )
    target = PostgresTarget(dsn=SecretStr(dsn), lock_timeout_ms=1_234)
    with connect(target) as conn:
        got = conn.execute(
            "select current_setting('search_path') as path, current_setting('work_mem') as mem,"
            " current_setting('lock_timeout') as lock"
        ).fetchone()
    assert got == {"path": "pg_catalog,public", "mem": "7MB", "lock": "1234ms"}
