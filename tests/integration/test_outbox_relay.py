"""The outbox relay on a real redis-server and a real Tansu broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from atp_service.config import EVENTS_TOPIC
from atp_service.domain import Bucket, ChannelPolicy, InventoryDelta, Source
from atp_service.embedded import EmbeddedStack
from atp_service.events import KafkaPublisher, OutboxRelay
from atp_service.store import PolicyBook, RedisStore
from atp_service.store.redis_store import outbox_records
from tests.random_refs import random_event_id, random_sku

pytestmark = pytest.mark.integration

BOOK = PolicyBook.of({"web": ChannelPolicy()})


class BrokenPublisher:
    """Kafka as seen during an outage: every publish fails."""

    def __init__(self) -> None:
        self.attempts = 0

    async def publish(self, topic: str, messages: Sequence[tuple[str, str]]) -> None:
        self.attempts += 1
        raise ConnectionError("broker unreachable")


@pytest.fixture
async def producer(stack: EmbeddedStack) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


async def _fold_receipts(store: RedisStore, sku: str, n: int) -> None:
    events = [
        InventoryDelta(random_event_id(), Source.WMS, sku, "DC-1", Bucket.ON_HAND, 1, "x")
        for _ in range(n)
    ]
    await store.fold_many(events, BOOK)


async def records_in(store: RedisStore, stream: str) -> list[tuple[str, str]]:
    return [r for _, fields in await store.redis.xrange(stream) for r in outbox_records(fields)]


async def _drain(relay: OutboxRelay) -> None:
    while await relay.relay_once():
        pass


async def _published_for(stack: EmbeddedStack, sku: str, expected: int) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(
        EVENTS_TOPIC, bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
    )  # fmt: skip
    await consumer.start()
    found: list[dict[str, object]] = []
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while len(found) < expected and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    if r.key == f"{sku}@DC-1".encode() and b'"channel":"web"' in r.value:
                        found.append(json.loads(r.value))
        # Read a little longer: a duplicate would show up here.
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            found.extend(
                json.loads(r.value)
                for r in records
                if r.key == f"{sku}@DC-1".encode() and b'"channel":"web"' in r.value
            )
    finally:
        await consumer.stop()
    return found


async def test_every_outbox_event_reaches_kafka_and_leaves_the_outbox(
    store: RedisStore, producer: AIOKafkaProducer, stack: EmbeddedStack
) -> None:
    sku = random_sku()
    await _fold_receipts(store, sku, 5)
    relay = OutboxRelay(store, KafkaPublisher(producer), topic=EVENTS_TOPIC, consumer="t-relay-1")
    try:
        await _drain(relay)
    finally:
        await relay.leases.release()  # the next test's relays need not wait for them to lapse
    events = await _published_for(stack, sku, 5)
    assert sorted(e["atp"] for e in events) == [1, 2, 3, 4, 5]
    stream = store.keys.item_site(sku, "DC-1").outbox
    assert [r for r in await records_in(store, stream) if r[0] == f"{sku}@DC-1"] == []


async def test_events_wait_in_the_outbox_while_kafka_is_down_and_go_out_once_after(
    store: RedisStore, producer: AIOKafkaProducer, stack: EmbeddedStack
) -> None:
    sku = random_sku()
    await _fold_receipts(store, sku, 3)
    broken = BrokenPublisher()
    dead = OutboxRelay(
        store, broken, topic=EVENTS_TOPIC, consumer="t-relay-dead", claim_idle_ms=100
    )
    with pytest.raises(ConnectionError):
        await dead.relay_once()
    with pytest.raises(ConnectionError):
        await dead.relay_once()  # retries its own pending entries, still failing
    assert broken.attempts == 2
    stream = store.keys.item_site(sku, "DC-1").outbox
    # Each receipt moved two channels: "web" and "*" (every channel without a policy).
    assert len([r for r in await records_in(store, stream) if r[0] == f"{sku}@DC-1"]) == 6

    # The failing relay "dies": its leases lapse, and a healthy relay takes its streams and
    # publishes first what the dead one had read.
    await asyncio.sleep(0.2)
    healthy = OutboxRelay(
        store, KafkaPublisher(producer), topic=EVENTS_TOPIC, consumer="t-relay-2", claim_idle_ms=100
    )
    try:
        await _drain(healthy)
    finally:
        await healthy.leases.release()
    events = await _published_for(stack, sku, 3)
    assert sorted(e["atp"] for e in events) == [1, 2, 3]


async def test_relay_run_keeps_going_through_failures_and_stops_on_request(
    store: RedisStore,
) -> None:
    broken = BrokenPublisher()
    sku = random_sku()
    await _fold_receipts(store, sku, 1)
    relay = OutboxRelay(store, broken, topic=EVENTS_TOPIC, consumer="t-relay-3", claim_idle_ms=100)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(task, timeout=6)
    assert broken.attempts >= 2
