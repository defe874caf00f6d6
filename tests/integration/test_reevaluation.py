"""Re-evaluation without a fold, on a real redis-server of this module's own (a pass visits
every position in Redis, and the policies are the dataset's: no other test's data here)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest

from atp_service.domain import (
    Bucket,
    ChannelPolicy,
    InventoryDelta,
    ItemSitePosition,
    Source,
    atp_for_site,
)
from atp_service.embedded import ManagedProcess
from atp_service.store import KeySpace, RedisStore, connect
from atp_service.store import keys as k
from atp_service.store.redis_store import epoch_day, outbox_records, position_from_hash
from atp_service.store.reevaluation import Pass, Plan, Reevaluator, script_books
from tests.catalogue import assert_in_catalogue
from tests.random_refs import random_event_id

pytestmark = pytest.mark.integration

SITES = ("DC-1", "DC-2", "DC-3")
WEB = ChannelPolicy(sites=("DC-1", "DC-2"))


@pytest.fixture
async def store(module_redis: ManagedProcess) -> AsyncIterator[RedisStore]:
    client = connect(f"redis://127.0.0.1:{module_redis.port}/0", timeout=2.0, max_connections=16)
    await client.flushall()
    yield RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    await client.aclose()


def reevaluator(store: RedisStore, holder: str = "test", **kw: Any) -> Reevaluator:
    options: dict[str, Any] = {"rate": 1_000_000.0, "settle_ms": 0}
    options.update(kw)
    return Reevaluator(store, holder=holder, **options)


async def settle(r: Reevaluator, *, ticks: int = 200) -> None:
    """Tick until no book waits and no pass runs."""
    for _ in range(ticks):
        await r.tick()
        if await r.idle():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"re-evaluation not idle after {ticks} ticks: {await r.state()}")


def receipt(sku: str, site: str, qty: int, bucket: Bucket = Bucket.ON_HAND, **kw: Any) -> Any:
    source = Source.ERP if bucket is Bucket.IN_TRANSIT else Source.WMS
    return InventoryDelta(
        random_event_id(), source, sku, site, bucket, qty, "2026-11-23T05:00:00Z", **kw
    )


async def outbox_events(store: RedisStore) -> list[dict[str, Any]]:
    """Every event in the outboxes, in each stream's order."""
    out: list[dict[str, Any]] = []
    for stream in store.keys.outboxes:
        for _, fields in await store.redis.xrange(stream):
            out.extend(json.loads(value) for _, value in outbox_records(fields))
    return out


async def clear_outboxes(store: RedisStore) -> None:
    await store.redis.delete(*store.keys.outboxes)


async def position(store: RedisStore, sku: str, site: str) -> Any:
    return position_from_hash(await store.redis.hgetall(store.keys.position(sku, site)))


def changes_of(events: list[dict[str, Any]], channel: str) -> dict[tuple[str, str], Any]:
    return {
        (e["sku"], e["site"]): e
        for e in events
        if e["type"] == "availability.changed" and e["channel"] == channel
    }


async def test_a_policy_change_announces_exactly_the_item_site_channels_whose_atp_moved(
    store: RedisStore,
) -> None:
    await store.seed_channel_policies({"web": WEB, "store": ChannelPolicy(sites=("DC-3",))})
    book = await store.policy_book()
    for i, site in enumerate(SITES):
        await store.fold_many([receipt("SKU-A", site, 10 + i), receipt("SKU-B", site, 1)], book)
    r = reevaluator(store)
    await settle(r)
    await clear_outboxes(store)
    items = [(sku, site) for sku in ("SKU-A", "SKU-B") for site in SITES]
    before = {(sku, site): await position(store, sku, site) for sku, site in items}

    await store.put_channel_policy(
        "web", replace(WEB, share=50), changed_by="ops", correlation_id="req-7"
    )
    await settle(r)

    events = await outbox_events(store)
    assert {e["channel"] for e in events} == {"web"}  # store's policy, and "*", did not move
    web = changes_of(events, "web")
    # 10 -> 5 and 11 -> 5 at the web's sites; SKU-B: 1 -> floor(0.5) = 0; DC-3 not web's.
    assert {key: (e["previous_atp"], e["atp"]) for key, e in web.items()} == {
        ("SKU-A", "DC-1"): (10, 5),
        ("SKU-A", "DC-2"): (11, 5),
        ("SKU-B", "DC-1"): (1, 0),
        ("SKU-B", "DC-2"): (1, 0),
    }
    for (sku, site), event in web.items():
        assert_in_catalogue(event)
        now = await position(store, sku, site)
        assert event["version"] == now.version == before[(sku, site)].version + 1
        assert event["changed_by"] == "ops"
        assert event["correlation_id"] == "req-7"
    # Nothing else changed at the item-sites that did not move.
    assert (await position(store, "SKU-A", "DC-3")).version == before[("SKU-A", "DC-3")].version


