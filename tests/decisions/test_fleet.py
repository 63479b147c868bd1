"""The fleet file: what it selects, and how a malformed one is reported (file, line, field); the
report of a run over several targets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from decisions.fleet import (
    Fleet,
    FleetFileError,
    FleetReport,
    Target,
    TargetRun,
    cluster_limit,
    database_limit,
    load_fleet,
    parse_fleet,
    scaling_key,
    server_of,
    share_count,
    share_runs_lost,
    share_runs_overdue,
    share_step,
    split_shares,
)
from perfops.errors import ConfigurationError
from perfops.settings import PROJECT_DIR

FLEET = """\
max_parallel: 3
targets:
  - name: orders
    blocks: {postgres: perfops-postgres-orders}
    labels: {env: prod, team: payments}
    cluster: pg-1
  - name: billing
    blocks: {postgres: perfops-postgres-billing}
    labels: {env: prod, team: payments}
    cluster: pg-1
  - name: catalog
    blocks: {postgres: perfops-postgres-eu-catalog}
    labels: {env: staging}
fleets:
  payments:
    targets: [billing, orders]
  prod:
    labels: {env: prod}
  eu:
    block_prefix: perfops-postgres-eu-
"""


@pytest.fixture()
def fleet() -> Fleet:
    return parse_fleet(FLEET, "fleet.yaml")


def names(targets: list[Target]) -> list[str]:
    return [t.name for t in targets]


def test_the_shipped_fleet_file_is_valid() -> None:
    shipped = load_fleet(PROJECT_DIR / "deployments" / "fleet.yaml")
    assert names(shipped.select("prod")) == ["orders", "billing", "catalog", "api"]
    [api] = [t for t in shipped.targets if t.autoscaling]
    assert api.has("autoscaling") and not api.has("postgres") and api.has("prometheus")
    assert names(shipped.select("staging")) == ["catalog-staging"]


def test_defaults_and_limits(fleet: Fleet) -> None:
    assert fleet.max_parallel == 3
    assert fleet.max_parallel_per_cluster == 2
    orders, _, catalog = fleet.targets
    assert orders.cluster_for("perfops.postgres.db1:5432/orders") == "pg-1"
    # no cluster: the server of its DSN, so databases on one server share its slots
    assert catalog.cluster_for("perfops.postgres.db2:6432/catalog") == "db2:6432"
    assert cluster_limit("pg-1") == "perfops-cluster-pg-1"


def test_slot_names_follow_the_database_not_the_target() -> None:
    assert database_limit("perfops.postgres.db1:5432/orders") == "perfops-db-db1:5432:orders"
    # Prefect refuses / % & > < in a limit's name: replaced, and a hash keeps names apart
    odd = database_limit("perfops.postgres.db1:5432/a/b")
    assert odd.startswith("perfops-db-db1:5432:a_b-") and "/" not in odd
    assert odd != database_limit("perfops.postgres.db1:5432/a_b")
    assert "/" not in cluster_limit("rack/1")


def test_a_socket_database_has_a_server_and_slots_of_its_own() -> None:
    """A Unix-socket DSN's resource id has slashes in its host: its server was '' (so every
    socket target shared `perfops-cluster-`), now the socket directory and port."""
    resource = "perfops.postgres./var/run/postgresql:5432/orders"
    assert server_of(resource) == "/var/run/postgresql:5432"
    limit = cluster_limit(server_of(resource))
    assert limit.startswith("perfops-cluster-_var_run_postgresql:5432-"), limit
    assert limit != cluster_limit(server_of("perfops.postgres./tmp:5432/orders"))
    db = database_limit(resource)
    assert db.startswith("perfops-db-_var_run_postgresql:5432:orders-"), db
    assert db != database_limit("perfops.postgres./var/run/postgresql:5432/billing")
    assert server_of("perfops.postgres.h1,h2:5432/orders") == "h1,h2:5432"
    # never an empty name, even from an address that does not parse
    assert server_of("perfops.postgres.invalid-dsn") == "invalid-dsn"
    assert database_limit("perfops.postgres.invalid-dsn").endswith(":unknown-database")


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ("payments", ["orders", "billing"]),  # the file's order, not the fleet's list
        ("prod", ["orders", "billing"]),
        ("eu", ["catalog"]),
        ("all", ["orders", "billing", "catalog"]),
        ("env=staging", ["catalog"]),
        ("catalog", ["catalog"]),
        (["catalog", "orders", "catalog"], ["catalog", "orders"]),
    ],
)
def test_selection(fleet: Fleet, selection: str | list[str], expected: list[str]) -> None:
    assert names(fleet.select(selection)) == expected


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ("nope", "'nope' is neither a fleet (payments, prod, eu), 'all', a label"),
        (["orders", "nope"], "no target 'nope' in the fleet; targets: orders, billing, catalog"),
        ([], "no targets given"),
        ("env=dev", "no target has the label 'env=dev'"),
    ],
)
def test_a_selection_that_selects_nothing_says_why(
    fleet: Fleet, selection: str | list[str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fleet.select(selection)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            FLEET.replace("name: billing", "name: Billing_DB"),
            "fleet.yaml line 7, targets[1].name: String should match pattern",
        ),
        (
            FLEET.replace("cluster: pg-1\n  - name: billing", "cluster: pg-1\n  - name: orders"),
            "fleet.yaml line 3, targets: Value error, target names must be unique: orders given "
            "twice",
        ),
        (
            FLEET.replace("{postgres: perfops-postgres-billing}", "{mysql: x}"),
            "fleet.yaml line 8, targets[1].blocks.mysql: Input should be 'postgres'",
        ),
        # an empty block name is no name: the child loaded PERFOPS_POSTGRES_BLOCK (or
        # PERFOPS_DSN, or the demo database) and ANALYZEd that database, reported done
        (
            FLEET.replace("{postgres: perfops-postgres-billing}", '{postgres: ""}'),
            "fleet.yaml line 8, targets[1].blocks.postgres: String should match pattern",
        ),
        (
            FLEET.replace("{postgres: perfops-postgres-billing}", "{postgres: Billing DB}"),
            "fleet.yaml line 8, targets[1].blocks.postgres: String should match pattern",
        ),
        (FLEET.replace("max_parallel: 3", "max_parallel: 0"), "line 1, max_parallel: Input"),
        (
            FLEET.replace("targets: [billing, orders]", "targets: [billing, shop]"),
            "fleet 'payments' names unknown targets: shop",
        ),
        (
            FLEET.replace("labels: {env: prod}\n  eu", "labels: {}\n  eu"),
            "line 18, fleets.prod: Value error, give targets, labels or block_prefix",
        ),
        (FLEET.replace("    cluster: pg-1\n", "    cluster: pg-1\n    zone: a\n", 1), "zone"),
        ("targets: [", "fleet.yaml line 1: not valid YAML"),
        ("- a\n", "fleet.yaml: expected a mapping with targets"),
    ],
)
def test_a_malformed_file_names_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_fleet(text, "fleet.yaml")
    assert message in str(caught.value)


def test_a_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read the fleet file .*nope\.yaml"):
        load_fleet(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read the fleet file"),
        ("targets: [", "not valid YAML"),
        ("", "expected a mapping"),
        ("targets: []\n", "list targets"),
        (
            "targets:\n  - {name: a, blocks: {postgres: pg-a}}\nfleets:\n  f: {targets: [zz]}\n",
            "fleet 'f' names unknown targets: zz",
        ),
    ],
)
def test_every_fault_of_the_file_is_a_fleet_file_error_saying_what_named_it(
    tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "fleet.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(FleetFileError, match=re.escape(message)) as caught:
        load_fleet(path, "named by --fleet-file")
    if text is None:
        assert "(named by --fleet-file; see docs/fleet.md)" in str(caught.value)


def test_a_selection_fault_is_no_fleet_file_error(fleet: Fleet) -> None:
    with pytest.raises(ConfigurationError) as caught:
        fleet.select("nosuch")
    assert not isinstance(caught.value, FleetFileError)


def test_fleet_report_message_and_rows() -> None:
    report = FleetReport(
        flow="refresh_stale_statistics",
        selection="prod",
        targets=[
            TargetRun(
                target="orders", result="done", reason="ok", changed="2 analyzed", flow_run_id="abc"
            ),
            TargetRun(target="billing", result="failed", reason="cannot connect to PostgreSQL"),
            TargetRun(target="catalog", result="done", reason="nothing to do"),
        ],
    )
    assert report.summary == "2 of 3 targets done, 1 failed"
    assert report.failure == "1 of 3 targets failed: billing: cannot connect to PostgreSQL"
    rows = report.artifact_rows("http://127.0.0.1:4200/")
    assert list(rows[0]) == ["target", "result", "reason", "changed", "run", "seconds", "waited"]
    assert rows[0]["run"] == "http://127.0.0.1:4200/runs/flow-run/abc"
    assert rows[1]["run"] == ""
    many = report.model_copy(
        update={
            "targets": [TargetRun(target=f"t{i}", result="failed", reason="x") for i in range(5)]
        }
    )
    assert many.failure == "5 of 5 targets failed: t0: x; t1: x; t2: x; and 2 more"
    done = report.model_copy(update={"targets": report.targets[:1]})
    assert done.failure is None


def test_a_target_needs_blocks_or_a_group() -> None:
    with pytest.raises(ConfigurationError, match=r"targets\[0\].*give blocks .* or autoscaling"):
        parse_fleet("targets:\n  - name: lonely\n", "fleet.yaml")


def test_discovery_makes_a_target_per_saved_block_with_the_prefix() -> None:
    fleet = parse_fleet(
        "targets:\n"
        "  - {name: orders, blocks: {postgres: perfops-postgres-orders}}\n"
        "discover:\n"
        "  - {block_prefix: perfops-postgres-eu-, labels: {region: eu}, cluster: pg-eu}\n",
        "fleet.yaml",
    )
    saved = [
        "perfops-postgres-eu-billing",
        "perfops-postgres-eu-Orders",  # lowercased: collides with the file's target, file wins
        "perfops-postgres-eu-a_b",  # no target name
        "perfops-postgres-us-catalog",  # another prefix
    ]
    grown, skipped = fleet.with_discovered(saved)
    assert names(grown.targets) == ["orders", "billing"]
    [billing] = grown.select("region=eu")
    assert billing.blocks == {"postgres": "perfops-postgres-eu-billing"}
    assert billing.cluster == "pg-eu"
    assert skipped == [
        "perfops-postgres-eu-Orders: a target 'orders' exists already",
        "perfops-postgres-eu-a_b: 'a_b' is no target name (lowercase letters, digits, -)",
    ]


def test_no_target_takes_the_name_of_a_fleet_or_all() -> None:
    # A saved block perfops-postgres-staging (the staging database) became the target
    # "staging" beside the fleet "staging" (every env=staging target): `--fleet staging` ran
    # the fleet, `targets: [staging]` the one database. The file refuses a fleet named like a
    # listed target; a discovered one, or a target called "all", went through.
    fleet = parse_fleet(
        "targets:\n  - {name: orders, blocks: {postgres: perfops-postgres-orders}}\n"
        "discover:\n  - block_prefix: perfops-postgres-\n"
        "fleets:\n  staging: {labels: {env: staging}}\n",
        "fleet.yaml",
    )
    grown, skipped = fleet.with_discovered(
        ["perfops-postgres-staging", "perfops-postgres-all", "perfops-postgres-billing"]
    )
    assert names(grown.targets) == ["orders", "billing"]
    assert skipped == [
        "perfops-postgres-all: 'all' names every target: a run selecting 'all' would run that, "
        "not this database",
        "perfops-postgres-staging: 'staging' names the fleet 'staging': a run selecting "
        "'staging' would run that, not this database",
    ]
    with pytest.raises(ConfigurationError, match="line 2, targets: Value error, a target may not"):
        parse_fleet("targets:\n  - {name: all, blocks: {postgres: perfops-postgres-a}}\n", "f")


def test_a_fleet_may_only_discover_but_must_have_targets_somehow() -> None:
    only = parse_fleet("discover:\n  - block_prefix: perfops-postgres-\n", "fleet.yaml")
    assert only.targets == [] and only.with_discovered(["perfops-postgres-x"])[0].targets
    with pytest.raises(ConfigurationError, match="list targets, or discover them"):
        parse_fleet("max_parallel: 2\n", "fleet.yaml")


def test_a_named_fleet_naming_a_target_discovery_did_not_find_is_refused() -> None:
    # with discover the file cannot check a fleet's target list; the selection does, once the
    # blocks are listed: a deleted or misspelt block must not drop its target from the run
    fleet = parse_fleet(
        "discover:\n  - block_prefix: perfops-postgres-\n"
        "fleets:\n  payments: {targets: [orders, billing]}\n",
        "fleet.yaml",
    )
    found, _ = fleet.with_discovered(["perfops-postgres-orders", "perfops-postgres-billing"])
    assert names(found.select("payments")) == ["billing", "orders"]  # discovered: by name
    gone, _ = fleet.with_discovered(["perfops-postgres-orders"])
    with pytest.raises(ConfigurationError, match=r"fleet 'payments' names targets .*: billing;"):
        gone.select("payments")


def test_spread_is_a_number_of_shares_or_auto() -> None:
    text = "targets:\n  - {name: a, blocks: {postgres: p-a}}\n"
    assert parse_fleet(text, "fleet.yaml").spread == 1
    assert parse_fleet("spread: auto\n" + text, "fleet.yaml").spread == "auto"
    assert parse_fleet("spread: 3\n" + text, "fleet.yaml").spread == 3
    with pytest.raises(ConfigurationError, match="spread"):
        parse_fleet("spread: 0\n" + text, "fleet.yaml")
    with pytest.raises(ConfigurationError, match="spread"):
        parse_fleet("spread: many\n" + text, "fleet.yaml")


@pytest.mark.parametrize(
    ("spread", "online", "targets", "expected"),
    [
        (1, 4, 10, 1),
        (3, 0, 10, 3),  # a number does not look at the workers
        (3, 0, 2, 2),  # never more shares than targets
        ("auto", 4, 10, 4),
        ("auto", 0, 10, 1),  # no worker online (the parent's own is busy with it): one share
        ("auto", 4, 1, 1),
    ],
)
def test_share_count(spread: int | str, online: int, targets: int, expected: int) -> None:
    assert share_count(spread, online, targets) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spread", "limit", "cancels_new", "expected"),
    [
        (3, 1, False, 1),  # the parent holds the only slot: a share would wait for it forever
        ("auto", 1, False, 1),
        (3, 2, False, 2),  # the parent's slot and one for a share
        (3, 10, False, 3),
        (3, 4, True, 1),  # a share over the limit would be cancelled, its targets not run
        (3, None, False, 3),  # no limit
    ],
)
def test_shares_fit_the_deployments_concurrency_limit_the_parent_holds_a_slot_of(
    spread: int | str, limit: int | None, cancels_new: bool, expected: int
) -> None:
    got = share_count(spread, 4, 10, limit, cancels_new=cancels_new)  # type: ignore[arg-type]
    assert got == expected


@pytest.mark.parametrize(
    ("state", "claimable", "overdue", "expected"),
    [
        ("COMPLETED", False, False, "collect"),
        ("CRASHED", True, True, "collect"),
        ("SCHEDULED", False, False, "wait"),  # the workers have not had their time
        ("SCHEDULED", True, False, "take back"),  # also AwaitingConcurrencySlot
        ("SCHEDULED", False, True, "take back"),
        ("PENDING", True, False, "wait"),  # a worker has it
        ("RUNNING", True, False, "wait"),
        ("RUNNING", True, True, "give up"),  # never wait forever
        ("PAUSED", True, True, "give up"),
        (None, False, False, "give up"),  # the run was deleted
    ],
)
def test_a_spread_parent_never_waits_forever_on_a_share(
    state: str | None, claimable: bool, overdue: bool, expected: str
) -> None:
    assert share_step(state, claimable=claimable, overdue=overdue) == expected


def test_a_share_given_up_on_reports_its_targets_not_run_saying_why(fleet: Fleet) -> None:
    targets = fleet.select("all")[:2]
    rows = share_runs_overdue(targets, "warm_cache-share-2-of-2", "Running", 600)
    assert [(r.target, r.result) for r in rows] == [(t.name, "not run") for t in targets]
    assert rows[0].reason.startswith(
        "its share run warm_cache-share-2-of-2 was still Running after 600 s (the fleet's "
        "share_timeout_s)"
    )
    assert "no longer exists" in share_runs_overdue(targets, "s", None, 600)[0].reason
    text = "targets:\n  - {name: a, blocks: {postgres: p-a}}\n"
    assert parse_fleet(text, "fleet.yaml").share_timeout_s == 14400
    with pytest.raises(ConfigurationError, match="share_timeout_s"):
        parse_fleet("share_timeout_s: 5\n" + text, "fleet.yaml")


def test_shares_are_dealt_round_robin_in_the_fleet_order(fleet: Fleet) -> None:
    targets = fleet.select("all")
    shares = split_shares(targets, 2)
    assert [names(s) for s in shares] == [names(targets[0::2]), names(targets[1::2])]
    assert sorted(t.name for s in shares for t in s) == sorted(names(targets))
    assert split_shares(targets[:1], 4) == [targets[:1]]


def test_a_lost_share_reports_each_of_its_targets_not_run(fleet: Fleet) -> None:
    targets = fleet.select("all")[:2]
    rows = share_runs_lost(targets, "refresh-share-2-of-2", "Crashed", "worker killed")
    assert [(r.target, r.result) for r in rows] == [(t.name, "not run") for t in targets]
    assert rows[0].reason == "its share run refresh-share-2-of-2 ended Crashed: worker killed"


def test_a_groups_key_names_it_behind_what_is_configured() -> None:
    """One name in two regions or accounts: two keys, so two locks, states and histories."""
    assert scaling_key("api") == "api"  # a group named alone keeps the key it always had
    assert scaling_key("api", "eu-west-1") == "eu-west-1/api"
    assert scaling_key("api", "us-east-1") == "us-east-1/api"
    assert scaling_key("api", "eu-west-1", None, "prod-aws") == "prod-aws/eu-west-1/api"
    assert (
        scaling_key("api", "eu-west-1", "http://127.0.0.1:5000/", "prod-aws")
        == "127.0.0.1:5000/prod-aws/eu-west-1/api"
    )
    fleet = parse_fleet(
        "targets:\n"
        "  - {name: api-eu, autoscaling: {group: api, region: eu-west-1}}\n"
        "  - {name: api-us, autoscaling: {group: api, region: us-east-1}}\n"
        "  - {name: api-staging, autoscaling: {group: api, region: eu-west-1, "
        "credentials_block: staging-aws}}\n",
        "fleet.yaml",
    )
    keys = [t.autoscaling.key for t in fleet.targets if t.autoscaling]
    assert keys == ["eu-west-1/api", "us-east-1/api", "staging-aws/eu-west-1/api"]


def test_a_groups_key_has_no_secret_and_one_spelling_of_its_endpoint() -> None:
    """The endpoint's user:password never reaches a key (Redis keys, chart file names,
    records); AWS's default regional endpoint is the region, not an endpoint of its own."""
    key = scaling_key("api", "eu-west-1", "http://admin:s3cret@LocalHost:5000/")
    assert key == "localhost:5000/eu-west-1/api" and "s3cret" not in key
    aws = "https://autoscaling.eu-west-1.amazonaws.com"
    assert scaling_key("api", "eu-west-1", aws) == "eu-west-1/api"
    assert scaling_key("api", "eu-west-1", aws + "/") == scaling_key("api", "eu-west-1")
    assert scaling_key("api", None, aws) == "eu-west-1/api"  # the endpoint says the region
    # another region's endpoint is where the calls go: keyed
    assert scaling_key("api", "us-east-1", aws) == (
        "autoscaling.eu-west-1.amazonaws.com/us-east-1/api"
    )
    assert scaling_key("api", None, "localhost:5000") == "localhost:5000/api"


