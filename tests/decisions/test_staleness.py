"""Which tables need fresh statistics, and the reason given for each. No servers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from decisions.staleness import (
    Decision,
    StatisticsPolicy,
    TableStats,
    batches,
    decide,
    display_name,
    filter_miss,
    threshold_percent,
)

ANALYZED = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
_relid = iter(range(16_384, 1_000_000))


def table(name: str, schema: str = "public", **counters: Any) -> TableStats:
    """An analyzed 10,000-row table with nothing changed, unless told otherwise."""
    base: dict[str, Any] = {
        "relid": next(_relid),
        "schema_name": schema,
        "table_name": name,
        "n_live_tup": 10_000,
        "reltuples": 10_000,
        "last_analyze": ANALYZED,
        "analyze_count": 1,
        "has_statistics": True,
    }
    base.update(counters)
    return TableStats.model_validate(base)


def never(name: str, rows: int = 10_000, **counters: Any) -> TableStats:
    """A table loaded with `rows` rows and never analyzed."""
    values: dict[str, Any] = {
        "n_live_tup": rows,
        "reltuples": -1,
        "last_analyze": None,
        "analyze_count": 0,
        "has_statistics": False,
        "n_mod_since_analyze": rows,
    }
    return table(name, **{**values, **counters})


def by_name(decisions: list[Decision]) -> dict[str, tuple[str, str]]:
    return {d.table.table_name: (d.action, d.reason) for d in decisions}


def test_twelve_percent_changed_is_stale_and_two_percent_is_fresh() -> None:
    decisions = decide(
        [table("orders", n_mod_since_analyze=1_200), table("users", n_mod_since_analyze=210)],
        StatisticsPolicy(),
    )
    assert by_name(decisions) == {
        "orders": ("analyze", "12.0% of rows changed since last analyze >= 10%"),
        "users": ("skip", "fresh: 2.1% < 10%"),
    }
    assert [d.code for d in decisions] == ["stale", "fresh"]


def test_exactly_at_the_threshold_is_stale() -> None:
    [d] = decide([table("t", n_mod_since_analyze=1_000)], StatisticsPolicy())
    assert (d.action, d.reason) == ("analyze", "10.0% of rows changed since last analyze >= 10%")


def test_never_analyzed_tables_are_analyzed_whatever_their_counters() -> None:
    [d] = decide([never("new_table", n_mod_since_analyze=0)], StatisticsPolicy())
    assert (d.action, d.code, d.reason) == ("analyze", "never-analyzed", "never analyzed")


def test_statistics_without_an_analyze_time_are_analyzed_their_counters_were_reset() -> None:
    """After pg_stat_reset() (or a crash, or a failover) the times are gone, pg_stats still has
    the statistics and n_mod_since_analyze restarted from 0. Before, such a table was "fresh:
    0.0% < 10%" however much it had changed before the reset."""
    reset = table("t", last_analyze=None, analyze_count=0, has_statistics=True)
    [d] = decide([reset], StatisticsPolicy())
    assert (d.action, d.code, d.reason) == (
        "analyze",
        "counters-reset",
        "change counters reset since its last analyze (pg_stat_reset, a crash or a failover): "
        "the changes before the reset are unknown (0.0% of rows changed since)",
    )


def test_autoanalyze_counts_as_an_analyze() -> None:
    auto = table("t", last_analyze=None, last_autoanalyze=ANALYZED, has_statistics=False)
    [d] = decide([auto], StatisticsPolicy())
    assert d.code == "fresh"


def test_rows_come_from_reltuples_else_the_live_count() -> None:
    # reltuples 0 (analyzed while empty) and 500 rows inserted since: 100% changed.
    grown = table("grown", reltuples=0, n_live_tup=500, n_mod_since_analyze=500)
    # an empty table with nothing changed: no division by zero
    empty = table("empty", reltuples=0, n_live_tup=0)
    assert by_name(decide([grown, empty], StatisticsPolicy())) == {
        "grown": ("analyze", "100.0% of rows changed since last analyze >= 10%"),
        "empty": ("skip", "fresh: 0.0% < 10%"),
    }


def test_most_stale_first_never_analyzed_biggest_first_then_by_share_changed() -> None:
    decisions = decide(
        [
            table("fresh", n_mod_since_analyze=100),
            table("half", n_mod_since_analyze=5_000),
            never("small_new", rows=10),
            table("twelve", n_mod_since_analyze=1_200),
            never("big_new", rows=50_000),
            table("nearly", n_mod_since_analyze=900),
        ],
        StatisticsPolicy(),
    )
    assert [d.table.table_name for d in decisions] == [
        "big_new",
        "small_new",
        "half",
        "twelve",
        "nearly",  # skipped tables after, nearest to the threshold first
        "fresh",
    ]


