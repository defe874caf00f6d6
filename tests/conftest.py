"""Fixtures shared by every layer: a real redis-server and a real Tansu broker, started once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from atp_service.embedded import EmbeddedStack, ManagedProcess, free_port, redis_process
from atp_service.store import KeySpace, RedisStore, connect


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """One redis-server and one Tansu broker for the whole test session."""
    s = EmbeddedStack.on_free_ports(tmp_path_factory.mktemp("stack"))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A redis-server of this test alone, which the test may pause, stop or restart."""
    proc = redis_process(free_port(), tmp_path / "redis")
    proc.start()
    yield proc
    proc.stop()


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


@pytest.fixture
async def redis_client(stack: EmbeddedStack) -> AsyncIterator[aioredis.Redis]:
    client = connect(stack.redis_url, timeout=2.0, max_connections=16)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> RedisStore:
    return RedisStore(redis_client, KeySpace(16), dedup_window_seconds=86_400)
