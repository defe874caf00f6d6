"""The in-process copy on a real redis-server: every script's change reaches it; outages drop it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import date

import pytest

from atp_service.domain import (
    Bucket,
    InventoryDelta,
    InventorySnapshot,
    ItemSite,
    ItemSitePosition,
    Source,
)
from atp_service.domain.reservations import LineRequest, ReservationRequest
from atp_service.embedded import ManagedProcess
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from atp_service.store.position_cache import PositionCache
from atp_service.store.redis_store import RedisClient
from atp_service.store.reservations import ReservationStore
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = [pytest.mark.integration, pytest.mark.both_redis_kinds]

NOW = "2026-11-23T05:00:00Z"
OPEN = PolicyBook.of({})


async def running(cache: PositionCache, stop: asyncio.Event) -> asyncio.Task[None]:
    task = asyncio.create_task(cache.run(stop))
    deadline = time.monotonic() + 5
    while not cache.current:
        assert time.monotonic() < deadline, "the copy never subscribed"
        await asyncio.sleep(0.01)
    return task


@pytest.fixture
async def cache(store: RedisStore, redis_client: RedisClient) -> AsyncIterator[PositionCache]:
    copy = PositionCache(redis_client, store, max_entries=10_000)
    stop = asyncio.Event()
    task = await running(copy, stop)
    yield copy
    stop.set()
    await task


async def agrees_with_redis(cache: PositionCache, store: RedisStore, item: ItemSite) -> None:
    """The copy shows what Redis holds, soon (it is pushed, not polled)."""
    [truth] = await store.read_positions([item])
    deadline = time.monotonic() + 5
    while True:
        [seen] = await cache.read([item])
        if seen == truth:
            return
        assert time.monotonic() < deadline, f"copy {seen} != redis {truth}"
        await asyncio.sleep(0.005)


def delta(sku: str, site: str, bucket: Bucket, qty: int, **kw: object) -> InventoryDelta:
    source = Source.ERP if bucket is Bucket.IN_TRANSIT else Source.WMS
    return InventoryDelta(random_event_id(), source, sku, site, bucket, qty, NOW, **kw)  # type: ignore[arg-type]


async def test_every_kind_of_change_reaches_the_copy(
    cache: PositionCache, store: RedisStore
) -> None:
    sku, site = random_sku(), random_site()
    item = ItemSite(sku, site)
    reservations = ReservationStore(store, idempotency_ttl_seconds=86_400)
    [empty] = await cache.read([item])  # cached while unknown: all zeros
    assert empty == ItemSitePosition()

    await store.fold(delta(sku, site, Bucket.ON_HAND, 40), OPEN)
    await agrees_with_redis(cache, store, item)
    await store.fold(delta(sku, site, Bucket.IN_TRANSIT, 12, eta=date(2026, 12, 24)), OPEN)
    await store.fold(delta(sku, site, Bucket.IN_TRANSIT, 3), OPEN)  # no ETA
    await agrees_with_redis(cache, store, item)
    snapshot = InventorySnapshot(
        random_event_id(), Source.WMS, sku, site,
        {Bucket.ON_HAND: 30, Bucket.ALLOCATED: 4, Bucket.QUARANTINED: 1}, NOW,
    )  # fmt: skip
    await store.fold(snapshot, OPEN)
    await agrees_with_redis(cache, store, item)
    await store.set_safety_stock(
        item, 5, OPEN, correlation_id="c", change_id=uuid.uuid4().hex, changed_by="t"
    )
    await agrees_with_redis(cache, store, item)

    def request(qty: int) -> ReservationRequest:
        return ReservationRequest("web", (LineRequest(sku, site, qty),))

    async def reserve(qty: int) -> str:
        key = uuid.uuid4().hex
        rid = reservations.new_reservation_id("oms", key)
        await reservations.reserve(
            request(qty), reservation_id=rid, principal="oms",
            idempotency_key_value=key, correlation_id="c", book=OPEN,
        )  # fmt: skip
        return rid

    held = await reserve(3)
    await agrees_with_redis(cache, store, item)
    await reservations.release(held, caller=None, correlation_id="c", book=OPEN)
    await agrees_with_redis(cache, store, item)
    consumed = await reserve(2)
    await reservations.confirm(consumed, caller=None, correlation_id="c", book=OPEN)
    await store.fold(delta(sku, site, Bucket.ALLOCATED, 2, reservation_id=consumed), OPEN)
    await reservations.sweep(OPEN)
    await agrees_with_redis(cache, store, item)
    [pos] = await cache.read([item])
    assert (pos.reserved, pos.allocated, pos.safety_stock_override) == (0, 6, 5)


async def test_a_redis_restart_drops_the_copy_and_reads_come_from_the_new_redis(
    own_redis: ManagedProcess, redis_kind: str
) -> None:
    if redis_kind == "cluster":
        pytest.skip("one Redis restarted; a Cluster's failover is test_failover.py's")
    client = connect(f"redis://127.0.0.1:{own_redis.port}/0", timeout=0.5, max_connections=8)
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    cache = PositionCache(client, store, max_entries=1000, max_staleness_seconds=0.5)
    stop = asyncio.Event()
    task = await running(cache, stop)
    item = ItemSite(random_sku(), random_site())
    try:
        await store.fold(delta(item.sku, item.site, Bucket.ON_HAND, 9), OPEN)
        await agrees_with_redis(cache, store, item)
        own_redis.stop()  # no persistence: it comes back empty
        own_redis.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                [pos] = await cache.read([item])
                if pos.on_hand == 0:
                    break
            except Exception:  # refused while Redis is down: the API answers 503 then
                pass
            assert time.monotonic() < deadline, "the copy kept serving the lost position"
            await asyncio.sleep(0.05)
        await store.fold(delta(item.sku, item.site, Bucket.ON_HAND, 4), OPEN)
        await agrees_with_redis(cache, store, item)
        deadline = time.monotonic() + 5
        while not cache.current:  # subscribed again (a loaded machine may lag a ping)
            assert time.monotonic() < deadline, "the copy never came back"
            await asyncio.sleep(0.05)
        [pos] = await cache.read([item])
        assert pos.on_hand == 4
    finally:
        stop.set()
        await task
        await client.aclose()


async def test_a_write_of_this_process_is_in_its_copy_before_the_write_returns(
    store: RedisStore, redis_client: RedisClient
) -> None:
    sku, site = random_sku(), random_site()
    item = ItemSite(sku, site)
    await store.fold(delta(sku, site, Bucket.ON_HAND, 10), OPEN)
    # A copy that hears nothing from the channel: only the scripts' own answers reach it.
    deaf = PositionCache(redis_client, store, max_entries=100, max_staleness_seconds=60)
    deaf._on_message(["subscribe", "atp:changes", 1])
    deaf._last_heard = time.monotonic()  # as if it had heard from every primary just now
    [before] = await deaf.read([item])
    assert (before.on_hand, before.reserved) == (10, 0)
    store.own_changes.append(deaf.apply_lines)
    reservations = ReservationStore(store, idempotency_ttl_seconds=86_400)
    try:
        key = uuid.uuid4().hex
        rid = reservations.new_reservation_id("oms", key)
        await reservations.reserve(
            ReservationRequest("web", (LineRequest(sku, site, 3),)),
            reservation_id=rid, principal="oms",
            idempotency_key_value=key, correlation_id="c", book=OPEN,
        )  # fmt: skip
        [held] = await deaf.read([item])
        await reservations.release(rid, caller=None, correlation_id="c", book=OPEN)
        [released] = await deaf.read([item])
        await store.set_safety_stock(
            item, 4, OPEN, correlation_id="c", change_id="ss-own", changed_by="t"
        )
        [overridden] = await deaf.read([item])
    finally:
        store.own_changes.remove(deaf.apply_lines)
    assert held.reserved == 3
    assert released.reserved == 0
    assert overridden.safety_stock_override == 4
