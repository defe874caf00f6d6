"""The worker through a Kafka outage: the broker stopped and restarted, nothing lost or doubled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from atp_service.domain import ItemSite
from atp_service.embedded import EmbeddedStack, create_topics
from atp_service.store import KeySpace, RedisStore, connect
from tests.integration._worker_process import WorkerProcess, eventually
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A broker and Redis of this test alone: it stops the broker."""
    s = EmbeddedStack.on_free_ports(tmp_path / "stack")
    s.start()
    yield s
    s.stop()


async def _receipts(bootstrap: str, sku: str, site: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(n):
            body = {
                "schema": "inventory.delta.v1", "event_id": random_event_id("wms"),
                "source": "wms", "occurred_at": "2026-11-23T05:00:00Z", "sku": sku,
                "site": site, "bucket": "on_hand", "delta": 1,
            }  # fmt: skip
            await producer.send(
                "wms.inventory.v1", key=f"{sku}@{site}".encode(), value=json.dumps(body).encode()
            )
        await producer.flush()
    finally:
        await producer.stop()


async def test_the_worker_waits_out_a_broker_restart_and_folds_everything_once(
    own_stack: EmbeddedStack, tmp_path: Path
) -> None:
    sku, site = random_sku(), random_site()
    client = connect(own_stack.redis_url, timeout=2.0, max_connections=4)
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    worker = WorkerProcess(own_stack, tmp_path / "worker")
    worker.start()

    async def on_hand_is(n: int) -> bool:
        [pos] = await store.read_positions([ItemSite(sku, site)])
        return pos.on_hand == n and pos.version == n

    try:
        await _receipts(own_stack.bootstrap, sku, site, 40)
        await eventually(lambda: on_hand_is(40), worker)

        # The broker goes away for real (Tansu is memory-only: it comes back empty, as a
        # replaced Kafka cluster without the topics' data would).
        own_stack.kafka.stop()
        await asyncio.sleep(3)  # the worker's fetches, commits and relay fail meanwhile
        worker.assert_alive()
        own_stack.kafka.start()
        await create_topics(own_stack.bootstrap)

        await _receipts(own_stack.bootstrap, sku, site, 40)
        await eventually(lambda: on_hand_is(80), worker)
        worker.assert_alive()
    finally:
        worker.stop()
        await client.aclose()
