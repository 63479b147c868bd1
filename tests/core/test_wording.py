"""The wording helpers every summary, reason and notice uses. No servers."""

from __future__ import annotations

from perfops.wording import counted, figure, no_table_matches, tables_here


def test_counts_agree_with_their_nouns() -> None:
    assert [counted(n, "run") for n in (0, 1, 2, 1200)] == [
        "0 runs",
        "1 run",
        "2 runs",
        "1,200 runs",
    ]
    assert counted(1, "index", "indexes") == "1 index"
    assert counted(3, "index", "indexes") == "3 indexes"


def test_figures_read_as_numbers_not_exponents() -> None:
    assert [figure(v) for v in (26290.4, 1000, 999.5, 210, 3.75, 0.23456)] == [
        "26,290", "1,000", "999.5", "210", "3.75", "0.2346",
    ]  # fmt: skip


def test_no_table_matches_names_what_was_asked_and_what_is_there() -> None:
    assert f"{no_table_matches(['odrers'])}: {tables_here(['b.t', 'a.t'])}" == (
        "no table matches include_tables odrers (--table): 2 tables here, e.g. a.t, b.t"
    )
    assert tables_here([]) == "no tables here"