def test_groups_of_one_name_are_refused_while_any_gives_no_region() -> None:
    """{group: api} is in the worker's AWS_REGION: perhaps eu-west-1, perhaps not."""
    with pytest.raises(
        ConfigurationError,
        match=r"targets api-a and api-b scale Auto Scaling groups named 'api' and api-a gives no "
        r"region .*give each of them its region",
    ):
        parse_fleet(
            "targets:\n"
            "  - {name: api-a, autoscaling: {group: api}}\n"
            "  - {name: api-b, autoscaling: {group: api, region: eu-west-1}}\n",
            "fleet.yaml",
        )
    fleet = parse_fleet(
        "targets:\n"
        "  - {name: api-a, autoscaling: {group: api, region: us-east-1}}\n"
        "  - {name: api-b, autoscaling: {group: api, endpoint_url: "
        "'https://autoscaling.eu-west-1.amazonaws.com'}}\n"
        "  - {name: web, autoscaling: {group: web}}\n",  # alone: fine, and still keyed `web`
        "fleet.yaml",
    )
    keys = [t.autoscaling.key for t in fleet.targets if t.autoscaling]
    assert keys == ["us-east-1/api", "eu-west-1/api", "web"]
    with pytest.raises(ConfigurationError, match=r"same Auto Scaling group.*eu-west-1/api"):
        parse_fleet(
            "targets:\n"
            "  - {name: api-a, autoscaling: {group: api, region: eu-west-1}}\n"
            "  - {name: api-b, autoscaling: {group: api, region: eu-west-1, endpoint_url: "
            "'https://autoscaling.eu-west-1.amazonaws.com/'}}\n",
            "fleet.yaml",
        )


def test_one_group_listed_twice_is_refused_naming_both_targets() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"targets scale the same Auto Scaling group and would share its lock and state: "
        r"api-a and api-b \(eu-west-1/api\)",
    ):
        parse_fleet(
            "targets:\n"
            "  - {name: api-a, autoscaling: {group: api, region: eu-west-1}}\n"
            "  - {name: api-b, autoscaling: {group: api, region: eu-west-1}}\n",
            "fleet.yaml",
        )
