"""Fixtures shared by every layer: a real redis-server and a real Tansu broker, started once,
and a real Redis Cluster (3 primaries, a replica each) for the tests that run on both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio.cluster import RedisCluster

from atp_service.embedded import (
    LOOPBACK,
    EmbeddedRedisCluster,
    EmbeddedStack,
    ManagedProcess,
    free_port,
    redis_process,
)
from atp_service.store import KeySpace, RedisStore, connect
from atp_service.store.redis_store import RedisClient, ScriptCall

#: The mark of a module (or test) whose Redis fixtures run on a single Redis and on a Cluster.
BOTH_REDIS_KINDS = "both_redis_kinds"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        BOTH_REDIS_KINDS
    ):
        metafunc.parametrize("redis_kind", ["single", "cluster"])


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """One redis-server and one Tansu broker for the whole test session."""
    s = EmbeddedStack.on_free_ports(tmp_path_factory.mktemp("stack"))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    """One Redis Cluster of 3 primaries with a replica each for the whole session (a short
    node timeout: a failover takes a few seconds). Tests that kill nodes start their own."""
    cluster = EmbeddedRedisCluster(3, 1, tmp_path_factory.mktemp("cluster"), node_timeout_ms=2000)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_kind() -> str:
    """``single`` or ``cluster``: both for the modules marked ``both_redis_kinds``."""
    return "single"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A redis-server of this test alone, which the test may pause, stop or restart."""
    proc = redis_process(free_port(), tmp_path / "redis")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def own_redis_or_cluster(redis_kind: str, request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(URL, whether it is a Cluster) of a Redis for processes a test starts: one of the
    test's own, or (``redis_kind`` cluster) the session's Cluster."""
    if redis_kind == "cluster":
        cluster: EmbeddedRedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url, True
    own: ManagedProcess = request.getfixturevalue("own_redis")
    return f"redis://{LOOPBACK}:{own.port}/0", False


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A redis-server of the test module alone (its data, its policies: a module whose
    work scans every position, such as a re-evaluation pass, sees no other test's)."""
    proc = redis_process(free_port(), tmp_path_factory.mktemp("module-redis"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def producer(stack: EmbeddedStack) -> AsyncIterator[AIOKafkaProducer]:
    """A producer (acks=all) on the session's broker."""
    p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


def check_single_slot(client: RedisCluster, keys: Sequence[Any], what: str) -> None:
    """A script call on a Cluster names keys of one slot (Redis would refuse it too)."""
    slots = {client.keyslot(key) for key in keys}
    assert len(slots) <= 1, f"{what} crosses slots {sorted(slots)}: {list(keys)}"


@pytest.fixture
async def redis_client(
    request: pytest.FixtureRequest,
    stack: EmbeddedStack,
    redis_kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[RedisClient]:
    """A client of the session's Redis, or (``redis_kind`` cluster) of its Cluster; on the
    Cluster every script call the store makes is checked to touch one slot."""
    client: RedisClient
    if redis_kind == "cluster":
        cluster: EmbeddedRedisCluster = request.getfixturevalue("redis_cluster")
        client = connect(cluster.url, timeout=2.0, max_connections=16, cluster=True)
        assert isinstance(client, RedisCluster)
        run_script, run_scripts = RedisStore.run_script, RedisStore.run_scripts

        async def checked_script(
            self: RedisStore, script: Any, keys: Any, args: Any, **options: Any
        ) -> Any:
            if isinstance(self.redis, RedisCluster):
                check_single_slot(self.redis, keys, self.script_names.get(script.sha, "a script"))
            return await run_script(self, script, keys, args, **options)

        async def checked_scripts(self: RedisStore, calls: Sequence[ScriptCall]) -> list[Any]:
            if isinstance(self.redis, RedisCluster):
                for script, keys, _ in calls:
                    check_single_slot(self.redis, keys, self.script_names.get(script.sha, "?"))
            return await run_scripts(self, calls)

        monkeypatch.setattr(RedisStore, "run_script", checked_script)
        monkeypatch.setattr(RedisStore, "run_scripts", checked_scripts)
    else:
        client = connect(stack.redis_url, timeout=2.0, max_connections=16)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: RedisClient) -> RedisStore:
    return RedisStore(redis_client, KeySpace(16), dedup_window_seconds=86_400)
