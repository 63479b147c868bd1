"""Block names that name no saved block: the error names the block type and the name asked for
and lists the saved blocks of that type (or says how to create one), and `check_block_names`
checks every block-name parameter of a run at once. Against the Prefect test harness."""

from __future__ import annotations

import uuid

import pytest
from prefect.blocks.core import Block
from pydantic import SecretStr

import blocks.resolve
from blocks import PostgresTarget, RedisTarget
from blocks.resolve import (
    check_block_names,
    load_block,
    missing_block_message,
    resolve_load_target,
    resolve_postgres,
    resolve_redis,
)
from perfops.errors import BlockNotFound, ConfigurationError
from perfops.settings import PerfopsSettings

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture()
def saved_postgres() -> str:
    """A saved perfops-postgres-target block (its name)."""
    name = f"pg-{uuid.uuid4().hex[:8]}"
    PostgresTarget(dsn=SecretStr("host=127.0.0.1 port=1 dbname=x")).save(name)
    return name


def test_a_typo_names_the_type_the_name_and_the_saved_blocks(saved_postgres: str) -> None:
    with pytest.raises(BlockNotFound) as caught:
        resolve_postgres("prdo")
    message = str(caught.value)
    assert message.startswith("no perfops-postgres-target block named 'prdo'; saved: ")
    assert saved_postgres in message.partition("; saved: ")[2].split(", ")
    assert isinstance(caught.value, ConfigurationError)  # the CLI's one line, exit 1
    assert resolve_postgres(saved_postgres).origin == "block"


def test_none_saved_says_how_to_create_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks.resolve, "saved_block_names", lambda _: [])
    assert missing_block_message(PostgresTarget, "prod") == (
        "no perfops-postgres-target block named 'prod'; none saved; create one with: "
        "python deployments/create_blocks.py postgres --name prod"
    )


def test_a_block_type_the_server_never_saw_has_none_saved() -> None:
    class NeverSaved(Block):
        _block_type_slug = f"perfops-test-never-saved-{uuid.uuid4().hex[:8]}"

    with pytest.raises(BlockNotFound, match="none saved; create one with: NeverSaved"):
        load_block(NeverSaved, "prod")


def test_other_load_errors_are_not_reported_as_missing(saved_postgres: str) -> None:
    # A redis block cannot load a postgres one's document; only a missing name is BlockNotFound.
    with pytest.raises(BlockNotFound, match="no perfops-redis-target block named"):
        resolve_redis(saved_postgres)


def test_check_block_names_reports_every_missing_name_at_once(saved_postgres: str) -> None:
    settings = PerfopsSettings(redis_block="cache-typo")
    with pytest.raises(BlockNotFound) as caught:
        check_block_names(
            settings,
            postgres_block=saved_postgres,
            redis_block=None,  # falls back to PERFOPS_REDIS_BLOCK, as resolve_redis does
            slack_block="slak",
        )
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        "PERFOPS_REDIS_BLOCK: no perfops-redis-target block named 'cache-typo'"
    )
    assert lines[1].startswith("slack_block: no perfops-slack-escalation-target block named 'slak'")


def test_check_block_names_passes_saved_and_unset_names(saved_postgres: str) -> None:
    RedisTarget(url="redis://127.0.0.1:6379/13").save(name := f"redis-{uuid.uuid4().hex[:8]}")
    check_block_names(
        PerfopsSettings(),
        postgres_block=saved_postgres,
        metrics_block=None,
        redis_block=name,
        s3_block=None,
        credentials_block=None,
    )
    with pytest.raises(TypeError, match="not a block-name parameter: postgres"):
        check_block_names(postgres="prod")


def test_an_explicit_load_target_url_wins_over_the_environments_block() -> None:
    settings = PerfopsSettings(load_target_block="stg", load_target_url="http://127.0.0.1:1")
    resolved = resolve_load_target(None, settings, url="http://127.0.0.1:8089")
    assert resolved.origin == "environment" and resolved.name is None
    assert resolved.value.base_url == "http://127.0.0.1:8089"
    assert resolved.description == "target_url: http://127.0.0.1:8089"
    with pytest.raises(ConfigurationError, match="target_url may name a loopback host only"):
        resolve_load_target(None, settings, url="https://staging.example.com")


def test_a_load_target_block_and_url_named_together_are_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_load_target("stg", PerfopsSettings(), url="http://127.0.0.1:8089")
    assert str(caught.value) == (
        "name one load target, not two: the block 'stg' (--target-block, target_block) or the "
        "local URL 'http://127.0.0.1:8089' (--target-url, target_url)"
    )


def test_the_environments_load_target_block_wins_over_its_url_and_is_named() -> None:
    from blocks import LoadTarget

    name = f"lt-{uuid.uuid4().hex[:8]}"
    LoadTarget(base_url="https://staging.example.com").save(name)
    settings = PerfopsSettings(load_target_block=name, load_target_url="http://127.0.0.1:1")
    resolved = resolve_load_target(None, settings)
    assert (resolved.origin, resolved.name) == ("block", name)
    assert resolved.value.base_url == "https://staging.example.com"
