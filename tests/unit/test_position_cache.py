"""The in-process copy of positions: what it installs, what it refuses, when it steps aside."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import date
from typing import cast

import pytest

from atp_service.domain import ItemSite, ItemSitePosition
from atp_service.store import RedisStore
from atp_service.store.position_cache import (
    PositionCache,
    position_from_announcement,
    sources_of,
    sources_text,
)

A = ItemSite("SKU-1", "DC-EAST")


class FakeStore:
    """read_positions answers from ``positions``; with ``gate`` set it waits for it first."""

    def __init__(self) -> None:
        self.positions: dict[ItemSite, ItemSitePosition] = {}
        self.reads: list[list[ItemSite]] = []
        self.gate: asyncio.Event | None = None

    async def read_positions(self, items: Sequence[ItemSite]) -> list[ItemSitePosition]:
        self.reads.append(list(items))
        answer = [self.positions.get(item, ItemSitePosition()) for item in items]
        if self.gate is not None:
            await self.gate.wait()
        return answer


def announcement(
    version: int, on_hand: int, *extra: str, ident: str = "SKU-1@DC-EAST", sources: str = "-"
) -> str:
    return " ".join(
        [ident, str(version), "1764625000123", str(on_hand), "2", "1", "3", "-", sources, *extra]
    )


def subscribed_cache(store: FakeStore, max_entries: int = 100) -> PositionCache:
    cache = PositionCache(None, cast(RedisStore, store), max_entries=max_entries)  # type: ignore[arg-type]
    cache._on_message(["subscribe", "atp:changes", 1])
    return cache


def test_an_announcement_decodes_to_the_position_it_describes() -> None:
    ident, pos = position_from_announcement(announcement(7, 40, "20400:5", "-:2", "20401:-1"))
    assert ident == "SKU-1@DC-EAST"
    assert (pos.on_hand, pos.allocated, pos.quarantined, pos.reserved) == (40, 2, 1, 3)
    assert (pos.version, pos.as_of_ms, pos.safety_stock_override) == (7, 1764625000123, None)
    assert pos.in_transit_by_eta == {date(2025, 11, 8): 5, None: 2, date(2025, 11, 9): -1}
    assert pos.sources == {}
    _, with_override = position_from_announcement("X@Y 1 2 3 4 5 6 9 erp:17,wms:1764625000001")
    assert with_override.safety_stock_override == 9
    assert with_override.in_transit_by_eta == {}
    assert with_override.sources == {"erp": 17, "wms": 1764625000001}


def test_sources_are_spelt_as_the_lua_scripts_spell_them() -> None:
    assert sources_text({"wms": 20, "erp": 10}) == "erp:10,wms:20"
    assert sources_text({}) == "-"
    assert sources_of(sources_text({"wms": 20, "erp": 10})) == {"erp": 10, "wms": 20}


async def test_the_same_version_with_fresher_sources_replaces_the_entry() -> None:
    """An unchanged fold keeps the version and tells only that its source was heard from."""
    store = FakeStore()
    store.positions[A] = ItemSitePosition(on_hand=10, version=3, sources={"wms": 100})
    cache = subscribed_cache(store)
    await cache.read([A])
    cache.apply(announcement(3, 10, sources="wms:200"))
    cache.apply(announcement(3, 10, sources="wms:150"))  # late, older: ignored
    [pos] = await cache.read([A])
    assert (pos.version, pos.sources) == (3, {"wms": 200})
    cache.apply(announcement(3, 10, sources="erp:50,wms:200"))
    [pos] = await cache.read([A])
    assert pos.sources == {"erp": 50, "wms": 200}
    assert len(store.reads) == 1


async def test_reads_go_to_redis_until_the_subscription_is_confirmed() -> None:
    store = FakeStore()
    cache = PositionCache(None, cast(RedisStore, store), max_entries=100)  # type: ignore[arg-type]
    await cache.read([A])
    await cache.read([A])
    assert len(store.reads) == 2
    assert len(cache) == 0


async def test_a_miss_is_filled_once_then_served_from_the_copy() -> None:
    store = FakeStore()
    store.positions[A] = ItemSitePosition(on_hand=10, version=3)
    cache = subscribed_cache(store)
    first = await cache.read([A, A])
    second = await cache.read([A])
    assert [p.on_hand for p in first + second] == [10, 10, 10]
    assert store.reads == [[A]]


async def test_a_newer_announcement_replaces_the_entry_and_an_older_one_does_not() -> None:
    store = FakeStore()
    store.positions[A] = ItemSitePosition(on_hand=10, version=3)
    cache = subscribed_cache(store)
    await cache.read([A])
    cache.apply(announcement(5, 50))
    cache.apply(announcement(4, 40))  # late, older: ignored
    [pos] = await cache.read([A])
    assert (pos.version, pos.on_hand) == (5, 50)


async def test_a_change_announced_while_a_fill_is_in_flight_wins_over_the_older_fill() -> None:
    store = FakeStore()
    store.positions[A] = ItemSitePosition(on_hand=10, version=3)
    store.gate = asyncio.Event()
    cache = subscribed_cache(store)
    reading = asyncio.create_task(cache.read([A]))
    await asyncio.sleep(0)
    cache.apply(announcement(4, 7))  # Redis changed after answering the fill
    store.gate.set()
    [pos] = await reading
    assert (pos.version, pos.on_hand) == (4, 7)
    store.gate = None
    [again] = await cache.read([A])
    assert (again.version, again.on_hand) == (4, 7)
    assert len(store.reads) == 1


async def test_announced_item_sites_are_kept_while_there_is_room_then_only_those_read() -> None:
    store = FakeStore()
    cache = subscribed_cache(store, max_entries=2)
    cache.apply(announcement(1, 5, ident="SKU-8@DC-WEST"))
    [pos] = await cache.read([ItemSite("SKU-8", "DC-WEST")])
    assert (pos.on_hand, store.reads) == (5, [])  # served without asking Redis
    cache.apply(announcement(1, 6, ident="SKU-9@DC-WEST"))
    cache.apply(announcement(1, 7, ident="SKU-7@DC-WEST"))  # full: not kept
    assert len(cache) == 2
    await cache.read([ItemSite("SKU-7", "DC-WEST")])
    assert store.reads == [[ItemSite("SKU-7", "DC-WEST")]]


async def test_a_fill_started_before_the_copy_was_dropped_is_not_installed() -> None:
    store = FakeStore()
    store.gate = asyncio.Event()
    cache = subscribed_cache(store)
    reading = asyncio.create_task(cache.read([A]))
    await asyncio.sleep(0)
    cache._on_message(["subscribe", "atp:changes", 1])  # a reconnect: changes may be lost
    store.gate.set()
    await reading
    assert len(cache) == 0


async def test_a_silent_subscription_sends_reads_to_redis_and_drops_the_copy() -> None:
    store = FakeStore()
    cache = subscribed_cache(store)
    await cache.read([A])
    assert len(cache) == 1
    cache._last_heard = time.monotonic() - 2 * cache.max_staleness
    await cache.read([A])
    assert len(store.reads) == 2
    assert len(cache) == 0
    cache._on_message("pong")  # heard from again: the copy serves (and fills) again
    await cache.read([A])
    await cache.read([A])
    assert len(store.reads) == 3


async def test_the_copy_holds_at_most_max_entries() -> None:
    cache = subscribed_cache(FakeStore(), max_entries=3)
    for n in range(10):
        await cache.read([ItemSite(f"SKU-{n}", "DC-EAST")])
    assert len(cache) == 3


@pytest.mark.parametrize(
    "text",
    ["", "X@Y 1 2", "X@Y one 2 3 4 5 6 - -", "X@Y 1 2 3 4 5 6 - - 1:x", "X@Y 1 2 3 4 5 6 - wms:x"],
)
async def test_an_unreadable_announcement_drops_the_entry_instead_of_serving_it(text: str) -> None:
    store = FakeStore()
    cache = subscribed_cache(store)
    await cache.read([ItemSite("X", "Y")])
    cache.apply(text)
    if text.startswith("X@Y"):
        assert len(cache) == 0


def cluster_copy() -> PositionCache:
    """A copy as on a Redis Cluster (never connected: its heartbeats are handed in)."""
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster(host="127.0.0.1", port=1)
    return PositionCache(
        client, cast(RedisStore, FakeStore()), max_entries=10, max_staleness_seconds=1.0
    )


def test_on_a_cluster_the_copy_is_current_only_while_every_primary_is_heard_from() -> None:
    copy = cluster_copy()
    copy._on_message(["subscribe", "atp:changes", 1])
    primaries = frozenset({"10.0.0.1:7000", "10.0.0.2:7000"})
    copy._note_primaries(primaries)
    assert not copy.current  # subscribed, but no primary heard from yet
    sent = time.monotonic()
    copy._on_message(["message", "atp:changes", f"~{copy._token} 10.0.0.1:7000 {sent!r}"])
    assert not copy.current  # one of two
    copy._on_message(["message", "atp:changes", f"~{copy._token} 10.0.0.2:7000 {sent!r}"])
    assert copy.current
    # An announcement proves nothing about the other primaries; another process's beat
    # proves nothing about this copy's subscription.
    copy._note_primaries(primaries | {"10.0.0.3:7000"})  # a replica promoted
    copy._on_message(["message", "atp:changes", announcement(1, 5)])
    copy._on_message(["message", "atp:changes", f"~other 10.0.0.3:7000 {sent!r}"])
    assert not copy.current
    copy._on_message(["message", "atp:changes", f"~{copy._token} 10.0.0.3:7000 {sent!r}"])
    assert copy.current


def test_on_a_cluster_a_heartbeat_sent_too_long_ago_is_not_fresh() -> None:
    copy = cluster_copy()
    copy._on_message(["subscribe", "atp:changes", 1])
    copy._note_primaries(frozenset({"10.0.0.1:7000"}))
    old = time.monotonic() - 5.0  # delayed on the way (a slow bus link)
    copy._on_message(["message", "atp:changes", f"~{copy._token} 10.0.0.1:7000 {old!r}"])
    assert not copy.current