def test_the_threshold_is_a_parameter() -> None:
    policy = StatisticsPolicy(analyze_threshold=0.025)
    decisions = decide([table("t", n_mod_since_analyze=210)], policy)
    assert by_name(decisions) == {"t": ("skip", "fresh: 2.1% < 2.5%")}
    assert threshold_percent(0.2) == "20%" and threshold_percent(0.125) == "12.5%"


def test_no_vacuum_unless_asked_even_with_many_dead_tuples() -> None:
    [d] = decide([table("t", n_dead_tup=9_000, n_mod_since_analyze=9_000)], StatisticsPolicy())
    assert d.action == "analyze"


def test_dead_tuples_over_the_ratio_get_vacuum_analyze_with_the_reason() -> None:
    policy = StatisticsPolicy(vacuum_dead_ratio=0.2)
    decisions = decide(
        [
            # dead 2,500 of 10,000 tuples: 25%; changes 5% (fresh for ANALYZE alone)
            table("bloated", n_live_tup=7_500, n_dead_tup=2_500, n_mod_since_analyze=500),
            # stale and bloated: one VACUUM (ANALYZE) covers both
            table("both", n_live_tup=7_000, n_dead_tup=3_000, n_mod_since_analyze=3_000),
            table("clean", n_dead_tup=100, n_mod_since_analyze=100),
        ],
        policy,
    )
    assert by_name(decisions) == {
        "both": (
            "vacuum-analyze",
            "30.0% of rows changed since last analyze >= 10%; dead tuples 30.0% >= 20%",
        ),
        "bloated": ("vacuum-analyze", "dead tuples 25.0% >= 20% (5.0% of rows changed)"),
        "clean": ("skip", "fresh: 1.0% < 10%"),
    }


def test_include_and_exclude_filters_say_which_rule_left_a_table_out() -> None:
    stats = [
        table("orders", schema="sales", n_mod_since_analyze=5_000),
        table("orders_archive", schema="sales", n_mod_since_analyze=5_000),
        table("events", schema="audit", n_mod_since_analyze=5_000),
        table("jobs", schema="partman", n_mod_since_analyze=5_000),
    ]
    policy = StatisticsPolicy(
        exclude_schemas=["partman"], exclude_tables=["sales.*_archive"], include_tables=["sales.*"]
    )
    assert by_name(decide(stats, policy)) == {
        "orders": ("analyze", "50.0% of rows changed since last analyze >= 10%"),
        "orders_archive": ("skip", "excluded: table in exclude_tables"),
        "events": ("skip", "excluded: table not in include_tables"),
        "jobs": ("skip", "excluded: schema in exclude_schemas"),
    }
    only_audit = decide(stats, StatisticsPolicy(include_schemas=["audit"]))
    assert [d.table.table_name for d in only_audit if d.acts] == ["events"]
    assert {d.reason for d in only_audit if not d.acts} == {
        "excluded: schema not in include_schemas"
    }


def test_a_bare_table_name_matches_in_any_schema_and_unmatched_names_are_said() -> None:
    stats = [
        table("orders", schema="sales", n_mod_since_analyze=5_000),
        table("orders", schema="archive", n_mod_since_analyze=5_000),
        table("events", schema="audit", n_mod_since_analyze=5_000),
    ]
    policy = StatisticsPolicy(include_tables=["orders", "odrers", "sales.nosuch*"])
    acting = [(d.table.schema_name, d.table.table_name) for d in decide(stats, policy) if d.acts]
    assert sorted(acting) == [("archive", "orders"), ("sales", "orders")]
    miss = filter_miss(stats, policy)
    assert (miss.tables, miss.nothing) == (["odrers", "sales.nosuch*"], False)
    assert miss.text == "no table matches include_tables odrers, sales.nosuch* (--table)"
    assert filter_miss(stats, StatisticsPolicy()).text is None

    typo = filter_miss(stats, StatisticsPolicy(include_tables=["odrers"]))
    assert typo.nothing and typo.error == (
        "no table matches include_tables odrers (--table): 3 tables here, e.g. archive.orders, "
        "audit.events, sales.orders; give schema.table, a table name or a glob like sales.*"
    )
    assert "no tables here" in filter_miss([], StatisticsPolicy(include_tables=["x"])).error

    # include_schemas: the tables were read from those schemas only; one without a table is said
    schemas = filter_miss(stats, StatisticsPolicy(include_schemas=["sales", "slaes"]))
    assert (schemas.schemas, schemas.nothing) == (["slaes"], False)
    assert schemas.text == "no table in include_schemas slaes (--schema)"
    none = filter_miss([], StatisticsPolicy(include_schemas=["slaes"]))
    assert none.nothing and none.error.startswith("no table in include_schemas slaes (--schema)")

    empty = StatisticsPolicy(include_tables=[], include_schemas=[])  # a cleared form field
    assert (empty.include_tables, empty.include_schemas) == (None, None)  # every one
    assert sum(d.acts for d in decide(stats, empty)) == 3