async def test_a_pass_seen_twice_announces_nothing_twice(store: RedisStore) -> None:
    """SCAN may return a key twice and a process may die before saving its cursor: a
    position evaluated under the target is skipped."""
    book = await store.policy_book()
    await store.fold_many([receipt(f"SKU-{n}", "DC-1", 9) for n in range(300)], book)
    r = reevaluator(store)
    await settle(r)
    await clear_outboxes(store)
    await store.put_channel_policy("web", ChannelPolicy(safety_stock=4), changed_by="ops")
    await settle(r)
    first = await outbox_events(store)
    assert len(changes_of(first, "web")) == 300

    # The same pass once more, from its start, as a process that died before saving would.
    plan = Plan.from_json(await store.redis.hget(k.REEVALUATION, "state"))
    plan.current = Pass(target=plan.generation, day=plan.done[1] if plan.done else 0, started_ms=0)
    await store.redis.hset(k.REEVALUATION, "state", plan.to_json())
    await settle(r)
    assert await outbox_events(store) == first


async def test_two_changes_in_quick_succession_each_item_site_tells_one_story(
    store: RedisStore,
) -> None:
    """A second change while the first pass is half done: positions the first pass reached
    go from the first change's ATP, the others straight from the original one; a consumer
    following the events ends on the ATP of the last book everywhere."""
    book = await store.policy_book()
    skus = [f"SKU-{n}" for n in range(400)]
    await store.fold_many([receipt(sku, "DC-1", 20) for sku in skus], book)
    r = reevaluator(store, rate=150.0, page=50)
    await settle(r)
    await clear_outboxes(store)

    await store.put_channel_policy("web", ChannelPolicy(safety_stock=5), changed_by="ops")
    for _ in range(3):  # register it, and visit part of the dataset
        await r.tick()
        await asyncio.sleep(0.3)
    partway = changes_of(await outbox_events(store), "web")
    assert 0 < len(partway) < len(skus)
    await store.put_channel_policy("web", ChannelPolicy(safety_stock=8), changed_by="ops")
    r.rate = 1_000_000.0
    await settle(r)

    stories: dict[str, list[tuple[int, int, int]]] = {}
    for e in await outbox_events(store):
        if e["type"] == "availability.changed" and e["channel"] == "web":
            stories.setdefault(e["sku"], []).append((e["version"], e["previous_atp"], e["atp"]))
    assert set(stories) == set(skus)
    for sku, story in stories.items():
        assert story[0][1] == 20, (sku, story)  # from what the consumer knew
        assert story[-1][2] == 12, (sku, story)  # to the last book's ATP
        for (v1, _, atp1), (v2, prev2, _) in pairwise(story):
            assert v2 > v1 and prev2 == atp1, (sku, story)  # no pair out of sequence
        # Reached under the first change (before the second one registered): two events.
        assert len(story) == 2 if sku in {s for s, _ in partway} else len(story) in (1, 2)


async def test_the_day_that_brings_inbound_inside_a_horizon_is_announced(
    store: RedisStore,
) -> None:
    """Yesterday's evaluation (stamped yesterday, the state done yesterday) and today's:
    inbound due in 7 days entered the 7-day horizon of web, not b2b's 3-day one."""
    today = datetime.now(UTC).date()
    await store.seed_channel_policies(
        {
            "web": ChannelPolicy(include_in_transit=True, in_transit_horizon_days=7),
            "b2b": ChannelPolicy(include_in_transit=True, in_transit_horizon_days=3),
        }
    )
    book = await store.policy_book()
    await store.fold_many(
        [
            receipt("SKU-IT", "DC-1", 4),
            receipt("SKU-IT", "DC-1", 30, Bucket.IN_TRANSIT, eta=today + timedelta(days=7)),
            receipt("SKU-DRY", "DC-1", 4),
        ],
        book,
    )
    r = reevaluator(store)
    await settle(r)
    await clear_outboxes(store)
    yesterday = epoch_day(today) - 1
    await as_if_evaluated_on(store, yesterday)

    await settle(r)

    events = await outbox_events(store)
    assert [(e["sku"], e["channel"], e["previous_atp"], e["atp"]) for e in events] == [
        ("SKU-IT", "web", 4, 34)
    ]
    assert events[0]["correlation_id"] is None and "changed_by" not in events[0]


