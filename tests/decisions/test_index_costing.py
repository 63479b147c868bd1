"""Skew-aware costing and the ORDER BY ... LIMIT candidate class, tested directly (no server)."""

from __future__ import annotations

import pytest

from decisions.index_costing import (
    ColumnStats,
    CostingPlan,
    Variant,
    bind_parameter,
    measurable,
    parameter_columns,
    plannable_text,
    skew_plan,
    weighted_cost,
)
from decisions.indexing import (
    Candidate,
    Costing,
    ExistingIndex,
    QueryCost,
    TableRef,
    candidate_indexes,
    choose_indexes,
    covering_index,
    index_name,
    query_shape,
)

EVENTS = TableRef("public", "events")
CATALOG = {EVENTS: ["id", "tenant_id", "kind", "created_at", "priority"]}
LATEST = "select id from events where tenant_id = $1 order by created_at desc limit $2"


def _tenant_stats(**kw: object) -> ColumnStats:
    values = {
        "schema_name": "public",
        "table_name": "events",
        "column": "tenant_id",
        "null_frac": 0.0,
        "n_distinct": 2000.0,
        "reltuples": 1_000_000.0,
        # 5 tenants own 41% of the rows, 5 more 9%
        "most_common_vals": ["7", "3", "11", "2", "5", "40", "41", "42", "43", "44"],
        "most_common_freqs": [0.15, 0.1, 0.07, 0.05, 0.04, 0.02, 0.02, 0.02, 0.02, 0.01],
    } | kw
    return ColumnStats.model_validate(values)


def _plan(
    query: str = LATEST,
    stats: dict[tuple[str, str, str], ColumnStats] | None = None,
    rows_per_call: float | None = None,
) -> CostingPlan:
    shape = query_shape(query, CATALOG)
    found = {("public", "events", "tenant_id"): _tenant_stats()} if stats is None else stats
    return skew_plan(1, query, shape, found, rows_per_call=rows_per_call)


def test_interval_parameters_become_plannable_casts() -> None:
    assert (
        plannable_text("select 1 from t where created_at > now() - INTERVAL $1 and id = $10")
        == "select 1 from t where created_at > now() - $1::interval and id = $10"
    )
    assert plannable_text("select $1::interval") == "select $1::interval"


def test_bind_parameter_renumbers_the_rest_and_never_touches_strings() -> None:
    query = "select '$1' from events where tenant_id = $1 and kind = $2 and id in ($3, $10)"
    assert bind_parameter(query, 1, "'42'") == (
        "select '$1' from events where tenant_id = '42' and kind = $1 and id in ($2, $9)"
    )


def test_parameters_compared_with_columns_are_found() -> None:
    shape = query_shape(
        "select id from events e where e.tenant_id = $1 and $2 = e.kind "
        "and created_at > $3::timestamptz and priority in ($4, $5) limit $6",
        CATALOG,
    )
    kinds = {(b.number, b.column, b.kind) for b in shape.params}
    assert kinds == {
        (1, "tenant_id", "equality"),
        (2, "kind", "equality"),
        (3, "created_at", "range"),
        (4, "priority", "equality"),
        (5, "priority", "equality"),
    }
    assert shape.limit_param == 6
    assert parameter_columns([shape]) == [
        ("public", "events", "tenant_id"),
        ("public", "events", "kind"),
        ("public", "events", "priority"),
    ]


def test_a_skewed_parameter_is_costed_at_hot_values_weighted_by_their_share() -> None:
    plan = _plan(rows_per_call=20)
    generic, *custom = plan.variants
    assert generic.value is None and generic.query.endswith("limit 20")
    # the list's 50% in three groups of equal share, each at its middle value; the rest (50%)
    # at the generic plan
    assert [v.value for v in custom] == ["3", "2", "42"]
    assert [round(v.weight, 2) for v in plan.variants] == [0.5, 0.25, 0.12, 0.13]
    assert custom[0].query == (
        "select id from events where tenant_id = '3' order by created_at desc limit 20"
    )
    assert plan.note.startswith(
        "hot values: 10 values of public.events.tenant_id own 50% of rows (the top one 15%, "
        "an average value 0.05%)"
    )
    assert plan.hottest is custom[0] and not plan.fallback


