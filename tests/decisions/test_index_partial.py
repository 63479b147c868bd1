"""Partial-index candidates for a rare value, tested directly (no server): which predicates a
statement keeps verbatim, when pg_stats says they are rare, and what they cost the writes."""

from __future__ import annotations

from decisions.index_costing import (
    ColumnStats,
    parameter_columns,
    predicate_share,
    rate_predicates,
)
from decisions.index_writes import collect_writes, index_upkeep
from decisions.indexing import (
    Candidate,
    ExistingIndex,
    Predicate,
    QueryShape,
    TableRef,
    candidate_indexes,
    covering_index,
    index_name,
    query_shape,
    same_predicate,
    statements_for,
)

RUNS = TableRef("public", "runs")
CATALOG = {RUNS: ["id", "tenant_id", "status", "created_at", "finished_at", "archived"]}


def _stats(column: str, **kw: object) -> ColumnStats:
    values = {
        "schema_name": "public",
        "table_name": "runs",
        "column": column,
        "null_frac": 0.0,
        "n_distinct": 4.0,
        "reltuples": 1_000_000.0,
    } | kw
    return ColumnStats.model_validate(values)


STATS = {
    ("public", "runs", "status"): _stats(
        "status",
        most_common_vals=["done", "failed", "running", "queued"],
        most_common_freqs=[0.93, 0.04, 0.02, 0.01],
    ),
    ("public", "runs", "finished_at"): _stats("finished_at", null_frac=0.02, n_distinct=-0.98),
    ("public", "runs", "archived"): _stats(
        "archived", n_distinct=2.0, most_common_vals=["t", "f"], most_common_freqs=[0.9, 0.1]
    ),
    ("public", "runs", "tenant_id"): _stats(
        "tenant_id", n_distinct=2000.0, most_common_vals=["7"], most_common_freqs=[0.15]
    ),
}


def _shape(query: str) -> QueryShape:
    shape = query_shape(query, CATALOG)
    assert set(parameter_columns([shape])) >= {
        ("public", "runs", p.column) for p in shape.tables[RUNS].partial
    }  # their statistics are fetched
    rate_predicates([shape], STATS)
    return shape


def _keys(query: str) -> list[str]:
    return [c.key for c in candidate_indexes([_shape(query)]) if c.predicate is not None]


def test_predicates_kept_verbatim_are_read_and_a_parameter_is_not_one() -> None:
    use = query_shape(
        "select id from runs where finished_at is null and archived is false and not archived "
        "and status = 'queued' and tenant_id = $1",
        CATALOG,
    ).tables[RUNS]
    assert [p.label for p in use.partial] == [
        "finished_at IS NULL",
        "archived IS FALSE",
        "NOT archived",
        "status = 'queued'",
    ]
    # pg_stat_statements' form of `status = 'queued'`: the value is not known, no predicate
    assert query_shape("select id from runs where status = $1", CATALOG).tables[RUNS].partial == []


def test_rare_predicates_get_partial_candidates_keyed_on_the_other_columns() -> None:
    assert _keys("select id from runs where finished_at is null order by created_at limit $1") == [
        "public.runs(created_at) WHERE finished_at IS NULL",
        "public.runs(created_at) INCLUDE (id) WHERE finished_at IS NULL",
    ]
    keys = _keys(
        "select id from runs where status = 'queued' and tenant_id = $1 order by created_at"
    )
    assert "public.runs(tenant_id, created_at) WHERE status = 'queued'" in keys
    assert all("(status" not in k and ", status" not in k for k in keys)  # not a key column
    assert _keys("select count(*) from runs where not archived") == [
        "public.runs(archived) WHERE NOT archived"
    ]


def test_common_or_unknown_predicates_get_no_partial_candidate() -> None:
    assert _keys("select id from runs where status = 'done' and tenant_id = $1") == []  # 93%
    assert _keys("select id from runs where finished_at is not null order by created_at") == []
    # a column of many values: a full index on it serves every value, no partial per literal
    assert _keys("select id from runs where tenant_id = 7 order by created_at") == []
    shape = query_shape("select id from runs where finished_at is null", CATALOG)
    rate_predicates([shape], {})  # never analyzed: not known to be rare
    assert [c for c in candidate_indexes([shape]) if c.predicate] == []


def test_share_of_rows_from_pg_stats() -> None:
    assert (
        predicate_share(
            Predicate(column="finished_at", test="IS NULL"),
            STATS[("public", "runs", "finished_at")],
        )
        == 0.02
    )
    status = STATS[("public", "runs", "status")]
    assert predicate_share(Predicate(column="status", test="=", value="queued"), status) == 0.01
    assert predicate_share(Predicate(column="status", test="=", value="lost"), status) == 0.0
    archived = STATS[("public", "runs", "archived")]
    assert predicate_share(Predicate(column="archived", test="NOT"), archived) == 0.1
    assert predicate_share(Predicate(column="archived", test="TRUE"), archived) == 0.9
    assert predicate_share(Predicate(column="status", test="IS NULL"), None) is None


def test_an_existing_partial_index_covers_only_a_candidate_with_its_predicate() -> None:
    predicate = Predicate(column="status", test="=", value="queued", share=0.01)
    partial = Candidate(
        schema_name="public", table_name="runs", columns=["created_at"], predicate=predicate
    )
    full = partial.model_copy(update={"predicate": None})

    def index(where: str | None) -> ExistingIndex:
        return ExistingIndex(
            schema_name="public",
            table_name="runs",
            index_name="runs_created_at",
            columns=["created_at"],
            method="btree",
            predicate=where,
        )

    assert covering_index(partial, [index("(status = 'queued'::text)")]) is not None
    assert covering_index(partial, [index(None)]) is None  # a full index keeps every row
    assert covering_index(full, [index("(status = 'queued'::text)")]) is None
    assert same_predicate(
        '("Finished At" IS NULL)', Predicate(column="Finished At", test="IS NULL")
    )
    readable = index_name(partial).rsplit("_", 1)[0]  # then a hash of the key
    assert readable == "perfops_idx_runs_created_at_where_status_eq_queued"


def test_a_partial_index_takes_only_its_share_of_inserts_and_updates_of_its_predicate() -> None:
    writes = collect_writes(
        [
            ("insert into runs (tenant_id, status) values ($1, $2)", 10_000),
            ("update runs set status = $1, finished_at = now() where id = $2", 300),
            ("update runs set created_at = $1 where id = $2", 50),
        ],
        CATALOG,
        ["public"],
    )
    predicate = Predicate(column="finished_at", test="IS NULL", share=0.02)
    partial = Candidate(
        schema_name="public", table_name="runs", columns=["tenant_id"], predicate=predicate
    )
    upkeep = index_upkeep([partial], writes)[partial.key]
    assert upkeep.entries == 200 + 300  # 2% of the inserted rows; the finishing updates
    assert upkeep.detail == "200 rows inserted + 300 updated (finished_at) x 4 = 2,000"


def test_each_candidate_is_costed_only_against_statements_it_could_serve() -> None:
    shapes = {
        1: _shape("select id from runs where finished_at is null order by created_at limit $1"),
        2: _shape("select id from runs where tenant_id = $1 order by created_at desc limit $2"),
        3: _shape("update runs set status = $1 where id = $2"),
    }
    serves = statements_for(candidate_indexes(shapes.values()), shapes)
    assert serves["public.runs(created_at) WHERE finished_at IS NULL"] == {1}  # its predicate
    assert serves["public.runs(created_at)"] == {1, 2}  # both sort on it
    assert serves["public.runs(tenant_id, created_at)"] == {2}
    assert serves["public.runs(id)"] == {3}