async def as_if_evaluated_on(store: RedisStore, day: int) -> None:
    """Make the dataset look as if the last pass ran on ``day``."""
    plan = Plan.from_json(await store.redis.hget(k.REEVALUATION, "state"))
    assert plan.done is not None
    plan.done = (plan.done[0], day)
    await store.redis.hset(k.REEVALUATION, "state", plan.to_json())
    async for key in store.redis.scan_iter(match=k.POSITION_PATTERN):
        await store.redis.hset(key, k.F_EVALUATED, plan.done[0] * k.STAMP_DAYS + day)


async def test_a_pass_left_by_a_process_that_died_goes_on_where_it_was(
    store: RedisStore,
) -> None:
    book = await store.policy_book()
    skus = [f"SKU-{n}" for n in range(600)]
    await store.fold_many([receipt(sku, "DC-1", 3) for sku in skus], book)
    first = reevaluator(store, "first", lease_ms=1_000, rate=300.0, page=50)
    await settle(first)
    await clear_outboxes(store)
    await store.put_channel_policy("web", ChannelPolicy(share=0), changed_by="ops")
    for _ in range(4):
        await first.tick()
        await asyncio.sleep(0.2)
    done_by_first = (await first.state()).current.visited  # type: ignore[union-attr]
    assert 0 < done_by_first < len(skus)

    second = reevaluator(store, "second", lease_ms=1_000)
    assert not (await second.tick()).held  # the first one's lease still stands
    await asyncio.sleep(1.1)  # ... until it lapses: the first one "died"
    report = await second.tick()
    assert report.held and report.visited == len(skus) - done_by_first  # not from the start
    await settle(second)

    events = changes_of(await outbox_events(store), "web")
    assert len(events) == len(skus)
    assert all((e["previous_atp"], e["atp"]) == (3, 0) for e in events.values())
    plan = await second.state()
    assert plan is not None and plan.done is not None


async def test_a_fold_racing_the_pass_never_leaves_a_consumer_on_a_stale_atp(
    store: RedisStore,
) -> None:
    """Receipts fold under the new book while the pass runs: every re-evaluation event is
    the position it saw under the old and the new policy, and a consumer following the
    events in order of version ends on the true ATP."""
    old, new = ChannelPolicy(share=100), ChannelPolicy(share=50, safety_stock=1)
    await store.seed_channel_policies({"web": old})
    book = await store.policy_book()
    skus = [f"SKU-{n}" for n in range(200)]
    await store.fold_many([receipt(sku, "DC-1", 7) for sku in skus], book)
    r = reevaluator(store, rate=400.0, page=20)
    await settle(r)
    await clear_outboxes(store)
    on_hand = {sku: {(await position(store, sku, "DC-1")).version: 7} for sku in skus}

    await store.put_channel_policy("web", new, changed_by="ops")
    new_book = await store.policy_book()
    stop = asyncio.Event()

    async def fold_receipts() -> None:
        n = 0
        while not stop.is_set():
            sku = skus[(n * 37) % len(skus)]
            [outcome] = await store.fold_many([receipt(sku, "DC-1", 1)], new_book)
            on_hand[sku][outcome.version] = max(on_hand[sku].values()) + 1
            n += 1
            await asyncio.sleep(0)

    folding = asyncio.create_task(fold_receipts())
    try:
        await settle(r, ticks=2000)
    finally:
        stop.set()
        await folding

    today = date.today()
    seen: dict[str, tuple[int, int]] = {}
    for e in await outbox_events(store):
        if e["type"] != "availability.changed" or e["channel"] != "web":
            continue
        last = seen.get(e["sku"])
        assert last is None or e["version"] > last[0]
        seen[e["sku"]] = (e["version"], e["atp"])
        if e["event_id"].startswith("chg:re:"):
            # The quantities it saw are those of the version before it (it changes none).
            units = on_hand[e["sku"]][e["version"] - 1]
            seen_as = position_with(units)
            assert e["previous_atp"] == atp_for_site(seen_as, old, today), e
            assert e["atp"] == atp_for_site(seen_as, new, today), e
    for sku in skus:
        truth = atp_for_site(await position(store, sku, "DC-1"), new, today)
        assert seen[sku][1] == truth, sku


def position_with(on_hand: int) -> ItemSitePosition:
    return ItemSitePosition(on_hand=on_hand)