def test_small_tables_can_be_left_alone() -> None:
    decisions = decide(
        [table("tiny", n_live_tup=40, reltuples=40, n_mod_since_analyze=40), never("new", 10)],
        StatisticsPolicy(min_rows=1_000),
    )
    assert by_name(decisions) == {
        "tiny": ("skip", "small: 40 rows < min_rows 1,000"),
        "new": ("skip", "small: 10 rows < min_rows 1,000"),
    }


def test_max_tables_keeps_the_most_stale_and_postpones_the_rest_with_the_reason() -> None:
    stats = [table(f"t{i}", n_mod_since_analyze=1_000 + i * 100) for i in range(5)]
    decisions = decide(stats, StatisticsPolicy(max_tables=2))
    assert [(d.table.table_name, d.action) for d in decisions] == [
        ("t4", "analyze"),
        ("t3", "analyze"),
        ("t2", "skip"),
        ("t1", "skip"),
        ("t0", "skip"),
    ]
    assert decisions[2].code == "over-max-tables"
    assert decisions[2].reason == (
        "over max_tables 2: left for the next run (12.0% of rows changed since last analyze >= 10%)"
    )


def test_partitioned_parents_are_judged_by_their_partitions_changes() -> None:
    """A partitioned table's change count is its partitions' (fetch_table_stats). Before, a
    parent analyzed once was skipped for ever ("PostgreSQL keeps no change counters for it"):
    autovacuum never analyzes it either, so its statistics aged without limit."""
    decisions = decide(
        [
            table("events", relkind="p", n_live_tup=0, n_mod_since_analyze=500),
            table("grown", relkind="p", n_live_tup=0, n_mod_since_analyze=50_000),
            never("measurements", relkind="p"),
        ],
        StatisticsPolicy(),
    )
    assert by_name(decisions) == {
        "measurements": (
            "analyze",
            "never analyzed (partitioned table: ANALYZE samples all its partitions)",
        ),
        "grown": (
            "analyze",
            "partitioned table: 500.0% of its partitions' rows new or changed since its last "
            "analyze >= 10% (autovacuum never analyzes it; ANALYZE samples all its partitions)",
        ),
        "events": (
            "skip",
            "partitioned table: 5.0% of its partitions' rows new or changed since its last "
            "analyze < 10%",
        ),
    }


def test_batches_hold_only_acting_tables_in_order() -> None:
    stats = [table(f"s{i}", n_mod_since_analyze=2_000 + i) for i in range(5)]
    stats.append(table("fresh"))
    cut = batches(decide(stats, StatisticsPolicy()), 2)
    assert [[d.table.table_name for d in b] for b in cut] == [["s4", "s3"], ["s2", "s1"], ["s0"]]


@pytest.mark.parametrize(
    ("schema", "name", "shown"),
    [
        ("public", "orders", "public.orders"),
        ("public", "Orders", 'public."Orders"'),
        ("my schema", "with space", '"my schema"."with space"'),
        ("public", 'x"; DROP TABLE y; --', 'public."x""; DROP TABLE y; --"'),
        ("public", "1st", 'public."1st"'),
    ],
)
def test_names_are_shown_quoted_as_postgresql_would(schema: str, name: str, shown: str) -> None:
    assert display_name(schema, name) == shown


