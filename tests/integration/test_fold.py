"""The atomic fold on a real redis-server: idempotency, ordering, snapshots and drift."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio.cluster import RedisCluster

from atp_service.domain import (
    Bucket,
    ChannelPolicy,
    InventoryDelta,
    InventorySnapshot,
    ItemSite,
    Source,
)
from atp_service.store import PolicyBook, RedisStore
from atp_service.store.redis_store import outbox_records
from tests.random_refs import random_event_id, random_sku

pytestmark = [pytest.mark.integration, pytest.mark.both_redis_kinds]

NOW = "2026-11-23T05:00:00Z"
BOOK = PolicyBook.of({"web": ChannelPolicy(safety_stock=2)})


def delta(sku: str, bucket: Bucket, qty: int, **kw: object) -> InventoryDelta:
    source = Source.ERP if bucket is Bucket.IN_TRANSIT else Source.WMS
    return InventoryDelta(
        kw.pop("event_id", None) or random_event_id(),  # type: ignore[arg-type]
        source, sku, "DC-EAST", bucket, qty, NOW, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def snapshot(sku: str, seq: int | None, **quantities: int) -> InventorySnapshot:
    return InventorySnapshot(
        random_event_id("snap"),
        Source.WMS,
        sku,
        "DC-EAST",
        {Bucket(name): qty for name, qty in quantities.items()},
        NOW,
        source_seq=seq,
    )


async def position_of(store: RedisStore, sku: str) -> tuple[int, int, int, int]:
    [pos] = await store.read_positions([ItemSite(sku, "DC-EAST")])
    return pos.on_hand, pos.allocated, pos.quarantined, pos.version


async def outbox_events(store: RedisStore, sku: str) -> list[dict[str, object]]:
    stream = store.keys.item_site(sku, "DC-EAST").outbox
    entries = await store.redis.xrange(stream)
    return [
        json.loads(v) for _, f in entries for k, v in outbox_records(f) if k == f"{sku}@DC-EAST"
    ]


async def web_changes(store: RedisStore, sku: str) -> list[dict[str, object]]:
    return [
        e
        for e in await outbox_events(store, sku)
        if e["type"] == "availability.changed" and e["channel"] == "web"
    ]


async def test_deltas_accumulate_and_each_change_bumps_the_version(store: RedisStore) -> None:
    sku = random_sku()
    outcomes = await store.fold_many(
        [delta(sku, Bucket.ON_HAND, 10), delta(sku, Bucket.ALLOCATED, 3),
         delta(sku, Bucket.QUARANTINED, 1)],
        BOOK,
    )  # fmt: skip
    assert [o.status for o in outcomes] == ["folded"] * 3
    assert await position_of(store, sku) == (10, 3, 1, 3)


async def test_an_event_id_seen_before_is_never_folded_twice(store: RedisStore) -> None:
    sku = random_sku()
    event = delta(sku, Bucket.ON_HAND, 5)
    first = await store.fold_many([event, event], BOOK)
    again = await store.fold(event, BOOK)
    assert [o.status for o in first] == ["folded", "duplicate"]
    assert again.status == "duplicate"
    assert (await position_of(store, sku))[0] == 5


async def test_a_source_seq_at_or_below_the_last_folded_is_skipped(store: RedisStore) -> None:
    sku = random_sku()
    outcomes = await store.fold_many(
        [delta(sku, Bucket.ON_HAND, 5, source_seq=7), delta(sku, Bucket.ON_HAND, 5, source_seq=7),
         delta(sku, Bucket.ON_HAND, 5, source_seq=6), delta(sku, Bucket.ON_HAND, 1, source_seq=8)],
        BOOK,
    )  # fmt: skip
    assert [o.status for o in outcomes] == ["folded", "stale", "stale", "folded"]
    assert (await position_of(store, sku))[0] == 6


async def test_sequences_are_kept_per_source(store: RedisStore) -> None:
    sku = random_sku()
    outcomes = await store.fold_many(
        [delta(sku, Bucket.ON_HAND, 5, source_seq=100),
         delta(sku, Bucket.IN_TRANSIT, 9, source_seq=1)],
        BOOK,
    )  # fmt: skip
    assert [o.status for o in outcomes] == ["folded", "folded"]


async def test_concurrent_redelivery_of_the_same_events_folds_each_once(
    store: RedisStore,
) -> None:
    sku = random_sku()
    events = [delta(sku, Bucket.ON_HAND, 1) for _ in range(200)]
    results = await asyncio.gather(*(store.fold_many(events, BOOK) for _ in range(4)))
    folded = sum(o.status == "folded" for batch in results for o in batch)
    assert folded == 200
    assert (await position_of(store, sku))[0] == 200


async def test_a_snapshot_sets_the_buckets_and_reports_drift(store: RedisStore) -> None:
    sku = random_sku()
    await store.fold_many([delta(sku, Bucket.ON_HAND, 10), delta(sku, Bucket.ALLOCATED, 2)], BOOK)
    outcome = await store.fold(snapshot(sku, 50, on_hand=12, allocated=2, quarantined=0), BOOK)
    assert outcome.status == "folded"
    assert outcome.drift is not None
    assert outcome.drift["buckets"] == {"on_hand": {"folded": 10, "snapshot": 12}}
    assert (await position_of(store, sku))[:3] == (12, 2, 0)
    drift_events = [
        e for e in await outbox_events(store, sku) if e["type"] == "inventory.drift_detected"
    ]
    assert len(drift_events) == 1
    assert drift_events[0]["buckets"] == {"on_hand": {"folded": 10, "snapshot": 12}}
    assert await store.last_drift(ItemSite(sku, "DC-EAST")) == outcome.drift


async def test_an_agreeing_snapshot_changes_nothing_and_reports_no_drift(store: RedisStore) -> None:
    sku = random_sku()
    await store.fold(delta(sku, Bucket.ON_HAND, 10), BOOK)
    outcome = await store.fold(snapshot(sku, 3, on_hand=10, allocated=0, quarantined=0), BOOK)
    assert (outcome.status, outcome.drift) == ("unchanged", None)
    assert (await position_of(store, sku))[3] == 1


async def test_an_older_snapshot_is_skipped(store: RedisStore) -> None:
    sku = random_sku()
    await store.fold(snapshot(sku, 20, on_hand=10, allocated=0, quarantined=0), BOOK)
    outcome = await store.fold(snapshot(sku, 19, on_hand=99, allocated=0, quarantined=0), BOOK)
    assert outcome.status == "stale"
    assert (await position_of(store, sku))[0] == 10


async def test_availability_changed_carries_previous_atp_version_and_correlation(
    store: RedisStore,
) -> None:
    sku = random_sku()
    event = delta(sku, Bucket.ON_HAND, 10, correlation_id="ord-1")
    await store.fold(event, BOOK)
    await store.fold(delta(sku, Bucket.ON_HAND, 1), BOOK)  # 10 -> 11: web ATP 8 -> 9
    changes = await web_changes(store, sku)
    assert [(c["previous_atp"], c["atp"], c["version"]) for c in changes] == [(0, 8, 1), (8, 9, 2)]
    assert changes[0]["correlation_id"] == "ord-1"
    assert changes[0]["event_id"] == f"chg:{event.event_id}:web"
    assert changes[0]["channel"] == "web"
    datetime.fromisoformat(str(changes[0]["occurred_at"]))


async def test_no_event_for_a_channel_whose_atp_did_not_move(store: RedisStore) -> None:
    sku = random_sku()
    await store.fold(delta(sku, Bucket.ON_HAND, 1), BOOK)  # web ATP stays 0 (safety stock 2)
    events = await outbox_events(store, sku)
    assert [(e["channel"], e["atp"]) for e in events] == [("*", 1)]


async def test_channels_without_a_policy_hear_of_changes_as_channel_star(
    store: RedisStore,
) -> None:
    sku = random_sku()
    await store.fold(delta(sku, Bucket.ON_HAND, 3), PolicyBook.of({}))
    events = await outbox_events(store, sku)
    assert [(e["channel"], e["previous_atp"], e["atp"]) for e in events] == [("*", 0, 3)]


async def test_in_transit_is_kept_per_eta(store: RedisStore) -> None:
    sku = random_sku()
    soon = datetime.now(UTC).date() + timedelta(days=2)
    later = soon + timedelta(days=30)
    await store.fold_many(
        [delta(sku, Bucket.IN_TRANSIT, 5, eta=soon), delta(sku, Bucket.IN_TRANSIT, 7, eta=later),
         delta(sku, Bucket.IN_TRANSIT, 3), delta(sku, Bucket.IN_TRANSIT, -5, eta=soon)],
        BOOK,
    )  # fmt: skip
    [pos] = await store.read_positions([ItemSite(sku, "DC-EAST")])
    assert pos.in_transit_by_eta == {later: 7, None: 3}
    assert pos.in_transit == 10


async def test_an_in_transit_snapshot_replaces_every_eta(store: RedisStore) -> None:
    sku = random_sku()
    soon = datetime.now(UTC).date() + timedelta(days=2)
    await store.fold(delta(sku, Bucket.IN_TRANSIT, 5, eta=soon), BOOK)
    snap = InventorySnapshot(
        random_event_id(), Source.ERP, sku, "DC-EAST", {Bucket.IN_TRANSIT: 9}, NOW,
        in_transit_by_eta={soon: 4, None: 5},
    )  # fmt: skip
    outcome = await store.fold(snap, BOOK)
    assert outcome.drift is not None
    assert outcome.drift["buckets"] == {"in_transit": {"folded": 5, "snapshot": 9}}
    [pos] = await store.read_positions([ItemSite(sku, "DC-EAST")])
    assert pos.in_transit_by_eta == {soon: 4, None: 5}


async def test_safety_stock_override_moves_atp_and_publishes_it(store: RedisStore) -> None:
    sku = random_sku()
    item = ItemSite(sku, "DC-EAST")
    await store.fold(delta(sku, Bucket.ON_HAND, 10), BOOK)
    v1 = await store.set_safety_stock(
        item, 0, BOOK, correlation_id="c-1", change_id="ss-1", changed_by="t"
    )
    v_same = await store.set_safety_stock(
        item, 0, BOOK, correlation_id="c-2", change_id="ss-2", changed_by="t"
    )
    v2 = await store.set_safety_stock(
        item, None, BOOK, correlation_id="c-3", change_id="ss-3", changed_by="t"
    )
    assert (v1, v_same, v2) == (2, 2, 3)
    changes = await web_changes(store, sku)
    assert [(c["previous_atp"], c["atp"], c["correlation_id"]) for c in changes] == [
        (0, 8, None), (8, 10, "c-1"), (10, 8, "c-3"),
    ]  # fmt: skip


async def test_the_first_snapshot_of_an_item_site_is_an_initial_load_not_drift(
    store: RedisStore,
) -> None:
    sku = random_sku()
    outcome = await store.fold(snapshot(sku, 1, on_hand=40, allocated=5, quarantined=0), BOOK)
    assert (outcome.status, outcome.drift) == ("folded", None)
    assert (await position_of(store, sku))[:3] == (40, 5, 0)
    assert [e["type"] for e in await outbox_events(store, sku)] == ["availability.changed"] * 2


async def command_calls(store: RedisStore) -> dict[str, int]:
    """Calls per command since the last reset, on the Redis (or every primary)."""
    client = store.redis
    if isinstance(client, RedisCluster):
        per_node = await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        stats = list(per_node.values())
    else:
        stats = [await client.info("commandstats")]
    calls: dict[str, int] = {}
    for node in stats:
        for name, values in node.items():
            calls[name] = calls.get(name, 0) + int(values["calls"])
    return calls


async def test_a_batch_goes_out_without_asking_whether_the_script_exists(store: RedisStore) -> None:
    sku = random_sku()
    await store.fold_many([delta(sku, Bucket.ON_HAND, 1)], BOOK)  # the script is loaded
    if isinstance(store.redis, RedisCluster):
        await store.redis.config_resetstat(target_nodes=RedisCluster.PRIMARIES)
    else:
        await store.redis.config_resetstat()
    await store.fold_many(
        [delta(sku, Bucket.ON_HAND, 1), delta(random_sku(), Bucket.ON_HAND, 2)], BOOK
    )
    calls = await command_calls(store)
    assert "cmdstat_script|exists" not in calls and "cmdstat_script" not in calls
    assert calls["cmdstat_evalsha"] >= 1
    assert (await position_of(store, sku))[0] == 2


async def test_a_batch_after_redis_lost_its_scripts_is_folded_once(store: RedisStore) -> None:
    skus = [random_sku() for _ in range(3)]
    await store.fold_many([delta(skus[0], Bucket.ON_HAND, 1)], BOOK)
    await store.redis.script_flush()
    outcomes = await store.fold_many([delta(sku, Bucket.ON_HAND, 5) for sku in skus], BOOK)
    assert [o.status for o in outcomes] == ["folded"] * 3
    assert [(await position_of(store, sku))[0] for sku in skus] == [6, 5, 5]
