"""The fold's record of the Kafka offsets it applied (store/applied.py), on a real redis-server
and on a real Redis Cluster (where every call it makes is checked to touch one slot)."""

from __future__ import annotations

import uuid

import pytest

from atp_service import audit
from atp_service.config import Settings
from atp_service.domain import Bucket, ChannelPolicy, InventoryDelta, ItemSite, Source
from atp_service.embedded import EmbeddedStack
from atp_service.store import PolicyBook, RedisStore
from atp_service.store.applied import NOTHING, AppliedOffsets, AppliedStore, Origin, StoreBehind
from atp_service.store.keys import group_of
from tests.integration._worker_process import forget_event_ids
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

BOOK = PolicyBook.of({"web": ChannelPolicy()})


def a_partition() -> str:
    """A partition of a topic of this test alone (the store is shared)."""
    return f"t{uuid.uuid4().hex[:10]}:0"


def receipts(items: list[ItemSite], per_item: int) -> list[InventoryDelta]:
    return [
        InventoryDelta(random_event_id(), Source.WMS, i.sku, i.site, Bucket.ON_HAND, 1, "x")
        for _ in range(per_item)
        for i in items
    ]


def items_in_groups(store: RedisStore, groups: int) -> list[ItemSite]:
    """One item-site in each of ``groups`` different hash-tag groups."""
    by_group: dict[int, ItemSite] = {}
    while len(by_group) < groups:
        item = ItemSite(random_sku(), random_site())
        by_group.setdefault(group_of(item.sku, item.site, store.keys.groups), item)
    return list(by_group.values())


@pytest.mark.both_redis_kinds
async def test_a_re_read_past_the_deduplication_window_is_not_folded_again(
    store: RedisStore,
) -> None:
    items = items_in_groups(store, 3)
    events = receipts(items, 4)
    partition = a_partition()
    origins = [Origin(partition, offset) for offset in range(len(events))]
    assert {o.status for o in await store.fold_many(events, BOOK, origins)} == {"folded"}

    await forget_event_ids(store)
    again = await store.fold_many(events, BOOK, origins)

    assert {o.status for o in again} == {"replayed"}
    positions = await store.read_positions(items)
    assert [(p.on_hand, p.version) for p in positions] == [(4, 4)] * 3


@pytest.mark.both_redis_kinds
async def test_each_group_records_the_highest_offset_it_folded_of_each_partition(
    store: RedisStore,
) -> None:
    first, second = items_in_groups(store, 2)
    wms, erp = a_partition(), a_partition()
    events = receipts([first], 2) + receipts([second], 1)
    origins = [Origin(wms, 10), Origin(erp, 4), Origin(wms, 11)]

    await store.fold_many(events, BOOK, origins)

    records = await AppliedStore(store).read([wms, erp])
    g1 = group_of(first.sku, first.site, store.keys.groups)
    g2 = group_of(second.sku, second.site, store.keys.groups)
    assert records[wms].offsets[g1] == 10 and records[erp].offsets[g1] == 4
    assert records[wms].offsets[g2] == 11 and records[erp].offsets[g2] == NOTHING
    assert records[wms].start == 0  # the other groups have folded nothing of it


@pytest.mark.both_redis_kinds
async def test_a_fold_into_a_group_holding_less_than_recorded_folds_nothing_of_it(
    store: RedisStore,
) -> None:
    first, second = items_in_groups(store, 2)
    lost, kept = a_partition(), a_partition()
    applied = AppliedOffsets(store.keys.groups)
    applied.reset(lost, [NOTHING] * store.keys.groups)
    applied.reset(kept, [NOTHING] * store.keys.groups)
    await store.fold_many(
        receipts([first, second], 1), BOOK, [Origin(lost, 0), Origin(kept, 0)], applied
    )
    g1 = group_of(first.sku, first.site, store.keys.groups)
    assert applied.expected(g1, lost) == 0

    # Redis comes back from an RDB taken before that fold: the group forgot it.
    await store.redis.hdel(store.keys.applied[g1], lost)
    outcomes = await store.fold_many(
        receipts([first, second], 1), BOOK, [Origin(lost, 1), Origin(kept, 1)], applied
    )

    assert [o.status for o in outcomes] == ["behind", "folded"]
    assert [p.on_hand for p in await store.read_positions([first, second])] == [1, 2]
    with pytest.raises(StoreBehind) as behind:
        await AppliedStore(store).check(applied)
    assert behind.value.partitions == {lost}


@pytest.mark.both_redis_kinds
async def test_advancing_brings_every_group_up_to_where_a_batch_ended(store: RedisStore) -> None:
    partition = a_partition()
    [item] = items_in_groups(store, 1)
    applied = AppliedOffsets(store.keys.groups)
    applied.reset(partition, [NOTHING] * store.keys.groups)
    await store.fold_many(receipts([item], 1), BOOK, [Origin(partition, 7)], applied)
    applied_store = AppliedStore(store)

    written = await applied_store.advance(applied, {partition: (9, "f00d")})

    assert written == store.keys.groups
    record = (await applied_store.read([partition]))[partition]
    assert record.offsets == [9] * store.keys.groups
    assert record.checkpoint == (9, "f00d")
    assert record.start == 10
    assert await applied_store.advance(applied, {partition: (9, "f00d")}) == 0  # nothing to do
    await applied_store.check(applied)  # Redis holds what was recorded


@pytest.mark.both_redis_kinds
async def test_an_advance_over_a_store_that_lost_writes_writes_nothing(store: RedisStore) -> None:
    partition = a_partition()
    applied = AppliedOffsets(store.keys.groups)
    applied.reset(partition, [NOTHING] * store.keys.groups)
    applied_store = AppliedStore(store)
    await applied_store.advance(applied, {partition: (5, "aa")})
    await store.redis.delete(store.keys.applied[3])  # that group's slot came back empty

    with pytest.raises(StoreBehind):
        await applied_store.advance(applied, {partition: (8, "bb")})

    record = (await applied_store.read([partition]))[partition]
    assert record.offsets[3] == NOTHING
    assert record.offsets[4] == 8  # the groups that held their record moved on


@pytest.mark.both_redis_kinds
async def test_forgetting_a_partition_drops_every_groups_record_and_its_catch_up(
    store: RedisStore,
) -> None:
    partition = a_partition()
    applied = AppliedOffsets(store.keys.groups)
    applied.reset(partition, [NOTHING] * store.keys.groups)
    applied_store = AppliedStore(store)
    await applied_store.advance(applied, {partition: (5, "aa")})
    await applied_store.begin_epoch("e-test", {partition: 9})
    assert (await applied_store.state()).catching_up[partition] == 9

    await applied_store.forget([partition])

    record = (await applied_store.read([partition]))[partition]
    assert record.offsets == [NOTHING] * store.keys.groups and record.checkpoint is None
    assert partition not in (await applied_store.state()).catching_up


async def test_the_audit_says_when_the_store_is_catching_up(
    store: RedisStore, stack: EmbeddedStack, capsys: pytest.CaptureFixture[str]
) -> None:
    partition = a_partition()
    applied_store = AppliedStore(store)
    settings = Settings(_env_file=None, redis_url=stack.redis_url)  # type: ignore[call-arg]
    await applied_store.begin_epoch("e-audit", {partition: 12})
    try:
        await audit._run(settings)
    finally:
        await applied_store.caught_up([partition])

    assert "the store is catching up" in capsys.readouterr().err
