"""Fixtures of the cache tests: the test Redis (db from PERFOPS_TEST_REDIS_URL, flushed), one
3-master Redis Cluster for the session, and the CDN purge API stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from blocks import RedisTarget
from blocks.cdn import CdnTarget
from tests.servers.cdn import TOKEN, ZONE, CdnStandIn
from tests.servers.redis_cluster import RedisCluster


@pytest.fixture(scope="session")
def _cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(directory=tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture()
def cluster_target(_cluster_session: RedisCluster) -> RedisTarget:
    _cluster_session.flush()
    return RedisTarget(url=_cluster_session.url)


@pytest.fixture(params=["single", "cluster"])
def cache_target(request: pytest.FixtureRequest) -> RedisTarget:
    """The same test on one Redis server and on the 3-master cluster."""
    if request.param == "cluster":
        target: RedisTarget = request.getfixturevalue("cluster_target")
        return target
    single: RedisTarget = request.getfixturevalue("redis_target")
    return single


def client_for(target: RedisTarget) -> Any:
    with redis.Redis.from_url(target.url) as probe:
        cluster = int(probe.info("cluster").get("cluster_enabled", 0)) == 1
    if cluster:
        return redis.RedisCluster.from_url(target.url)
    return redis.Redis.from_url(target.url)


@pytest.fixture(scope="session")
def _cdn_session() -> Iterator[CdnStandIn]:
    with CdnStandIn(rate=20.0, burst=3) as server:
        yield server


@pytest.fixture()
def cdn(_cdn_session: CdnStandIn) -> CdnStandIn:
    _cdn_session.reset()
    return _cdn_session


@pytest.fixture()
def cdn_target(cdn: CdnStandIn) -> CdnTarget:
    return CdnTarget(
        base_url=cdn.base_url, zone_id=ZONE, api_token=TOKEN, requests_per_second=100, burst=10
    )