def test_the_most_skewed_parameter_is_chosen() -> None:
    kind = _tenant_stats(
        column="kind",
        n_distinct=4.0,
        most_common_vals=["view", "click", "buy", "share"],
        most_common_freqs=[0.4, 0.3, 0.2, 0.1],
    )
    plan = _plan(
        "select id from events where kind = $1 and tenant_id = $2",
        {("public", "events", "tenant_id"): _tenant_stats(), ("public", "events", "kind"): kind},
    )
    assert plan.column == "public.events.tenant_id"
    assert plan.variants[1].query == "select id from events where kind = $1 and tenant_id = '3'"


def test_columns_without_statistics_fall_back_to_the_generic_plan_and_say_so() -> None:
    plan = _plan(stats={})
    assert plan.fallback and [v.label for v in plan.variants] == ["generic plan"]
    assert plan.note == (
        "no statistics on public.events.tenant_id (ANALYZE has not run on it): costed at the "
        "generic plan only (average selectivity)"
    )


def test_a_column_without_common_values_is_costed_at_the_generic_plan() -> None:
    uniform = _tenant_stats(n_distinct=-1.0, most_common_vals=[], most_common_freqs=[])
    plan = _plan(stats={("public", "events", "tenant_id"): uniform})
    assert not plan.skewed and plan.note == "" and not plan.fallback


def test_weighted_cost_leaves_out_variants_that_failed() -> None:
    plan = _plan()
    assert weighted_cost(plan.variants, [100.0, 1000.0, 10.0, 10.0]) == pytest.approx(
        0.5 * 100 + 0.25 * 1000 + 0.25 * 10, rel=0.01
    )
    assert weighted_cost(plan.variants, [100.0, None, None, None]) == 100.0


def test_equality_then_order_by_columns_in_the_statement_direction() -> None:
    shapes = [
        query_shape(LATEST, CATALOG),
        query_shape(
            "select id from events where tenant_id = $1 order by priority desc, created_at "
            "limit 10",
            CATALOG,
        ),
    ]
    keys = [c.key for c in candidate_indexes(shapes)]
    # one direction throughout: ascending (a backward scan ends the DESC sort)
    assert "public.events(tenant_id, created_at)" in keys
    # mixed directions: the statement's own, so the index ends the sort
    assert "public.events(tenant_id, priority DESC, created_at)" in keys
    mixed = Candidate(
        schema_name="public",
        table_name="events",
        columns=["tenant_id", "priority", "created_at"],
        descending=["priority"],
    )
    readable = index_name(mixed).rsplit("_", 1)[0]  # then a hash of the key
    assert readable == "perfops_idx_events_tenant_id_priority_desc_created_at"


def test_an_existing_index_in_the_reverse_direction_covers_a_candidate() -> None:
    def existing(columns: list[str]) -> ExistingIndex:
        return ExistingIndex(
            schema_name="public",
            table_name="events",
            index_name="e1",
            columns=columns,
            method="btree",
        )

    wanted = Candidate(
        schema_name="public",
        table_name="events",
        columns=["priority", "created_at"],
        descending=["priority"],
    )
    assert covering_index(wanted, [existing(["priority DESC", "created_at"])])
    assert covering_index(wanted, [existing(["priority", "created_at DESC"])])  # backward
    assert covering_index(wanted, [existing(["priority", "created_at"])]) is None


def test_common_values_near_the_average_are_not_treated_as_hot() -> None:
    # a uniform column: ANALYZE's sample makes a few values look 5x the average
    noise = _tenant_stats(
        n_distinct=20_000.0, most_common_vals=["8934", "17"], most_common_freqs=[0.00027, 0.00026]
    )
    plan = _plan(stats={("public", "events", "tenant_id"): noise})
    assert not plan.skewed and plan.note == ""


