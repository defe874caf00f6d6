"""The relay with ATP_EVENTS_COALESCE_MS: it holds a window's entries, publishes them once,
coalesced, and keeps them (pending in the outbox) through a failed publish."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

import fakeredis

from atp_service.domain import Bucket, ChannelPolicy, InventoryDelta, Source
from atp_service.events import OutboxRelay
from atp_service.store import KeySpace, PolicyBook, RedisStore

BOOK = PolicyBook.of({"web": ChannelPolicy()})


class Recorder:
    def __init__(self) -> None:
        self.rounds: list[list[dict[str, object]]] = []
        self.fail_next = False

    async def publish(self, topic: str, messages: Sequence[tuple[str, str]]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker unreachable")
        self.rounds.append([json.loads(value) for _, value in messages])


async def folded(store: RedisStore, n: int) -> None:
    for i in range(n):
        event = InventoryDelta(f"ev-{i}", Source.WMS, "SKU-1", "DC-1", Bucket.ON_HAND, 1, "x")
        await store.fold(event, BOOK)


def relay_of(store: RedisStore, publisher: Recorder, coalesce_ms: int) -> OutboxRelay:
    return OutboxRelay(
        store, publisher, topic="t", consumer="r", block_ms=10, coalesce_ms=coalesce_ms
    )


def fresh_store() -> RedisStore:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    return RedisStore(redis, KeySpace(2), dedup_window_seconds=86_400)


async def test_without_a_window_every_change_goes_out_as_it_was_written() -> None:
    store, publisher = fresh_store(), Recorder()
    await folded(store, 5)
    relay = relay_of(store, publisher, 0)
    while await relay.relay_once():
        pass
    web = [e for r in publisher.rounds for e in r if e["channel"] == "web"]
    assert [e["atp"] for e in web] == [1, 2, 3, 4, 5]
    assert all("coalesced" not in e for e in web)


async def test_a_window_goes_out_once_coalesced_after_its_length() -> None:
    store, publisher = fresh_store(), Recorder()
    await folded(store, 5)
    relay = relay_of(store, publisher, 300)
    assert await relay.relay_once() == 0  # holding
    assert publisher.rounds == []
    await asyncio.sleep(0.35)
    assert await relay.relay_once() == 5
    [round_] = publisher.rounds
    web = [e for e in round_ if e["channel"] == "web"]
    assert [(e["previous_atp"], e["atp"], e["coalesced"]) for e in web] == [(0, 5, 5)]
    assert await store.outbox_backlog() == 0  # acknowledged and deleted


async def test_a_failed_publish_keeps_the_window_and_sends_it_once_after() -> None:
    store, publisher = fresh_store(), Recorder()
    await folded(store, 3)
    relay = relay_of(store, publisher, 100)
    await relay.relay_once()
    await asyncio.sleep(0.15)
    publisher.fail_next = True
    with contextlib.suppress(ConnectionError):
        await relay.relay_once()
    assert await store.outbox_backlog() == 3  # still in the outbox, pending
    await folded_more(store)
    for _ in range(20):
        await relay.relay_once()
        await asyncio.sleep(0.02)
    web = [e for r in publisher.rounds for e in r if e["channel"] == "web"]
    # The window, overdue, took the later change in too: one event, from 0 to 4, once.
    assert [(e["previous_atp"], e["atp"]) for e in web] == [(0, 4)]
    assert await store.outbox_backlog() == 0


async def folded_more(store: RedisStore) -> None:
    event = InventoryDelta("ev-more", Source.WMS, "SKU-1", "DC-1", Bucket.ON_HAND, 1, "x")
    await store.fold(event, BOOK)
