"""The index advisor's decisions, tested directly: shapes, candidates, choice and reasons."""

from __future__ import annotations

import pytest

from decisions.indexing import (
    Candidate,
    Costing,
    ExistingIndex,
    QueryCost,
    ShapeError,
    TableRef,
    candidate_indexes,
    choose_indexes,
    covering_index,
    index_name,
    query_shape,
    table_matches,
)

ORDERS = TableRef("public", "orders")
CUSTOMERS = TableRef("sales", "Customers")
CATALOG = {
    ORDERS: ["id", "customer_id", "status", "created_at", "total"],
    CUSTOMERS: ["id", "region", "Name"],
}


def _use(query: str, table: TableRef = ORDERS) -> tuple[list[str], list[str], list[str]]:
    use = query_shape(query, CATALOG, ["public", "sales"]).tables[table]
    return use.equality, use.ranges, use.sort


def test_equality_range_and_sort_columns() -> None:
    assert _use(
        "select * from orders where customer_id = $1 and created_at >= $2 order by created_at desc"
    ) == (["customer_id"], ["created_at"], ["created_at"])


def test_in_between_and_null_tests() -> None:
    assert _use(
        "select id from orders o where o.status in ($1, $2) and o.total between $3 and $4 "
        "and o.created_at is null"
    ) == (["status", "created_at"], ["total"], [])


def test_join_columns_belong_to_each_side_and_quoted_names_resolve() -> None:
    shape = query_shape(
        'select c."Name" from orders o join sales."Customers" c on c.id = o.customer_id '
        "where c.region = $1",
        CATALOG,
        ["public"],
    )
    assert shape.tables[ORDERS].equality == ["customer_id"]
    assert shape.tables[CUSTOMERS].equality == ["id", "region"]


def test_or_branches_and_functions_are_not_indexed() -> None:
    with pytest.raises(ShapeError, match="no filter"):
        query_shape("select * from orders where status = $1 or total > $2", CATALOG)
    with pytest.raises(ShapeError, match="no filter"):
        query_shape("select * from orders where lower(status) = $1", CATALOG)


def test_unknown_tables_and_non_queries_are_skipped_with_a_reason() -> None:
    with pytest.raises(ShapeError, match="no filter"):
        query_shape("select * from elsewhere where x = $1", CATALOG)
    with pytest.raises(ShapeError, match="VacuumStmt is not a SELECT"):
        query_shape("vacuum orders", CATALOG)
    with pytest.raises(ShapeError, match="does not parse"):
        query_shape("select * from orders where customer_id = $1 and created_at >", CATALOG)


def test_subqueries_and_update_delete_are_read() -> None:
    shape = query_shape(
        "update orders set status = $1 where customer_id in "
        '(select id from sales."Customers" where region = $2)',
        CATALOG,
    )
    assert shape.tables[ORDERS].equality == ["customer_id"]
    assert shape.tables[CUSTOMERS].equality == ["region"]
    assert _use("delete from orders where created_at < $1") == ([], ["created_at"], [])


def test_candidates_put_equality_first_then_range_or_sort() -> None:
    shapes = [
        query_shape(
            "select * from orders where status = $1 and customer_id = $2 and created_at > $3 "
            "order by total limit 10",
            CATALOG,
        )
    ]
    keys = [c.columns for c in candidate_indexes(shapes)]
    assert ["status", "customer_id", "created_at"] in keys
    assert ["status", "customer_id", "total"] in keys
    assert ["status", "customer_id"] in keys
    assert ["customer_id"] in keys and ["created_at"] in keys
    assert all(len(k) <= 3 for k in keys)


def _candidate(*columns: str) -> Candidate:
    return Candidate(schema_name="public", table_name="orders", columns=list(columns))


def test_covering_index_is_same_leading_columns_btree_valid_not_partial() -> None:
    existing = [
        ExistingIndex(
            schema_name="public",
            table_name="orders",
            index_name="orders_c_s",
            columns=["customer_id", "status"],
            method="btree",
        ),
        ExistingIndex(
            schema_name="public",
            table_name="orders",
            index_name="orders_t_hash",
            columns=["total"],
            method="hash",
        ),
        ExistingIndex(
            schema_name="public",
            table_name="orders",
            index_name="orders_d_part",
            columns=["created_at"],
            method="btree",
            predicate="status = 'x'",
        ),
    ]
    assert covering_index(_candidate("customer_id"), existing).index_name == "orders_c_s"  # type: ignore[union-attr]
    assert covering_index(_candidate("status"), existing) is None
    assert covering_index(_candidate("total"), existing) is None
    assert covering_index(_candidate("created_at"), existing) is None


