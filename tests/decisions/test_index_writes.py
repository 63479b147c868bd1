"""Write overhead of a candidate index, weighed against what it saves (no server)."""

from __future__ import annotations

from decisions.index_writes import INDEX_ENTRY_COST, collect_writes, index_upkeep
from decisions.indexing import Candidate, Costing, QueryCost, TableRef, choose_indexes

LOG = TableRef("public", "log")
CATALOG = {LOG: ["id", "run_id", "status", "note"]}


def _candidate(*columns: str) -> Candidate:
    return Candidate(schema_name="public", table_name="log", columns=list(columns))


def test_inserts_count_for_every_index_and_updates_for_the_columns_they_set() -> None:
    writes = collect_writes(
        [
            ("insert into log (run_id, status) values ($1, $2)", 1000),
            ("update log set status = $1 where id = $2", 50),
            ("update public.log set note = $1 where id = $2", 70),
            ("delete from log where id = $1", 500),  # adds no index entry
            ("select * from log where run_id = $1", 10),
        ],
        CATALOG,
        ["public"],
    )
    covering = _candidate("run_id").model_copy(update={"include": ["note"]})
    upkeep = index_upkeep([_candidate("run_id"), _candidate("status", "run_id"), covering], writes)
    assert upkeep["public.log(run_id)"].entries == 1000
    assert upkeep["public.log(run_id) INCLUDE (note)"].entries == 1070
    both = upkeep["public.log(status, run_id)"]
    assert both.entries == 1050 and both.cost == 1050 * INDEX_ENTRY_COST
    assert both.detail == "1,000 rows inserted + 50 updated (status) x 4 = 4,200"


def test_an_index_whose_upkeep_outweighs_its_saving_is_rejected_with_both_numbers() -> None:
    query = QueryCost(queryid=1, calls=10, mean_ms=5.0, base_cost=1000.0, tables=["public.log"])
    costing = Costing(candidate=_candidate("run_id"), size_bytes=8192, costs={1: 10.0})
    writes = collect_writes([("insert into log (run_id) values ($1)", 5000)], CATALOG, ["public"])
    upkeep = index_upkeep([costing.candidate], writes)
    heavy = choose_indexes(
        [query], [costing], [], min_saving=0.3, max_new_per_table=3, upkeep=upkeep
    )
    assert heavy.chosen == []
    [rejected] = heavy.rejected
    assert rejected.reason == (
        "write overhead outweighs the saving: upkeep 5,000 rows inserted x 4 = 20,000 >= "
        "9,900 saved (calls x cost saved)"
    )
    light = index_upkeep(
        [costing.candidate],
        collect_writes([("insert into log (run_id) values ($1)", 100)], CATALOG, ["public"]),
    )
    [chosen] = choose_indexes(
        [query], [costing], [], min_saving=0.3, max_new_per_table=3, upkeep=light
    ).chosen
    assert chosen.upkeep is not None and chosen.upkeep.cost == 400
