"""The fold's keys are the ones keys.py names (the fold spells them out for speed)."""

from __future__ import annotations

import re
import time
from hashlib import blake2b

import redis.asyncio as aioredis
from redis.crc import key_slot

from atp_service.domain import Bucket, InventoryDelta, Source
from atp_service.store import KeySpace, RedisStore
from atp_service.store import keys as k
from atp_service.store.keys import applied_offsets, dedup_chunk, group_of
from atp_service.store.reservation_keys import id_in_group, reservation_group


def test_the_fold_uses_the_item_sites_keys_and_its_fingerprints_chunks() -> None:
    keys = KeySpace(16)
    store = RedisStore(aioredis.Redis(), keys, dedup_window_seconds=86_400, dedup_chunks=64)
    event = InventoryDelta("ev-1", Source.WMS, "SKU-1", "DC-EAST", Bucket.ON_HAND, 3, "x")

    prepared = store.prepare_fold([event])

    [call] = prepared.calls
    group = group_of("SKU-1", "DC-EAST", 16)
    digest = blake2b(b"ev-1", digest_size=16).digest()
    chunk = int.from_bytes(digest[12:], "little") % 64
    item = keys.item_site("SKU-1", "DC-EAST")
    g = prepared.generation
    assert call.keys == [
        item.outbox,
        applied_offsets(group),
        item.position,
        item.drift,
        dedup_chunk(group, g - 1, chunk),
        dedup_chunk(group, g, chunk),
        dedup_chunk(group, g + 1, chunk),
    ]
    assert call.fingerprints == digest[:12]
    assert g == int(time.time() * 1000) // 86_400_000


def test_the_configuration_lives_in_one_slot() -> None:
    names = [k.POLICIES, k.POLICIES_VERSION, k.SITES, k.config_key("sites:attributes")]
    assert len({key_slot(name.encode()) for name in names}) == 1


def test_a_reservation_id_is_drawn_in_the_group_asked_for() -> None:
    for group in (0, 5, 15):
        rid = id_in_group(group, 16)
        assert reservation_group(rid, 16) == group
        assert re.fullmatch(r"res_[0-9a-f]{32}", rid)
