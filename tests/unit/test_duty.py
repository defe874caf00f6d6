"""Background duties: an API process stands by while a worker reports rounds, and takes over."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import fakeredis

from atp_service.events import OutboxRelay
from atp_service.store import KeySpace, RedisStore
from atp_service.store.duty import Duty


class CountingPublisher:
    def __init__(self) -> None:
        self.published = 0

    async def publish(self, topic: str, messages: Sequence[tuple[str, str]]) -> None:
        self.published += len(messages)


async def test_a_duty_is_taken_while_a_worker_reports_rounds_and_free_after_the_lease() -> None:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    worker = Duty(redis, "relay", holder="worker-1", lease_ms=200)
    api = Duty(redis, "relay", holder="api-1", lease_ms=200)
    assert not await api.taken()
    await worker.done()
    api._next_look = 0.0  # look again now
    assert await api.taken()
    await asyncio.sleep(0.3)
    api._next_look = 0.0
    assert not await api.taken()


async def test_a_standing_by_relay_leaves_the_outbox_to_the_worker_then_takes_over() -> None:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    store = RedisStore(redis, KeySpace(2), dedup_window_seconds=86_400)
    await store.ensure_relay_groups()
    for _ in range(3):
        await redis.xadd(store.keys.outboxes[0], {"k": "SKU-1@DC-1", "v": "{}"})
    publisher = CountingPublisher()
    relay = OutboxRelay(store, publisher, topic="t", consumer="api-1", block_ms=10)
    await Duty(redis, "relay", holder="worker-1", lease_ms=400).done()
    stop = asyncio.Event()
    running = asyncio.create_task(
        relay.run(stop, duty=Duty(redis, "relay", holder="api-1"), stand_by=True)
    )
    await asyncio.sleep(0.2)
    assert publisher.published == 0  # the worker relays
    await asyncio.sleep(1.2)  # the worker's report lapsed
    stop.set()
    await running
    assert publisher.published == 3
