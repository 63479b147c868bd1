"""What `perfops deploy` decides: readiness of each deployment's systems, the three-way merge
of parameters and schedule states, the strict schema; and prefect.yaml agrees with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from decisions.deployments import (
    REQUIREMENTS,
    SYSTEMS,
    deployment_paused,
    deployment_readiness,
    match_schedules,
    merge_parameters,
    schedule_active,
    strict_schema,
    system_readiness,
)
from perfops.project import project_dir_problem

ROOT = Path(__file__).resolve().parents[2]
PROJECT = yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_readiness_from_a_parameter_a_pool_variable_settings_or_the_workers() -> None:
    saved = {"perfops-postgres-target": {"prod", "staging"}}
    by_param = system_readiness("postgres", {"postgres_block": "prod"}, {}, saved)
    assert by_param.configured and "parameter postgres_block" in by_param.how
    by_pool = system_readiness("postgres", {}, {"PERFOPS_POSTGRES_BLOCK": "staging"}, saved)
    assert by_pool.configured and "PERFOPS_POSTGRES_BLOCK" in by_pool.how
    by_settings = system_readiness("postgres", {}, {"PERFOPS_DSN": "host=db"}, {})
    assert by_settings.configured
    assumed = system_readiness("postgres", {}, {}, {}, {"postgres"})
    assert assumed.configured and "--configured" in assumed.how
    nothing = system_readiness("postgres", {}, {}, {})
    assert not nothing.configured
    assert "PERFOPS_POSTGRES_BLOCK" in nothing.how and "--configured postgres" in nothing.how


def test_a_named_block_that_does_not_exist_is_not_configured_and_lists_the_saved_ones() -> None:
    typo = system_readiness(
        "postgres", {"postgres_block": "prdo"}, {}, {"perfops-postgres-target": {"prod"}}
    )
    assert not typo.configured
    assert "'prdo'" in typo.how and "saved: prod" in typo.how
    # a block named anywhere wins over settings: a typo is not hidden by PERFOPS_DSN
    hidden = system_readiness("postgres", {"postgres_block": "prdo"}, {"PERFOPS_DSN": "x"}, {})
    assert not hidden.configured and "none saved" in hidden.how


def test_scale_predictively_names_prometheus_through_metrics_block() -> None:
    saved = {"perfops-prometheus-source": {"prom"}, "perfops-redis-target": {"r"}}
    ready = deployment_readiness(
        "scale_predictively", {"metrics_block": "prom", "redis_block": "r"}, {}, saved
    )
    assert [r.system for r in ready] == ["prometheus", "redis"]
    assert all(r.configured for r in ready)


@pytest.mark.parametrize("targets", ["prod", ["orders", "billing"]])
def test_a_fleet_deployment_reaches_its_databases_through_the_fleet_file(
    targets: str | list[str],
) -> None:
    # targets set in the UI: each target's postgres block comes from the fleet file, so the
    # schedule an operator resumed is not paused again for want of PERFOPS_POSTGRES_BLOCK
    fleet = deployment_readiness("refresh_stale_statistics", {"targets": targets}, {}, {})
    assert [(r.system, r.configured) for r in fleet] == [("postgres", True)]
    assert "fleet file" in fleet[0].how and repr(targets) in fleet[0].how
    caches = deployment_readiness("warm_cache", {"targets": targets}, {}, {})
    # the fleet gives each cache's Redis; the warm-up query's PostgreSQL is still one block
    assert [(r.system, r.configured) for r in caches] == [("redis", True), ("postgres", False)]
    # the weekly report over a fleet still reads the platform's Prometheus and sends email
    report = deployment_readiness("generate_weekly_report", {"targets": targets}, {}, {})
    assert not any(r.configured for r in report)
    single = deployment_readiness("refresh_stale_statistics", {"targets": None}, {}, {})
    assert not single[0].configured


def test_merge_keeps_what_the_operator_changed_and_takes_what_prefect_yaml_changed() -> None:
    last_yaml = {"policy": {"threshold": 0.1, "parallelism": 2}, "dry_run": False}
    applied = last_yaml
    server = {"policy": {"threshold": 0.2, "parallelism": 2}, "dry_run": False, "pg": "prod"}
    yaml_now = {"policy": {"threshold": 0.1, "parallelism": 4}, "dry_run": False}
    merged, notes = merge_parameters(last_yaml, applied, yaml_now, server)
    assert merged == {
        "policy": {"threshold": 0.2, "parallelism": 4},
        "dry_run": False,
        "pg": "prod",
    }
    assert any("kept policy.threshold=0.2" in n for n in notes)
    assert any("kept pg='prod'" in n for n in notes)


def test_merge_keeps_an_operators_value_on_every_later_deploy_not_only_the_next() -> None:
    yaml_now = {"policy": {"threshold": 0.1}, "dry_run": False}
    server = {"policy": {"threshold": 0.2}, "dry_run": False, "targets": "prod"}
    first, _ = merge_parameters(yaml_now, yaml_now, yaml_now, server)
    assert first == server
    # the next deploy: prefect.yaml and the server as the first left them (its record)
    second, notes = merge_parameters(yaml_now, first, yaml_now, first)
    assert second == server and notes == []
    removed = {"dry_run": False}  # the operator removed policy; kept removed on a later deploy
    assert merge_parameters(yaml_now, removed, yaml_now, removed)[0] == removed
    # prefect.yaml changing another value still takes it, and keeps the operator's
    changed = {"policy": {"threshold": 0.1}, "dry_run": True}
    third, _ = merge_parameters(yaml_now, second, changed, second)
    assert third == {"policy": {"threshold": 0.2}, "dry_run": True, "targets": "prod"}


def test_merge_conflict_prefect_yaml_wins_and_says_so() -> None:
    merged, notes = merge_parameters({"a": 1}, {"a": 1}, {"a": 3}, {"a": 2})
    assert merged == {"a": 3}
    assert notes == ["prefect.yaml changed a to 3: it replaces 2 set on the server"]


def test_merge_without_a_record_keeps_every_server_value_that_differs() -> None:
    merged, notes = merge_parameters(None, None, {"a": 1, "b": {"c": 1}}, {"a": 2, "x": "y"})
    assert merged == {"a": 2, "b": {"c": 1}, "x": "y"}
    assert len(notes) == 2


def test_merge_removes_what_prefect_yaml_removed_and_says_so_when_the_operator_had_set_it() -> None:
    merged, notes = merge_parameters({"a": 1, "b": 2}, {"a": 1, "b": 2}, {"a": 1}, {"a": 1, "b": 2})
    assert (merged, notes) == ({"a": 1}, [])
    # the flow may no longer take it: prefect.yaml wins, and the note says what went
    merged, notes = merge_parameters({"a": 1, "b": 2}, {"a": 1, "b": 2}, {"a": 1}, {"a": 1, "b": 5})
    assert merged == {"a": 1}
    assert notes == ["prefect.yaml changed b to unset: it replaces 5 set on the server"]


def test_merge_of_a_new_deployment_is_prefect_yaml() -> None:
    assert merge_parameters(None, None, {"a": {}}, None) == ({"a": {}}, [])


@pytest.mark.parametrize(
    ("planned", "server", "applied", "expected"),
    [
        (True, None, None, (True, None)),  # new: the plan
        (False, None, None, (False, None)),
        (True, True, True, (True, None)),  # nobody changed it
        (True, False, True, (False, "kept paused as set on the server")),  # operator paused
        (False, True, False, (True, "kept active as set on the server")),  # operator resumed
        (True, False, None, (False, "kept paused as set on the server")),  # no record: paused
        (True, True, None, (True, None)),
        (False, False, False, (False, None)),
    ],
)
def test_schedule_state(
    planned: bool, server: bool | None, applied: bool | None, expected: tuple[bool, str | None]
) -> None:
    assert schedule_active(planned, server, applied) == expected


def test_a_schedule_the_operator_paused_stays_paused_on_every_later_deploy() -> None:
    # deploy 1 kept the pause and recorded it (applied False) with its plan (True)
    assert schedule_active(True, False, True, last_planned=True)[0] is False
    # deploy 2: nobody changed anything since: still paused, not resumed
    assert schedule_active(True, False, False, last_planned=True) == (
        False,
        "kept paused as set on the server",
    )
    # the plan itself changed since (systems configured, prefect.yaml's active): the plan
    assert schedule_active(True, False, False, last_planned=False) == (True, None)
    # a record from before plans were recorded: as before
    assert schedule_active(True, False, False) == (True, None)


def test_strict_schema_refuses_unknown_top_level_parameters() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert strict_schema(schema) == {**schema, "additionalProperties": False}


def test_every_deployment_in_prefect_yaml_has_its_requirements_and_gated_ones_start_off() -> None:
    names = {d["name"] for d in PROJECT["deployments"]}
    assert names == set(REQUIREMENTS)
    for deployment in PROJECT["deployments"]:
        for schedule in deployment.get("schedules") or []:
            gated = bool(REQUIREMENTS[deployment["name"]])
            # a raw `prefect deploy --all` must not start runs that fail every time
            assert schedule["active"] is not gated, deployment["name"]
    assert {s for needs in REQUIREMENTS.values() for s in needs} <= set(SYSTEMS)


def _docs_table(header: str) -> dict[str, list[str]]:
    """The rows of the table in docs/deployments.md that starts with `header`: first cell
    (without backquotes) -> the other cells."""
    lines = (ROOT / "docs" / "deployments.md").read_text().splitlines()
    start = lines.index(header) + 2  # the header and its |---| line
    rows: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_docs_show_every_deployment_what_it_needs_and_its_triggers() -> None:
    """docs/deployments.md's table is REQUIREMENTS' (decisions/deployments.py says so)."""
    table = _docs_table("| deployment | schedule (UTC) | needs | triggers |")
    assert set(table) == set(REQUIREMENTS), set(REQUIREMENTS) ^ set(table)
    for deployment in PROJECT["deployments"]:
        schedule, needs, triggers = table[deployment["name"]]
        assert all(system in needs for system in REQUIREMENTS[deployment["name"]]), deployment
        assert schedule.startswith("none") is not bool(deployment.get("schedules")), deployment
        assert bool(triggers) is bool(deployment.get("triggers")), deployment["name"]
    systems = _docs_table(
        "| system | block type (`deployments/create_blocks.py SYSTEM`) | work pool variable "
        "naming the block | settings instead of a block |"
    )
    for name, system in SYSTEMS.items():
        assert name in systems, name
        assert system.block_variable in systems[name][1], name


def test_triggers_are_named_templated_from_the_event_and_deduplicated() -> None:
    triggers = [
        t
        for d in PROJECT["deployments"]
        # every platform event runs invalidate_cache (see the next test), and every invalidation
        # asking for a warm-up runs warm_cache (tests/caches/test_trigger.py)
        if d["name"] not in ("invalidate_cache", "warm_cache")
        for t in d.get("triggers") or []
    ]
    assert triggers
    for trigger in triggers:
        assert trigger["name"].startswith("perfops: ")
        assert trigger["for_each"] == ["perfops.scaling.group"]
        assert trigger["match"]["perfops.scaling.group"] == "*"
        assert trigger["within"] > 0 and trigger["threshold"] == 1
        assert "event.resource['perfops.scaling.group']" in str(trigger["parameters"])


def test_the_cache_trigger_expects_every_platform_event_of_the_cache_policy() -> None:
    from decisions.cache_policy import load_policy

    [deployment] = [d for d in PROJECT["deployments"] if d["name"] == "invalidate_cache"]
    [trigger] = deployment["triggers"]
    policy = load_policy(ROOT / "deployments" / "caches.yaml")
    assert set(trigger["expect"]) == {p for e in policy.events for p in e.prefect_events}
    assert trigger["parameters"] == {
        "event": "{{ event.event }}",
        "payload": "{{ event.payload | tojson }}",
        "apply": True,
    }  # never force: an event past max_keys is refused and the run fails


def test_the_pull_step_reads_the_project_dir_at_run_time(tmp_path: Path) -> None:
    assert PROJECT["pull"] == [{"perfops.project.enter_project_dir": {}}]
    assert "PERFOPS_PROJECT_DIR is not set" in str(project_dir_problem(None))
    assert "does not exist" in str(project_dir_problem(str(tmp_path / "gone")))
    assert "not a perfops checkout" in str(project_dir_problem(str(tmp_path)))
    assert project_dir_problem(str(ROOT)) is None


def test_a_schedule_whose_systems_are_not_configured_stays_off_even_if_resumed() -> None:
    assert schedule_active(True, True, False, ready=False) == (False, None)
    assert schedule_active(True, None, None, ready=False) == (False, None)


def test_a_deployment_the_operator_paused_stays_paused_until_they_resume_it() -> None:
    assert deployment_paused(False, None, None) == (False, None)  # a new deployment
    # no record (the first perfops deploy after a bare prefect deploy): a pause is kept
    assert deployment_paused(False, True, None) == (True, "kept paused as set on the server")
    # paused since the last deploy, and on every later deploy while prefect.yaml says the same
    assert deployment_paused(False, True, False, False)[0] is True
    assert deployment_paused(False, True, True, False)[0] is True
    # resumed by the operator: running again
    assert deployment_paused(False, False, True, False) == (False, None)
    # prefect.yaml itself changed `paused`: it wins
    assert deployment_paused(True, False, False, False) == (True, None)


def test_a_schedule_edited_on_the_server_is_paired_with_the_one_it_was() -> None:
    utc, paris = "cron 23 3 * * * UTC", "cron 23 3 * * * Europe/Paris"
    assert match_schedules([utc], [(utc, False)]) == {utc: (False, None)}
    assert match_schedules([utc], [(paris, False)]) == {utc: (False, paris)}
    assert match_schedules([utc], []) == {}  # a new schedule
    hourly = "cron 17 * * * * UTC"
    # one found by its key, the other edited: each gets its own
    assert match_schedules([hourly, utc], [(hourly, True), (paris, False)]) == {
        hourly: (True, None),
        utc: (False, paris),
    }


def test_a_deployments_own_job_variable_names_its_block_over_the_pools() -> None:
    saved = {"perfops-postgres-target": {"orders", "shared"}}
    pool = {"PERFOPS_POSTGRES_BLOCK": "shared"}
    [ready] = deployment_readiness(
        "refresh_stale_statistics",
        {},
        pool,
        saved,
        deployment_env={"PERFOPS_POSTGRES_BLOCK": "orders"},
    )
    assert ready.configured and ready.how == "block 'orders' (job variable PERFOPS_POSTGRES_BLOCK)"
    [missing] = deployment_readiness(
        "refresh_stale_statistics",
        {},
        pool,
        saved,
        deployment_env={"PERFOPS_POSTGRES_BLOCK": "typo"},
    )
    assert not missing.configured and "job variable PERFOPS_POSTGRES_BLOCK names" in missing.how