def _query(qid: int, cost: float, calls: int = 100) -> QueryCost:
    return QueryCost(
        queryid=qid, calls=calls, mean_ms=10.0, base_cost=cost, tables=["public.orders"]
    )


def test_greedy_choice_with_reasons() -> None:
    queries = [_query(1, 1000.0, calls=500), _query(2, 800.0, calls=50)]
    costings = [
        Costing(candidate=_candidate("customer_id"), size_bytes=1, costs={1: 10.0, 2: 790.0}),
        Costing(
            candidate=_candidate("customer_id", "created_at"), size_bytes=2, costs={1: 8.0, 2: 20.0}
        ),
        Costing(candidate=_candidate("status"), size_bytes=3, costs={1: 950.0, 2: 760.0}),
        Costing(candidate=_candidate("id"), size_bytes=4, costs={1: 5.0}),
    ]
    existing = [
        ExistingIndex(
            schema_name="public",
            table_name="orders",
            index_name="orders_pkey",
            columns=["id"],
            method="btree",
        )
    ]
    selection = choose_indexes(queries, costings, existing, min_saving=0.3, max_new_per_table=3)
    assert [c.candidate.columns for c in selection.chosen] == [["customer_id", "created_at"]]
    choice = selection.chosen[0]
    assert {e.queryid: (e.cost_before, e.cost_after) for e in choice.effects} == {
        1: (1000.0, 8.0),
        2: (800.0, 20.0),
    }
    reasons = {tuple(r.candidate.columns): r.reason for r in selection.rejected}
    assert reasons[("status",)] == "saves 5% < 30% on every query"
    assert reasons[("id",)] == "covered by orders_pkey (id)"
    assert reasons[("customer_id",)].startswith(
        "no further saving once public.orders(customer_id, created_at)"
    )


def test_cap_per_table() -> None:
    queries = [_query(1, 1000.0), _query(2, 1000.0)]
    costings = [
        Costing(candidate=_candidate("customer_id"), size_bytes=1, costs={1: 10.0, 2: 1000.0}),
        Costing(candidate=_candidate("status"), size_bytes=1, costs={1: 1000.0, 2: 20.0}),
    ]
    selection = choose_indexes(queries, costings, [], min_saving=0.3, max_new_per_table=1)
    assert len(selection.chosen) == 1
    assert any(
        r.reason == "cap of 1 new indexes on public.orders reached" for r in selection.rejected
    )


def test_index_names_are_safe_and_short() -> None:
    readable = index_name(_candidate("customer_id")).rsplit("_", 1)[0]  # then a hash of the key
    assert readable == "perfops_idx_orders_customer_id"
    long = Candidate(schema_name="s", table_name='x"; DROP TABLE y; --' * 3, columns=["a" * 40])
    name = index_name(long)
    assert len(name.encode()) <= 63 and '"' not in name and ";" not in name
    assert index_name(long) == name  # stable


def test_index_names_differ_where_their_readable_parts_collide() -> None:
    """`"order"(item_sku)` and `order_item(sku)` read alike once joined with `_`, `"Orders"` and
    `orders` once lowercased, and the punctuation of a name is folded away: the hash of each
    candidate's key keeps every name apart (a build failing with "already exists" then dropped
    another table's index)."""
    pairs = [
        (("order", ["item_sku"]), ("order_item", ["sku"])),
        (("Orders", ["id"]), ("orders", ["id"])),
        (("a-b", ["c"]), ("a_b", ["c"])),
        (("t" * 70, ["x"]), ("t" * 70, ["y"])),  # both cut to 63 bytes
    ]
    for (t1, c1), (t2, c2) in pairs:
        one = index_name(Candidate(schema_name="public", table_name=t1, columns=c1))
        two = index_name(Candidate(schema_name="public", table_name=t2, columns=c2))
        assert one != two, (one, two)
        assert len(one.encode()) <= 63 and len(two.encode()) <= 63
    assert index_name(_candidate("customer_id")) == index_name(_candidate("customer_id"))


def test_include_tables_takes_a_name_as_stored_or_as_sql_quotes_it() -> None:
    """The same convention as `stats --table` and `partitions rotate --table`: the quoted form
    errors list, and the stored form as before."""
    ref = TableRef("Sales", "Events")
    for name in ('"Sales"."Events"', "Sales.Events", '"Events"', "Events"):
        assert table_matches(ref, [name]), name
    for name in ("sales.events", "Other.Events", '"sales"."Events"'):
        assert not table_matches(ref, [name]), name
    assert table_matches(TableRef("public", "orders"), ["PUBLIC.Orders"])  # folded, as SQL
