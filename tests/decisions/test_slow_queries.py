"""Which statements are slow and why (pure: no server, no Prefect run)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from decisions.slow_queries import (
    HiddenStatements,
    PlanOutcome,
    SlowQuerySettings,
    explain_skip_reason,
    format_ms,
    merge_by_queryid,
    pick_slow_statements,
    statement_rows,
    summarize_plan,
)
from perfops.redaction import mask_statement_secrets
from tasks.postgres.statements import StatementStats


def stats(
    queryid: int,
    *,
    mean_ms: float,
    calls: int = 10,
    share: float = 0.01,
    stddev_ms: float = 0.0,
    query: str = "",
) -> StatementStats:
    return StatementStats(
        queryid=queryid,
        query=query or f"select {queryid} from t where id = $1",
        calls=calls,
        total_ms=mean_ms * calls,
        mean_ms=mean_ms,
        stddev_ms=stddev_ms,
        min_ms=mean_ms / 2,
        max_ms=mean_ms * 2,
        rows=calls,
        shared_blks_hit=90 * calls,
        shared_blks_read=10 * calls,
        share_of_db_time=share,
    )


def test_statements_over_the_threshold_say_by_how_much() -> None:
    rows = [stats(1, mean_ms=1240, calls=1), stats(2, mean_ms=999.9, calls=1)]
    [slow] = pick_slow_statements(rows, threshold_ms=1000, top=0)
    assert slow.queryid == 1
    assert slow.reasons == ["mean 1,240 ms >= 1,000 ms"]


def test_top_n_by_total_time_give_their_rank_and_share() -> None:
    rows = [
        stats(1, mean_ms=5, calls=1000, share=0.41),  # 5,000 ms total
        stats(2, mean_ms=2, calls=1000, share=0.16),  # 2,000
        stats(3, mean_ms=1, calls=3000, share=0.25),  # 3,000
        stats(4, mean_ms=1, calls=10, share=0.001),
    ]
    picked = pick_slow_statements(rows, threshold_ms=1000, top=3)
    assert [(s.queryid, s.rank_by_total) for s in picked] == [(1, 1), (3, 2), (2, 3)]
    assert picked[0].reasons == ["top 1 by total time (41% of DB time)"]
    assert picked[2].why == "top 3 by total time (16% of DB time)"


def test_a_statement_that_is_both_is_listed_once_with_both_reasons() -> None:
    rows = [stats(1, mean_ms=1500, calls=100, share=0.9), stats(2, mean_ms=3000, calls=1)]
    picked = pick_slow_statements(rows, threshold_ms=1000, top=1)
    assert [s.queryid for s in picked] == [1, 2]
    assert picked[0].reasons == [
        "mean 1,500 ms >= 1,000 ms",
        "top 1 by total time (90% of DB time)",
    ]
    assert picked[1].reasons == ["mean 3,000 ms >= 1,000 ms"]


def test_nothing_slow_and_top_zero_lists_nothing() -> None:
    assert pick_slow_statements([stats(1, mean_ms=3)], threshold_ms=1000, top=0) == []


def test_min_calls_ignores_rarely_run_statements() -> None:
    rows = [stats(1, mean_ms=5000, calls=1), stats(2, mean_ms=1200, calls=50)]
    assert [s.queryid for s in pick_slow_statements(rows, top=0, min_calls=2)] == [2]


def test_rows_of_the_same_statement_by_several_roles_are_merged() -> None:
    # pg_stat_statements keeps a row per role: 10 calls at 100 ms, 30 calls at 300 ms.
    a = stats(7, mean_ms=100, calls=10, share=0.1)
    b = stats(7, mean_ms=300, calls=30, share=0.3)
    [merged] = merge_by_queryid([a, b])
    assert merged.calls == 40
    assert merged.total_ms == pytest.approx(10_000)
    assert merged.mean_ms == pytest.approx(250)
    # population stddev of 10 x 100 and 30 x 300 (each group without spread)
    assert merged.stddev_ms == pytest.approx(86.60254, rel=1e-5)
    assert merged.max_ms == 600 and merged.min_ms == 50
    assert merged.share_of_db_time == pytest.approx(0.4)
    [picked] = pick_slow_statements([a, b], threshold_ms=200, top=0)
    assert picked.reasons == ["mean 250 ms >= 200 ms"]


def test_ties_are_ranked_deterministically() -> None:
    rows = [stats(9, mean_ms=10), stats(3, mean_ms=10), stats(5, mean_ms=10)]
    assert [s.queryid for s in pick_slow_statements(rows, top=3)] == [3, 5, 9]


@pytest.mark.parametrize(
    ("value", "text"), [(1240.4, "1,240"), (52.34, "52.3"), (40.0, "40"), (0.421, "0.42"), (0, "0")]
)
def test_milliseconds_read_well(value: float, text: str) -> None:
    assert format_ms(value) == text


def test_a_password_in_a_utility_statement_is_masked() -> None:
    text = "alter role app password 'hunter2' valid until 'infinity'"
    masked = mask_statement_secrets(text)
    assert "hunter2" not in masked and masked.count("'***'") == 2
    assert mask_statement_secrets("select $1 from t where a = 'x'") == (
        "select $1 from t where a = 'x'"
    )
    assert "s3cret" not in mask_statement_secrets(
        "create user mapping for app server s options (user 'a', password $$s3cret$$)"
    )


@pytest.mark.parametrize(
    "query",
    [
        "select * from t where id = $1 and name in ($2, $3) limit $4",
        "update t set name = $1 where id = $2",
        "insert into t (id) values ($1) on conflict do nothing",
        "delete from t where id = $1",
        'select * from "Mixed Case"."x""; DROP TABLE y; --" where id = $1',
        "with x as (select id % $1 as r from t) select r from x",
    ],
)
def test_plannable_statements_can_be_explained(query: str) -> None:
    assert explain_skip_reason(query) is None


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (
            "select * from t where id = ",
            "statement text is truncated (syntax error at end of input)",
        ),
        ("select * from t where name = 'abc", "statement text is truncated (unterminated quoted"),
        (
            "select id, status from agent_executions where agent_id = $1 order by started_at lim",
            'statement text is truncated (syntax error at or near "lim")',
        ),
        ("select * frm t", 'statement text does not parse (syntax error at or near "frm")'),
        ("set work_mem = $1", "utility statement (SET) cannot be explained"),
        ("begin", "utility statement (BEGIN) cannot be explained"),
        ("vacuum analyze t", "utility statement (VACUUM) cannot be explained"),
        ("create index i on t (a)", "utility statement (CREATE INDEX) cannot be explained"),
        ("select * into t2 from t", "SELECT INTO creates a table"),
        ("<insufficient privilege>", "grant pg_read_all_stats"),
        ("select 1; select 2", "2 statements in one text"),
        ("   ", "no statement text"),
    ],
)
def test_statements_that_cannot_be_explained_say_why(query: str, reason: str) -> None:
    skip = explain_skip_reason(query)
    assert skip is not None and reason in skip


def test_plan_summary_follows_the_tree() -> None:
    plan = {
        "Node Type": "Limit",
        "Total Cost": 1234.5,
        "Plans": [
            {
                "Node Type": "Sort",
                "Plans": [
                    {
                        "Node Type": "Hash Join",
                        "Plans": [
                            {"Node Type": "Seq Scan", "Relation Name": "agent_executions"},
                            {
                                "Node Type": "Index Scan",
                                "Relation Name": "agents",
                                "Index Name": "agents_pkey",
                            },
                        ],
                    }
                ],
            }
        ],
    }
    assert summarize_plan(plan) == (
        "Limit > Sort > Hash Join > Seq Scan on agent_executions > "
        "Index Scan on agents using agents_pkey"
    )
    assert summarize_plan(plan, max_nodes=2) == "Limit > Sort > ..."


def test_rows_carry_figures_reasons_and_plan() -> None:
    [s] = pick_slow_statements([stats(1, mean_ms=1500, calls=4, share=0.5)], top=1)
    s = s.model_copy(
        update={"plan": PlanOutcome(status="planned", cost=42.0, summary="Seq Scan on t")}
    )
    [row] = statement_rows([s])
    assert row["reason"] == "mean 1,500 ms >= 1,000 ms; top 1 by total time (50% of DB time)"
    assert (row["calls"], row["total_s"], row["hit_ratio"]) == (4, 6.0, "90.0%")
    assert row["plan"] == "cost 42: Seq Scan on t"
    skipped = s.model_copy(update={"plan": PlanOutcome(status="skipped", reason="locked")})
    assert statement_rows([skipped])[0]["plan"] == "skipped: locked"


def test_settings_have_bounds_and_documented_defaults() -> None:
    settings = SlowQuerySettings()
    assert (settings.threshold_ms, settings.top, settings.explain) == (1000.0, 10, False)
    for field in SlowQuerySettings.model_fields.values():
        assert field.description
    with pytest.raises(ValidationError):
        SlowQuerySettings(top=-1)
    with pytest.raises(ValidationError):
        SlowQuerySettings(threshold_ms=-5)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SlowQuerySettings.model_validate({"no_such_setting": 1})  # a typo in a deployment


def test_the_hidden_statements_grant_quotes_a_role_as_postgresql_reads_it() -> None:
    """`grant pg_read_all_stats to Perf-Ops` is a syntax error, and `... to PerfOps` grants
    the role perfops."""
    for role, shown in (
        ("perfops", "perfops"),
        ("PerfOps", '"PerfOps"'),
        ("Perf-Ops", '"Perf-Ops"'),
    ):
        hidden = HiddenStatements(statements=2, total_ms=10.0, share_of_db_time=0.5, role=role)
        assert hidden.warning.endswith(f"grant pg_read_all_stats to {shown} to see them")