@pytest.mark.parametrize(
    "bad",
    [
        {"analyze_threshold": 0},
        {"analyze_threshold": 1.5},
        {"parallelism": 0},
        {"parallelism": 9},
        {"lock_timeout_ms": 0},
        {"vacuum_dead_ratio": 0},
        {"max_tables": 0},
        {"analyze_treshold": 0.2},  # a typo is an error, not a silently ignored field
    ],
)
def test_policy_bounds(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        StatisticsPolicy(**bad)


def test_policy_defaults_are_the_documented_ones() -> None:
    p = StatisticsPolicy()
    assert (p.analyze_threshold, p.vacuum_dead_ratio, p.parallelism, p.lock_timeout_ms) == (
        0.1,
        None,
        2,
        2_000,
    )
    with pytest.raises(ValidationError):
        p.parallelism = 4  # type: ignore[misc]


def test_a_table_listed_in_the_error_is_accepted_by_table_as_listed() -> None:
    """The error lists `"Sales"."Events"` (as SQL quotes it); before, typing that matched
    nothing, since --table compared the raw name only. Both forms match now, globs too."""
    stats = [table("Events", schema="Sales", n_mod_since_analyze=5_000)]
    typo = filter_miss(stats, StatisticsPolicy(include_tables=["Sales.Evnets"]))
    assert '"Sales"."Events"' in typo.error
    for name in ('"Sales"."Events"', "Sales.Events", '"Events"', "Events", '"Sales".*', "Sales.*"):
        policy = StatisticsPolicy(include_tables=[name])
        assert filter_miss(stats, policy).tables == [], name
        assert [d.acts for d in decide(stats, policy)] == [True], name
    # Unquoted, PostgreSQL folds to lower case: sales.events is another table.
    assert filter_miss(stats, StatisticsPolicy(include_tables=["sales.events"])).tables == [
        "sales.events"
    ]
    lower = [table("events", schema="sales", n_mod_since_analyze=5_000)]
    assert filter_miss(lower, StatisticsPolicy(include_tables=["Sales.Events"])).tables == []


def test_a_schema_quoted_as_perfops_prints_it_is_that_schema() -> None:
    policy = StatisticsPolicy(
        include_schemas=['"Mixed Case"', "app"], exclude_schemas=['"Old ""x"""', "Old"]
    )
    assert policy.include_schemas == ["Mixed Case", "app"]
    assert policy.exclude_schemas == ['Old "x"', "Old"]
    [d] = decide([table("Orders", "Mixed Case", n_mod_since_analyze=5_000)], policy)
    assert d.acts


def test_a_partition_of_a_partitioned_table_analyzed_in_this_run_is_left_to_that_analyze() -> None:
    """ANALYZE of a partitioned table recurses into its partitions: a partition analyzed on its
    own too, at the same time on another connection, would wait for the parent's lock."""
    parent = table("events", relkind="p", n_live_tup=0, n_mod_since_analyze=5_000)
    part = table("events_2026", n_mod_since_analyze=2_000, ancestors=[parent.relid])
    other = table("other", n_mod_since_analyze=2_000)
    calm = table("calm", relkind="p", n_live_tup=0)
    calm_part = table("calm_1", n_mod_since_analyze=2_000, ancestors=[calm.relid])
    got = {
        d.table.table_name: (d.action, d.code)
        for d in decide([parent, part, other, calm, calm_part], StatisticsPolicy())
    }
    assert got == {
        "events": ("analyze", "stale"),
        "events_2026": ("skip", "with-parent"),
        "other": ("analyze", "stale"),
        "calm": ("skip", "partitioned"),
        "calm_1": ("analyze", "stale"),
    }
    [d] = [d for d in decide([parent, part], StatisticsPolicy()) if d.code == "with-parent"]
    assert d.reason == (
        "analyzed with its partitioned table public.events (20.0% of rows changed since last "
        "analyze >= 10%)"
    )


def test_a_partition_is_not_left_to_a_partitioned_table_postponed_by_max_tables() -> None:
    parent = table("events", relkind="p", n_live_tup=0, n_mod_since_analyze=1_500)
    part = table("events_1", n_mod_since_analyze=5_000, ancestors=[parent.relid])
    got = {
        d.table.table_name: d.code for d in decide([parent, part], StatisticsPolicy(max_tables=1))
    }
    assert got == {"events_1": "stale", "events": "over-max-tables"}


def test_a_partitioned_table_whose_counters_were_reset_is_analyzed_with_its_partitions() -> None:
    parent = table("events", relkind="p", n_live_tup=0, last_analyze=None, analyze_count=0)
    part = table("events_1", last_analyze=None, analyze_count=0, ancestors=[parent.relid])
    got = {d.table.table_name: d.code for d in decide([parent, part], StatisticsPolicy())}
    assert got == {"events": "counters-reset", "events_1": "with-parent"}
