"""Which indexes waste space and why, and which named ones may be dropped (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pglast.stream import maybe_double_quote_name as q
from pydantic import ValidationError

from decisions.index_health import (
    IndexFinding,
    IndexHealthSettings,
    IndexInfo,
    IndexLocation,
    LockedTable,
    build_comment,
    built_at,
    classify_indexes,
    finding_rows,
    format_bytes,
    qualified_name,
    schemas_without_indexes,
    select_drops,
    wasted_bytes,
)

MB = 1024 * 1024
HOSTILE = 'x"; DROP TABLE y; --'


def idx(
    name: str,
    *keys: str,
    table: str = "agents",
    schema: str = "public",
    include: tuple[str, ...] = (),
    method: str = "btree",
    predicate: str | None = None,
    unique: bool = False,
    primary: bool = False,
    constraint: str | None = None,
    valid: bool = True,
    scans: int = 10,
    size: int = 2 * MB,
) -> IndexInfo:
    """An index row as fetch_indexes returns it; `definition` as pg_get_indexdef writes it."""
    definition = (
        f"CREATE {'UNIQUE ' if unique else ''}INDEX {q(name)} ON {q(schema)}.{q(table)} "
        f"USING {method} ({', '.join(keys)})"
        + (f" INCLUDE ({', '.join(include)})" if include else "")
        + (f" WHERE ({predicate})" if predicate else "")
    )
    return IndexInfo(
        schema_name=schema,
        table_name=table,
        index_name=name,
        # the catalog's per-column text drops operator class, collation and order
        columns=[k.split(" ")[0] for k in keys],
        include_columns=list(include),
        method=method,
        predicate=predicate,
        is_unique=unique or primary,
        is_primary=primary,
        constraint_name=constraint,
        is_valid=valid,
        is_ready=True,
        size_bytes=size,
        scans=scans,
        definition=definition,
    )


def by_name(findings: list[IndexFinding]) -> dict[str, IndexFinding]:
    return {f.index_name: f for f in findings}


def test_a_prefix_of_another_btree_is_covered_and_names_it() -> None:
    found = classify_indexes(
        [
            idx("agents_name_idx", "name", size=3 * MB),
            idx("agents_name_team_idx", "name", "team"),
        ]
    )
    [f] = found
    assert (f.kind, f.name, f.size_bytes) == ("covered", "public.agents_name_idx", 3 * MB)
    assert f.reason == "covered by agents_name_team_idx (name, team)"
    assert f.other_index == "public.agents_name_team_idx" and f.droppable


@pytest.mark.parametrize(
    ("narrow", "wide", "why_not"),
    [
        (idx("n", "name", unique=True), idx("w", "name", "team"), "unique: enforces something"),
        (idx("n", "name", method="hash"), idx("w", "name", "team", method="hash"), "not btree"),
        (idx("n", "name"), idx("w", "name", "team", predicate="status = 'active'"), "predicate"),
        (idx("n", "name text_pattern_ops"), idx("w", "name", "team"), "operator class"),
        (idx("n", "name DESC"), idx("w", "name", "team"), "order"),
        (idx("n", "team"), idx("w", "name", "team"), "not a prefix"),
        (idx("n", "name", include=("status",)), idx("w", "name", "team"), "INCLUDE not there"),
        (idx("n", "name"), idx("w", "name", "team", table="other"), "another table"),
        (idx("n", "name"), idx("w", "name", "team", valid=False), "wide is invalid"),
    ],
)
def test_what_is_not_covered(narrow: IndexInfo, wide: IndexInfo, why_not: str) -> None:
    kinds = {f.index_name: f.kind for f in classify_indexes([narrow, wide])}
    assert kinds.get("n") is None, why_not


def test_covered_by_the_widest_index_when_there_are_several() -> None:
    found = by_name(
        classify_indexes(
            [idx("a", "name"), idx("ab", "name", "team"), idx("abc", "name", "team", "status")]
        )
    )
    assert found["a"].reason == "covered by abc (name, team, status)"
    assert found["ab"].reason == "covered by abc (name, team, status)"
    assert "abc" not in found


def test_include_columns_the_wider_index_has_are_covered() -> None:
    [f] = classify_indexes([idx("n", "name", include=("team",)), idx("w", "name", "team")])
    assert f.kind == "covered"


def test_identical_indexes_keep_the_one_backing_a_constraint() -> None:
    found = classify_indexes(
        [
            idx("a_plain", "code", scans=0),
            idx("z_code_key", "code", unique=True, constraint="z_code_key", scans=5),
        ]
    )
    [f] = found
    assert (f.kind, f.index_name) == ("duplicate", "a_plain")
    assert f.reason.startswith("duplicate of z_code_key (code) (kept: it backs a constraint)")
    assert f.droppable


def test_identical_indexes_keep_unique_then_the_first_name() -> None:
    found = by_name(
        classify_indexes(
            [idx("b", "team"), idx("a", "team"), idx("c", "team", unique=True), idx("d", "team")]
        )
    )
    assert set(found) == {"a", "b", "d"}
    assert {f.reason for f in found.values()} == {"duplicate of c (team)"}


def test_identical_constraints_are_reported_but_not_droppable() -> None:
    found = classify_indexes(
        [
            idx("agents_pkey", "id", primary=True, constraint="agents_pkey"),
            idx("agents_id_key", "id", unique=True, constraint="agents_id_key"),
        ]
    )
    [f] = found
    assert (f.kind, f.index_name, f.droppable) == ("duplicate", "agents_id_key", False)
    assert f.not_droppable_reason is not None
    assert f.not_droppable_reason.startswith("backs constraint agents_id_key")


@pytest.mark.parametrize(
    "other",
    [
        idx("b", "team", include=("name",)),
        idx("b", "team", predicate="status = 'active'"),
        idx("b", "team", method="hash"),
        idx("b", 'team COLLATE "C"'),
        idx("b", "lower(team)"),
    ],
)
def test_not_duplicates_when_anything_differs(other: IndexInfo) -> None:
    assert classify_indexes([idx("a", "team"), other]) == []


def test_unused_needs_no_scans_enough_size_and_nothing_it_enforces() -> None:
    reset = datetime(2025, 3, 1, tzinfo=UTC)
    found = by_name(
        classify_indexes(
            [
                idx("big_unused", "status", scans=0, size=5 * MB),
                idx("small_unused", "team", scans=0, size=MB - 1),
                idx("used", "name", scans=1),
                idx("unique_unused", "code", unique=True, scans=0),
                idx("pkey", "id", primary=True, constraint="pkey", scans=0),
                idx("excl", "period", method="gist", constraint="no_overlap", scans=0),
            ],
            min_size_bytes=MB,
            stats_reset=reset,
        )
    )
    assert set(found) == {"big_unused"}
    assert found["big_unused"].reason == (
        "unused: no scans on this server since statistics reset on 2025-03-01, 5 MB >= 1 MB"
    )


def test_invalid_indexes_are_found_at_any_size() -> None:
    [f] = classify_indexes([idx("broken", "name", valid=False, scans=0, size=8192)])
    assert f.kind == "invalid" and f.size_bytes == 8192
    assert f.reason.startswith("invalid (a failed CREATE INDEX CONCURRENTLY")
    assert "writes still maintain it" in f.reason


def test_one_finding_per_index_with_every_reason_and_largest_first() -> None:
    found = classify_indexes(
        [
            idx("a_name", "name", scans=0, size=4 * MB),
            idx("name_team", "name", "team", scans=3, size=6 * MB),
            idx("lonely", "status", scans=0, size=9 * MB),
        ]
    )
    assert [(f.index_name, f.kind) for f in found] == [
        ("lonely", "unused"),
        ("a_name", "covered"),
    ]
    assert found[1].reason.startswith("covered by name_team (name, team); unused: no scans")
    assert wasted_bytes(found) == 13 * MB


def test_hostile_and_mixed_case_names_are_quoted_as_sql_needs() -> None:
    found = classify_indexes(
        [
            idx(HOSTILE, "name", schema="Mixed Case", table="My Table"),
            idx("Name Team", '"Name"', "team", schema="Mixed Case", table="My Table"),
        ]
    )
    assert found == []  # "name" and "Name" are different columns
    found = classify_indexes(
        [
            idx(HOSTILE, '"Name"', schema="Mixed Case", table="My Table"),
            idx("Name Team", '"Name"', "team", schema="Mixed Case", table="My Table"),
        ]
    )
    [f] = found
    assert f.name == '"Mixed Case"."x""; DROP TABLE y; --"'
    assert f.table == '"Mixed Case"."My Table"'
    assert f.reason == 'covered by "Name Team" ("Name", team)'


def test_qualified_names() -> None:
    assert qualified_name("public", "agents_name_idx") == "public.agents_name_idx"
    assert qualified_name("Mixed Case", "user") == '"Mixed Case"."user"'


@pytest.mark.parametrize(
    ("size", "text"),
    [(512, "512 bytes"), (16384, "16 kB"), (1288490, "1.2 MB"), (3 * 1024**3, "3 GB")],
)
def test_sizes_read_like_pg_size_pretty(size: int, text: str) -> None:
    assert format_bytes(size) == text


# --- choosing what to drop ---------------------------------------------------------------


@pytest.fixture()
def catalog() -> list[IndexInfo]:
    return [
        idx("agents_name_idx", "name"),
        idx("agents_name_team_idx", "name", "team"),
        idx("agents_code_key", "code", unique=True, constraint="agents_code_key"),
        idx("agents_code_key2", "code", unique=True, constraint="agents_code_key2"),
        idx("status_idx", "status", schema="public"),
        idx("status_idx", "status", schema="archive"),
        idx(HOSTILE, "team", schema="Mixed Case", scans=0),
    ]


def test_dry_run_says_what_would_be_dropped_and_drops_nothing(catalog: list[IndexInfo]) -> None:
    findings = classify_indexes(catalog)
    plan = select_drops(findings, catalog, ["public.agents_name_idx"], apply=False)
    assert plan.to_drop == []
    [o] = plan.outcomes
    assert (o.name, o.status) == ("public.agents_name_idx", "would drop")
    assert o.reason == "covered: covered by agents_name_team_idx (name, team)"


def test_apply_drops_only_the_named_findings(catalog: list[IndexInfo]) -> None:
    findings = classify_indexes(catalog)
    assert {f.index_name for f in findings} >= {"agents_name_idx", HOSTILE}
    plan = select_drops(findings, catalog, ["public.agents_name_idx"], apply=True)
    assert [f.index_name for f in plan.to_drop] == ["agents_name_idx"]


def test_names_as_written_as_sql_quotes_them_or_bare(catalog: list[IndexInfo]) -> None:
    findings = classify_indexes(catalog)
    for name in (
        'Mixed Case.x"; DROP TABLE y; --',
        '"Mixed Case"."x""; DROP TABLE y; --"',
        HOSTILE,
    ):
        plan = select_drops(findings, catalog, [name], apply=True)
        assert [f.index_name for f in plan.to_drop] == [HOSTILE], name
        assert plan.outcomes[0].requested == name


def test_what_is_refused_and_why(catalog: list[IndexInfo]) -> None:
    findings = classify_indexes(catalog, min_size_bytes=10 * MB)
    plan = select_drops(
        findings,
        catalog,
        [
            "agents_name_team_idx",  # used, not a finding
            "agents_code_key2",  # duplicate backing a constraint
            "status_idx",  # in two schemas
            "public.gone_idx",  # not there (never was, or dropped by an earlier run)
        ],
        apply=True,
    )
    assert plan.to_drop == []
    got = {o.requested: (o.status, o.reason) for o in plan.outcomes}
    assert got["agents_name_team_idx"][0] == "refused"
    assert got["agents_name_team_idx"][1] == (
        "not a finding of this check (it was scanned 10 times): perfops drops only findings"
    )
    assert got["agents_code_key2"][0] == "refused"
    assert got["agents_code_key2"][1].startswith("backs constraint agents_code_key2")
    assert got["status_idx"] == (
        "refused",
        "ambiguous: it names archive.status_idx, public.status_idx; give schema.index",
    )
    assert got["public.gone_idx"] == (
        "not found",
        "no index named public.gone_idx in the database: nothing to drop (already dropped by "
        "an earlier run, or a misspelt name: check it)",
    )


def test_an_index_of_a_locked_table_is_not_dropped_blind(catalog: list[IndexInfo]) -> None:
    locked = [
        LockedTable(
            schema_name="public",
            table_name="busy",
            index_names=["busy_idx"],
            reason="table locked by another session: lock_timeout (1,000 ms) expired",
        )
    ]
    plan = select_drops([], catalog, ["public.busy_idx"], apply=True, locked_tables=locked)
    [o] = plan.outcomes
    assert o.status == "failed" and o.reason.startswith("not checked: table locked")


def test_the_same_index_named_twice_is_dropped_once(catalog: list[IndexInfo]) -> None:
    findings = classify_indexes(catalog)
    plan = select_drops(
        findings, catalog, ["agents_name_idx", "public.agents_name_idx"], apply=True
    )
    assert len(plan.to_drop) == 1 and len(plan.outcomes) == 1


def test_rows_say_what_was_found_done_and_why(catalog: list[IndexInfo]) -> None:
    findings = classify_indexes(catalog)
    plan = select_drops(findings, catalog, ["public.agents_name_idx", "nope"], apply=False)
    locked = [LockedTable(schema_name="s", table_name="t", index_names=["i"], reason="locked")]
    rows = finding_rows(findings, plan.outcomes, locked)
    actions = {r["index"]: r["result"] for r in rows}
    assert actions["public.agents_name_idx"] == "would drop (dry run: add --apply)"
    assert actions['"Mixed Case"."x""; DROP TABLE y; --"'].startswith(
        "report only (to drop: --apply --drop "
    )
    assert actions["public.agents_code_key2"].startswith("report only (backs constraint")
    assert actions["nope"] == "not found"
    assert actions["s.i"] == "skipped"


def test_settings_have_bounds_and_documented_defaults() -> None:
    settings = IndexHealthSettings()
    assert settings.min_size_bytes == MB and settings.schemas is None
    for field in IndexHealthSettings.model_fields.values():
        assert field.description
    with pytest.raises(ValueError, match="greater than or equal"):
        IndexHealthSettings(min_size_bytes=-1)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        IndexHealthSettings.model_validate({"no_such_setting": 1})  # a typo in a deployment


def test_an_index_perfops_built_is_new_not_unused_until_its_grace_has_passed() -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    built = idx("perfops_idx_runs_tenant", "tenant_id", scans=0, size=5 * MB)
    fresh = built.model_copy(update={"comment": build_comment(now - timedelta(hours=1))})
    old = built.model_copy(update={"comment": build_comment(now - timedelta(days=8))})
    theirs = built.model_copy(update={"comment": "owned by the search team"})
    week = timedelta(days=7)
    assert classify_indexes([fresh], now=now, grace=week) == []
    [finding] = classify_indexes([old], now=now, grace=week)
    assert finding.kind == "unused" and "built by perfops on 2026-11-28" in finding.reason
    # without a build record there is no age to go by: the index is judged by its scans
    assert [f.kind for f in classify_indexes([theirs], now=now, grace=week)] == ["unused"]
    assert built_at("perfops: built not-a-date by suggest_indexes") is None
    assert built_at(build_comment(now)) == now


def test_asked_schemas_without_an_index_are_named_and_an_empty_list_means_all() -> None:
    indexes = [idx("a_idx", "a"), idx("b_idx", "b", schema="sales")]
    assert schemas_without_indexes(indexes, ["sales", "slaes"]) == (
        "no index in schemas slaes (--schema)"
    )
    assert schemas_without_indexes(indexes, None) == ""
    assert IndexHealthSettings(schemas=[]).schemas is None  # a cleared form field: every schema
    # a schema as perfops prints it ("Mixed Case") is the schema, as is its stored name
    quoted = IndexHealthSettings(schemas=['"Mixed Case"', "Mixed Case", '"a""b"', "app"])
    assert quoted.schemas == ["Mixed Case", "Mixed Case", 'a"b', "app"]


def test_an_unused_wide_index_covers_nothing_so_the_used_narrow_one_is_kept() -> None:
    """t_a (a) is used, t_a_c (a, c) is not: the advice is to drop the unused wide one and keep
    the narrow one, not both (dropping both left the table without any index on a)."""
    narrow = idx("t_a", "a", table="t", scans=25, size=3 * MB)
    wide = idx("t_a_c", "a", "c", table="t", scans=0, size=5 * MB)
    found = by_name(classify_indexes([narrow, wide], min_size_bytes=MB))
    assert set(found) == {"t_a_c"}
    assert found["t_a_c"].kind == "unused" and found["t_a_c"].other_index is None
    # Both unused: each is reported unused in its own right, neither "covered by" the other.
    idle = narrow.model_copy(update={"scans": 0})
    found = by_name(classify_indexes([idle, wide], min_size_bytes=MB))
    assert {k: (f.kind, f.other_index) for k, f in found.items()} == {
        "t_a": ("unused", None),
        "t_a_c": ("unused", None),
    }


def test_of_identical_indexes_the_used_one_is_kept() -> None:
    first = idx("a_first", "name", scans=0, size=3 * MB)  # first by name, but unused
    second = idx("b_second", "name", scans=40, size=3 * MB)
    found = by_name(classify_indexes([first, second], min_size_bytes=MB))
    assert set(found) == {"a_first"}
    assert found["a_first"].kind == "duplicate"
    assert found["a_first"].other_index_name == "b_second"


def test_a_drop_whose_kept_index_is_dropped_too_is_refused() -> None:
    narrow = idx("t_a", "a", table="t", scans=0, size=3 * MB)
    wide = idx("t_a_c", "a", "c", table="t", scans=25, size=5 * MB)
    [covered] = classify_indexes([narrow, wide], min_size_bytes=MB)
    assert (covered.kind, covered.other_index) == ("covered", "public.t_a_c")
    # The wide one a finding too (as a stale report, or another rule, could make it).
    wide_finding = covered.model_copy(
        update={
            "kind": "unused",
            "name": "public.t_a_c",
            "index_name": "t_a_c",
            "other_index": None,
            "other_schema": None,
            "other_index_name": None,
        }
    )
    plan = select_drops(
        [covered, wide_finding], [narrow, wide], ["public.t_a", "public.t_a_c"], apply=True
    )
    got = {o.name: (o.status, o.reason) for o in plan.outcomes}
    assert got["public.t_a"][0] == "refused"
    assert "public.t_a_c is to be dropped in this run too" in got["public.t_a"][1]
    assert got["public.t_a_c"][0] == "would drop"
    assert [f.name for f in plan.to_drop] == ["public.t_a_c"]


def test_a_name_outside_the_schemas_checked_is_refused_naming_schema() -> None:
    """Before, an index outside --schema (or a typo) was "already gone ... (dropped already?)"
    and the run exited 0."""
    checked = [idx("t_a", "a", table="t", schema="app")]
    elsewhere = [
        IndexLocation(schema_name="audit", index_name="audit_idx", table_name="events"),
        IndexLocation(schema_name="app", index_name="t_a", table_name="t"),
    ]
    plan = select_drops(
        [],
        checked,
        ["audit.audit_idx", "audit_idx", "app.t_typo"],
        apply=True,
        elsewhere=elsewhere,
        schemas=["app"],
    )
    got = {o.requested: (o.status, o.reason) for o in plan.outcomes}
    for name in ("audit.audit_idx", "audit_idx"):
        assert got[name] == (
            "refused",
            "audit.audit_idx is outside the schemas checked (app; --schema): not checked, so "
            "not dropped; add --schema audit to check it",
        )
    assert got["app.t_typo"][0] == "not found"
    assert plan.to_drop == []


def test_a_nulls_not_distinct_index_is_no_duplicate_of_a_constraint_that_lets_nulls_repeat() -> (
    None
):
    """The unique constraint is kept first, but it accepts many NULLs: the NULLS NOT DISTINCT
    index enforces more, so it is not its duplicate (before: droppable "duplicate of code_key")."""
    nnd = idx("code_nnd", "code", unique=True)
    nnd = nnd.model_copy(update={"definition": nnd.definition + " NULLS NOT DISTINCT"})
    found = by_name(classify_indexes([idx("code_key", "code", unique=True, constraint="k"), nnd]))
    assert found == {}


def test_a_replica_identity_index_is_kept_over_a_plain_duplicate_and_else_not_droppable() -> None:
    ident = idx("b_ident", "k", unique=True).model_copy(update={"is_replica_identity": True})
    found = by_name(classify_indexes([idx("a_plain", "k", unique=True), ident]))
    assert found["a_plain"].reason == "duplicate of b_ident (k)"
    found = by_name(classify_indexes([idx("pk", "k", primary=True, constraint="pk"), ident]))
    assert not found["b_ident"].droppable
    assert found["b_ident"].not_droppable_reason.startswith(  # type: ignore[union-attr]
        "it is the replica identity of public.agents"
    )


def test_of_two_copies_on_a_partition_the_one_that_can_be_dropped_is_reported() -> None:
    """The copy attached to the partitioned index goes only with it: it is kept, and the
    standalone copy is the droppable duplicate (before, the first by name was kept, and the
    attached one was reported, not droppable, leaving nothing to drop)."""
    attached = idx("events_1_v_idx", "v", table="events_1").model_copy(
        update={"partition_of": "public.events_v_idx"}
    )
    found = by_name(classify_indexes([idx("events_1_a_extra", "v", table="events_1"), attached]))
    assert list(found) == ["events_1_a_extra"]
    assert found["events_1_a_extra"].droppable
    assert found["events_1_a_extra"].reason == "duplicate of events_1_v_idx (v)"