def test_equality_columns_go_most_distinct_first_when_statistics_are_known() -> None:
    shape = query_shape(
        "select id from events where kind = $1 and tenant_id = $2 order by created_at limit 5",
        CATALOG,
    )
    plain = [c.key for c in candidate_indexes([shape])]
    assert "public.events(kind, tenant_id, created_at)" in plain
    ranked = [
        c.key
        for c in candidate_indexes(
            [shape],
            {("public", "events", "kind"): 3.0, ("public", "events", "tenant_id"): 2000.0},
        )
    ]
    assert "public.events(tenant_id, kind, created_at)" in ranked
    assert "public.events(tenant_id, kind, created_at) INCLUDE (id)" in ranked
    assert "public.events(kind, tenant_id, created_at)" not in ranked


def test_a_narrow_select_also_gets_a_covering_candidate() -> None:
    narrow = query_shape(
        "select kind from events where tenant_id = $1 order by created_at desc limit 20", CATALOG
    )
    wide = query_shape("select * from events where tenant_id = $1", CATALOG)
    update = query_shape("update events set kind = $1 where tenant_id = $2", CATALOG)
    keys = [c.key for c in candidate_indexes([narrow, wide, update])]
    assert "public.events(tenant_id, created_at) INCLUDE (kind)" in keys
    # what else the narrow SELECT reads; not for `*` nor for an UPDATE (it reads the heap)
    assert [k for k in keys if "INCLUDE" in k] == [
        "public.events(tenant_id) INCLUDE (created_at, kind)",
        "public.events(created_at) INCLUDE (tenant_id, kind)",
        "public.events(tenant_id, created_at) INCLUDE (kind)",
    ]


def test_include_must_pay_over_the_plain_index_and_an_existing_one_may_cover_it() -> None:
    plain = Candidate(schema_name="public", table_name="events", columns=["tenant_id"])
    covering = plain.model_copy(update={"include": ["kind"]})
    query = QueryCost(queryid=1, calls=10, mean_ms=1.0, base_cost=1000.0, tables=["x"])
    selection = choose_indexes(
        [query],
        [
            Costing(candidate=plain, size_bytes=1, costs={1: 20.0}),
            Costing(candidate=covering, size_bytes=1, costs={1: 16.0}),
        ],
        [],
        min_saving=0.3,
        max_new_per_table=3,
    )
    assert [c.candidate.key for c in selection.chosen] == ["public.events(tenant_id)"]
    assert [r.reason for r in selection.rejected] == [
        "INCLUDE (kind) saves 20% < 30% over (tenant_id) alone"
    ]
    assert index_name(covering).rsplit("_", 1)[0] == "perfops_idx_events_tenant_id_incl_kind"
    existing = ExistingIndex(
        schema_name="public",
        table_name="events",
        index_name="e1",
        columns=["tenant_id", "created_at"],
        method="btree",
        include_columns=['"kind"'],
    )
    assert covering_index(covering, [existing]) is existing
    assert covering_index(covering.model_copy(update={"include": ["priority"]}), [existing]) is None


def test_only_fully_bound_reads_are_measured_by_running_them() -> None:
    def variant(label: str, query: str, value: str | None = "1") -> Variant:
        return Variant(label=label, query=query, weight=0.5, value=value)

    plan = CostingPlan(
        queryid=1,
        variants=[
            variant("generic plan", "select * from t where a = $1 limit 20", value=None),
            variant("a = 1", "select * from t where a = 1 limit 20"),
        ],
        typical=variant("a = 500 (typical)", "select * from t where a = 500 limit $1"),
    )
    # the typical variant still has a parameter (no value is known for it): not run
    assert [v.label for v in measurable(plan)] == ["a = 1"]
    writes = plan.model_copy(
        update={"variants": [plan.variants[0], variant("a = 1", "delete from t where a = 1")]}
    )
    assert measurable(writes) == []  # only reads are run, and only in a read-only transaction
    assert measurable(None) == []
