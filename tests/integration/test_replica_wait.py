"""``ATP_REDIS_WAIT_REPLICAS``: an HTTP write is answered once a replica has it (Redis WAIT on
the connection the script ran on); a replica that does not confirm in time makes the answer
a 503 with Retry-After, and the write still counts: the retry with the same
Idempotency-Key finds it. On a real primary and replica (the replica paused to be late)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from atp_service.api.app import create_app
from atp_service.config import Settings
from atp_service.domain import Bucket, InventoryDelta, ItemSite, Source
from atp_service.domain.reservations import LineRequest, ReservationRequest
from atp_service.embedded import LOOPBACK, ManagedProcess, free_ports, redis_process
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from atp_service.store._pipe import ReplicasBehind, ReplicaWait
from atp_service.store.redis_store import RedisClient
from atp_service.store.reservations import Placed, ReservationStore
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

OMS_KEY = "wait-oms-key"
OMS = {"Authorization": f"Bearer {OMS_KEY}"}
NOW = "2026-11-23T05:00:00Z"


@dataclass
class PrimaryAndReplica:
    primary: ManagedProcess
    replica: ManagedProcess  # the tests pause it: then it confirms nothing

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.primary.port}/0"


@pytest.fixture(scope="module")
def redis_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrimaryAndReplica]:
    work = tmp_path_factory.mktemp("wait")
    primary_port, replica_port = free_ports(2)
    primary = redis_process(primary_port, work / "primary")
    replica = redis_process(
        replica_port, work / "replica", "--replicaof", LOOPBACK, str(primary_port)
    )
    primary.start()
    replica.start()
    try:
        yield PrimaryAndReplica(primary, replica)
    finally:
        replica.stop()
        primary.stop()


async def replica_in_sync(client: RedisClient) -> None:
    deadline = time.monotonic() + 20
    while True:
        info = await client.info("replication")
        if info.get("connected_slaves", 0) >= 1 and info.get("slave0", {}).get("state") == "online":
            # one write it has confirmed: the link carries writes now
            await client.set("atp:wait-probe", "1")
            if await client.wait(1, 1000) >= 1:
                return
        assert time.monotonic() < deadline, f"the replica never caught up: {info}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def client(redis_pair: PrimaryAndReplica) -> AsyncIterator[RedisClient]:
    redis = connect(redis_pair.url, timeout=0.5, max_connections=8)
    await replica_in_sync(redis)
    yield redis
    redis_pair.replica.signal(signal.SIGCONT)
    await redis.aclose()


async def stocked(client: RedisClient) -> tuple[str, str]:
    sku, site = random_sku(), random_site()
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    await store.fold(
        InventoryDelta(random_event_id(), Source.WMS, sku, site, Bucket.ON_HAND, 10, NOW),
        PolicyBook.of({}),
    )
    await store.register_sites([site])
    return sku, site


async def test_a_write_no_replica_confirms_in_time_fails_and_still_counts(
    client: RedisClient, redis_pair: PrimaryAndReplica
) -> None:
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400, wait=ReplicaWait(1, 200))
    reservations = ReservationStore(store, idempotency_ttl_seconds=86_400)
    sku, site = await stocked(client)
    request = ReservationRequest("web", (LineRequest(sku, site, 3),))

    async def place(key: str) -> Placed:
        return await reservations.reserve(
            request, reservation_id=reservations.new_reservation_id("oms", key),
            principal="oms", idempotency_key_value=key, correlation_id="c",
            book=PolicyBook.of({}),
        )  # fmt: skip

    confirmed = await place(uuid.uuid4().hex)  # the replica confirms: answered
    redis_pair.replica.signal(signal.SIGSTOP)  # now it confirms nothing
    key = uuid.uuid4().hex
    with pytest.raises(ReplicasBehind):
        await place(key)
    redis_pair.replica.signal(signal.SIGCONT)
    await replica_in_sync(client)

    again = await place(key)

    assert again.replayed and not confirmed.replayed
    [pos] = await store.read_positions([ItemSite(sku, site)])
    assert pos.reserved == 6  # each held once


async def test_over_http_the_late_replica_is_a_503_with_retry_after_and_the_retry_a_201(
    client: RedisClient, redis_pair: PrimaryAndReplica
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        api_keys=[{"name": "oms", "key": OMS_KEY, "scopes": ["reservations:write"]}],  # type: ignore[list-item]
        redis_url=redis_pair.url,
        redis_wait_replicas=1,
        redis_wait_timeout_ms=200,
        api_position_copy_entries=0,
    )
    sku, site = await stocked(client)
    body = {"channel": "web", "lines": [{"sku": sku, "site": site, "qty": 2}]}
    app = create_app(settings, redis_client=client, relay=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            redis_pair.replica.signal(signal.SIGSTOP)
            late = await http.post(
                "/v1/reservations", json=body, headers={**OMS, "Idempotency-Key": "w-1"}
            )
            redis_pair.replica.signal(signal.SIGCONT)
            await replica_in_sync(client)
            retried = await http.post(
                "/v1/reservations", json=body, headers={**OMS, "Idempotency-Key": "w-1"}
            )
    assert late.status_code == 503, late.text
    assert late.headers["retry-after"]
    assert json.loads(late.text)["code"] == "store_unavailable"
    assert retried.status_code == 201, retried.text
    assert retried.headers["idempotent-replayed"] == "true"
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    [pos] = await store.read_positions([ItemSite(sku, site)])
    assert pos.reserved == 2
