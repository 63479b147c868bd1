"""`redis_address`: one Redis server, one name, however its URL spells it (the fleet's pacing
slot and the cache statistics' node names read it), never with its user or password."""

from __future__ import annotations

import pytest

from blocks.redis_target import RedisTarget, redis_address


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache.internal:6379/0",
        "redis://Cache.Internal:6379/0",
        "redis://cache.internal.:6379/0",
        "redis://cache.internal:06379/0",
        "redis://cache.internal/0",
        "redis://cache.internal",
        "redis://:s3cret@cache.internal:6379/0",
        "redis://perfops:s3cret@CACHE.internal./0",
    ],
)
def test_one_server_however_its_url_spells_it(url: str) -> None:
    assert redis_address(url) == ("cache.internal:6379", "0")


def test_a_socket_is_named_by_its_path_and_its_db_read_from_the_query() -> None:
    assert redis_address("unix:///run/redis/redis.sock?db=3") == ("unix:/run/redis/redis.sock", "3")
    assert redis_address("unix:///run/redis/redis.sock") == ("unix:/run/redis/redis.sock", "0")


def test_other_servers_and_databases_stay_apart() -> None:
    assert redis_address("rediss://cache.internal:6380/2") == ("cache.internal:6380", "2")
    assert redis_address("redis://localhost/1") != redis_address("redis://127.0.0.1/1")
    assert redis_address("redis:///") == ("localhost:6379", "0")


def test_a_password_never_reaches_the_name() -> None:
    server, db = redis_address("redis://user:hunter2@cache.internal:6379/4")
    assert "hunter2" not in server + db and "user" not in server


def test_a_user_and_password_in_the_url_move_to_their_fields() -> None:
    """The URL is a plain field (the UI shows it, the block document keeps it, errors name
    it): a password in it (PERFOPS_REDIS_URL=redis://:pw@cache/0) goes to the secret field."""
    target = RedisTarget(url="redis://bob:p%40ss-word@cache.internal:6379/2")
    assert target.url == "redis://cache.internal:6379/2"
    assert target.username == "bob"
    assert target.password is not None and target.password.get_secret_value() == "p@ss-word"
    assert "p%40ss" not in target.model_dump_json() and "p@ss" not in target.model_dump_json()
    alone = RedisTarget(url="redis://:s3cret@cache.internal/0")
    assert alone.url == "redis://cache.internal/0" and alone.username is None
    assert alone.password is not None and alone.password.get_secret_value() == "s3cret"
    socket = RedisTarget(url="unix://:s3cret@/run/redis.sock?db=3")
    assert socket.url == "unix:///run/redis.sock?db=3"
    plain = RedisTarget(url="redis://cache.internal:6379/0", password="kept")
    assert plain.url == "redis://cache.internal:6379/0"
    assert plain.password is not None and plain.password.get_secret_value() == "kept"
