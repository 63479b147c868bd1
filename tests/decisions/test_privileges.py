"""The privilege preflight's decision: which tables a role may change, and the one message for
the rest (grouped by owner, with the grant that fixes it)."""

from __future__ import annotations

from decisions.privileges import (
    LISTED_TABLES,
    TablePrivilege,
    check_privileges,
    privilege_message,
)


def table(name: str, owner: str | None, permitted: bool, schema: str = "public") -> TablePrivilege:
    return TablePrivilege(schema_name=schema, table_name=name, owner=owner, permitted=permitted)


def test_denied_tables_are_named_once_with_their_owner_and_the_grant() -> None:
    check = check_privileges(
        "perfops",
        [
            table("orders", "app_owner", False),
            table("mine", "perfops", True),
            table("items", "app_owner", False),
            table("orders", "app_owner", False),  # the same table twice: listed once
        ],
    )
    assert [t.name for t in check.permitted] == ["public.mine"]
    assert [t.name for t in check.denied] == ["public.orders", "public.items"]
    assert check.message == (
        "needs ownership of public.items, public.orders (owner app_owner): grant app_owner to "
        "perfops (or run perfops as the owner)"
    )
    assert not check.allows("public", "orders") and check.allows("public", "mine")
    assert check.reasons() == {
        ("public", "orders"): "not attempted: needs ownership (owner app_owner)",
        ("public", "items"): "not attempted: needs ownership (owner app_owner)",
    }
    # What a flow acts on (indexes, policies...) is refused by its table, in the order given.
    indexes = [("orders_idx", "orders"), ("mine_idx", "mine"), ("items_idx", "items")]
    assert check.refused(indexes, lambda i: ("public", i[1])) == [
        (("orders_idx", "orders"), "not attempted: needs ownership (owner app_owner)"),
        (("items_idx", "items"), "not attempted: needs ownership (owner app_owner)"),
    ]


def test_everything_permitted_says_nothing() -> None:
    check = check_privileges("admin", [table("a", "x", True), table("b", "y", True)])
    assert check.denied == [] and check.message is None and check.reasons() == {}


def test_a_table_dropped_meanwhile_is_left_to_the_step_to_report() -> None:
    check = check_privileges("perfops", [table("gone", None, False)])
    assert check.denied == [] and check.allows("public", "gone")


def test_several_owners_quoted_names_and_long_lists() -> None:
    many = [table(f"t{i}", "app", False) for i in range(LISTED_TABLES + 3)]
    odd = table("Audit Logs", "Weird Owner", False, schema="My Schema")
    message = privilege_message("perfops-ro", [*many, odd])
    assert message == (
        "needs ownership of public.t0, public.t1, public.t2, public.t3, public.t4 and 3 more "
        '(owner app); "My Schema"."Audit Logs" (owner Weird Owner): grant app, "Weird Owner" '
        'to "perfops-ro" (or run perfops as the owner)'
    )
    assert privilege_message("perfops", []) is None


def test_creating_an_index_or_partition_also_needs_create_on_the_schema() -> None:
    owned = TablePrivilege(
        schema_name="app", table_name="orders", owner="perfops", permitted=True, can_create=False
    )
    neither = TablePrivilege(
        schema_name="App Data", table_name="t", owner="app_owner", permitted=False, can_create=False
    )
    check = check_privileges("perfops", [owned, neither])
    assert [t.name for t in check.denied] == ["app.orders", '"App Data".t']
    assert check.reasons() == {
        ("app", "orders"): "not attempted: needs CREATE on schema app",
        ("App Data", "t"): "not attempted: needs ownership (owner app_owner); needs CREATE on "
        'schema "App Data"',
    }
    assert check.message == (
        'needs ownership of "App Data".t (owner app_owner): grant app_owner to perfops (or run '
        'perfops as the owner); needs CREATE on schema "App Data", app: grant create on schema '
        '"App Data", app to perfops'
    )


def test_a_superuser_owner_is_never_the_role_to_grant() -> None:
    owned_by_postgres = TablePrivilege(
        schema_name="public",
        table_name="audit_logs",
        owner="postgres",
        owner_superuser=True,
        permitted=False,
    )
    message = privilege_message(
        "perfops_ro", [owned_by_postgres, table("orders", "app_owner", False)]
    )
    assert message is not None
    assert "grant app_owner to perfops_ro" in message
    assert "grant postgres" not in message
    assert "tables owned by the superuser postgres: give them an owner role" in message