async def test_a_position_whose_atp_did_not_move_gets_the_stamp_alone(
    store: RedisStore,
) -> None:
    await store.seed_channel_policies({"web": ChannelPolicy(sites=("DC-1",))})
    book = await store.policy_book()
    await store.fold_many([receipt("SKU-S", "DC-1", 5)], book)
    key = store.keys.position("SKU-S", "DC-1")
    before = await store.redis.hgetall(key)
    r = reevaluator(store)
    await settle(r)
    await store.put_channel_policy("web", ChannelPolicy(sites=("DC-1", "DC-9")), changed_by="ops")
    await settle(r)
    after = await store.redis.hgetall(key)
    stamp = int(after.pop(k.F_EVALUATED))
    assert after == before
    plan = await r.state()
    assert plan is not None and plan.generation == 2
    assert stamp == plan.generation * k.STAMP_DAYS + epoch_day(datetime.now(UTC).date())


async def test_only_the_lease_holder_reevaluates(store: RedisStore) -> None:
    a, b = reevaluator(store, "a"), reevaluator(store, "b")
    assert (await a.tick()).held
    assert not (await b.tick()).held
    await a.lease.release()
    assert (await b.tick()).held


async def test_a_channel_that_gets_a_policy_of_its_own_starts_from_the_unlisted_channels_atp(
    store: RedisStore,
) -> None:
    """Before its policy, "outlet" sold as every unlisted channel ("*"): its events start
    from that ATP, and the sites it no longer sells from go to 0."""
    book = await store.policy_book()
    await store.fold_many([receipt("SKU-O", "DC-1", 8), receipt("SKU-O", "DC-2", 6)], book)
    r = reevaluator(store)
    await settle(r)
    await clear_outboxes(store)
    await store.put_channel_policy(
        "outlet", ChannelPolicy(sites=("DC-1",), share=50), changed_by="ops"
    )
    await settle(r)
    outlet = changes_of(await outbox_events(store), "outlet")
    assert {key: (e["previous_atp"], e["atp"]) for key, e in outlet.items()} == {
        ("SKU-O", "DC-1"): (8, 4),
        ("SKU-O", "DC-2"): (6, 0),
    }


async def test_every_script_call_of_a_pass_touches_one_slot(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Redis Cluster each call must stay in one slot: the keys of every call the
    re-evaluation makes (its batches, its state, its lease) hash to one slot."""
    from redis.commands.core import AsyncScript
    from redis.crc import key_slot

    calls: list[list[str]] = []
    original = AsyncScript.__call__

    async def recorded(
        self: AsyncScript, keys: Any = (), args: Any = (), client: Any = None
    ) -> Any:
        calls.append([str(key) for key in keys])
        return await original(self, keys=keys, args=args, client=client)

    monkeypatch.setattr(AsyncScript, "__call__", recorded)
    book = await store.policy_book()
    await store.fold_many([receipt(f"SKU-{n}", site, 2) for n in range(50) for site in SITES], book)
    r = reevaluator(store)
    await settle(r)
    await store.put_channel_policy("web", ChannelPolicy(safety_stock=1), changed_by="ops")
    await settle(r)
    batches = [keys for keys in calls if len(keys) > 2]
    assert len(batches) >= 16  # a batch per hash-tag group, at least
    for keys in calls:
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys


async def test_a_lease_holder_that_lost_its_lease_never_takes_a_position_back_to_an_older_book(
    store: RedisStore,
) -> None:
    """A process paused past its lease may finish a page with the target it had; a position
    a later holder evaluated under a newer book is left as it is."""
    book = await store.policy_book()
    await store.fold_many([receipt(f"SKU-{n}", "DC-1", 6) for n in range(20)], book)
    r = reevaluator(store)
    await settle(r)
    await store.put_channel_policy("web", ChannelPolicy(share=50), changed_by="ops")
    await settle(r)
    await clear_outboxes(store)
    raw = store.redis.hgetall
    before = {n: await raw(store.keys.position(f"SKU-{n}", "DC-1")) for n in range(20)}

    plan = await r.state()
    assert plan is not None and plan.generation == 2
    stale = replace(plan, generation=1, base=1)
    stale_books = {1: book.lua_json, 2: await store.redis.hget(k.REEVALUATION, "book:2")}
    _, found, moved, events = await r._page(
        None, 0, script_books(stale, stale_books), "{}", plan.epoch
    )
    assert found == 20 and (moved, events) == (0, 0)
    assert await outbox_events(store) == []
    assert {n: await raw(store.keys.position(f"SKU-{n}", "DC-1")) for n in range(20)} == before
