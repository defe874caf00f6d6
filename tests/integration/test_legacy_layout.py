"""A single Redis written by an earlier release: its configuration keys move into the
configuration's slot, and its reservations (units counted in the record) get their holds,
at the first start, once, losing nothing."""

from __future__ import annotations

import json
import uuid

import pytest

from atp_service.domain import Bucket, ChannelPolicy, InventoryDelta, ItemSite, Source
from atp_service.embedded import ManagedProcess
from atp_service.store import KeySpace, PolicyBook, RedisStore, connect
from atp_service.store import keys as k
from atp_service.store.keys import group_of
from atp_service.store.redis_store import policy_to_json
from atp_service.store.reservation_keys import hold, reservation_keys
from atp_service.store.reservations import ReservationStore
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

OPEN = PolicyBook.of({})


async def test_the_configuration_of_an_earlier_release_moves_into_its_slot(
    own_redis: ManagedProcess,
) -> None:
    # A Redis of its own: the shared one's policies are every test's.
    client = connect(f"redis://127.0.0.1:{own_redis.port}/0", timeout=2.0, max_connections=4)
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    await client.hset("atp:policies", "legacy-channel", policy_to_json(ChannelPolicy(share=40)))
    await client.set("atp:policies:v", 10_000)
    await client.sadd("atp:sites", "DC-LEGACY")

    await store.migrate_legacy_keys()
    await store.migrate_legacy_keys()  # once is enough: nothing more moves

    book = await store.policy_book()
    assert book.policy("legacy-channel").share == 40
    assert book.version >= 10_000
    assert "DC-LEGACY" in await store.known_sites()
    for name in ("atp:policies", "atp:policies:v", "atp:sites"):
        assert not await client.exists(name)
    await client.aclose()


async def test_the_reservations_of_an_earlier_release_get_their_holds(store: RedisStore) -> None:
    reservations = ReservationStore(store, idempotency_ttl_seconds=86_400)
    site, a, b = random_site(), random_sku(), random_sku()
    for sku in (a, b):
        await store.fold(
            InventoryDelta(random_event_id(), Source.WMS, sku, site, Bucket.ON_HAND, 10,
                           "2026-11-23T05:00:00Z"),
            OPEN,
        )  # fmt: skip
    # A record as the earlier release wrote it: its lines' units counted in it, no holds.
    rid = f"res_{uuid.uuid4().hex}"
    record = reservation_keys(store.keys, rid)
    lines = [
        {"s": a, "t": site, "q": 3, "r": 3, "a": 1},
        {"s": b, "t": site, "q": 2, "r": 2, "a": 0},
    ]
    await store.redis.hset(
        record.record,
        mapping={"st": "held", "ch": "web", "rf": "", "md": "all_or_nothing", "cr": 1, "up": 1,
                 "ex": 4_102_444_800_000, "co": "c", "ln": json.dumps(lines)},
    )  # fmt: skip
    await store.redis.zadd(record.expiry, {rid: 4_102_444_800_000})
    for sku, held in ((a, 2), (b, 2)):
        await store.redis.hincrby(store.keys.position(sku, site), "rs", held)
    await store.redis.delete(k.config_key("layout"))

    assert await reservations.migrate_legacy() >= 1

    for sku in (a, b):
        assert await store.redis.hget(hold(group_of(sku, site, 16), rid), "st") == "held"
    got = await reservations.get(rid, caller=None)
    assert [(ln.reserved, ln.allocated) for ln in got.lines] == [(3, 1), (2, 0)]
    assert not [d for d in await reservations.audit() if d.site == site]
    released = await reservations.release(rid, caller=None, correlation_id="c", book=OPEN)
    assert released.status.value == "released"
    positions = await store.read_positions([ItemSite(a, site), ItemSite(b, site)])
    assert [p.reserved for p in positions] == [0, 0]
    assert await reservations.migrate_legacy() == 0  # once
