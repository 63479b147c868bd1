"""Redis tasks against the real server."""

import pytest

from blocks import RedisTarget
from perfops.errors import ConnectionFailed
from tasks.cache import delete_keys, fetch_redis_info, get_value, set_value

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_set_get_delete(redis_target: RedisTarget) -> None:
    assert set_value(redis_target, "perfops:test:a", "1", ttl_s=60)
    assert get_value(redis_target, "perfops:test:a") == "1"
    with redis_target.get_client() as client:
        assert 0 < client.ttl("perfops:test:a") <= 60
    assert delete_keys(redis_target, ["perfops:test:a", "perfops:test:missing"]) == 1
    assert get_value(redis_target, "perfops:test:a") is None


def test_info_reports_the_version(redis_target: RedisTarget) -> None:
    info = fetch_redis_info(redis_target)
    assert info["redis_version"].count(".") == 2


def test_unreachable_redis_is_a_clear_error() -> None:
    target = RedisTarget(url="redis://127.0.0.1:1/0", retries=1, socket_timeout_s=1)
    with pytest.raises(ConnectionFailed, match=r"Redis at redis://127\.0\.0\.1:1/0"):
        fetch_redis_info.fn(target)
