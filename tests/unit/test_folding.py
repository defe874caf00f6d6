"""The worker's batch handling, with a fake store and a fake dead-letter topic (no I/O)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from atp_service.domain import DEFAULT_AUTHORITY, ChannelPolicy, InventoryDelta, InventorySnapshot
from atp_service.store import FoldOutcome, KeySpace, PolicyBook, RedisStore
from atp_service.store.applied import AppliedOffsets, Origin, StoreBehind
from atp_service.store.redis_store import FOLD_BEHIND, FOLD_ERROR, PreparedFold
from stream_agents._folding import BatchAbandoned, BatchFolder, InboundMessage

Event = InventoryDelta | InventorySnapshot


class FakeStore:
    """Folds into a list; can be told to be down for a number of calls or to refuse events."""

    def __init__(self) -> None:
        self.keys = KeySpace(4)
        self.folded: list[str] = []
        #: Events of these partitions come back 'behind' (Redis holds less than recorded).
        self.lost_partitions: set[str] = set()
        self.round_trips = 0
        self.down_for = 0
        self.refused: set[str] = set()
        self.refuse_all = False
        self.sites: list[str] = []
        self.policies: dict[str, ChannelPolicy] = {}
        self.version = 0
        self.books_loaded = 0

    def _call(self) -> None:
        if self.down_for:
            self.down_for -= 1
            raise RedisConnectionError("Connection refused")

    async def migrate_legacy_keys(self) -> None:
        """Nothing of an earlier layout here."""

    async def seed_channel_policies(self, policies: dict[str, ChannelPolicy]) -> None:
        self._call()
        for name, policy in policies.items():
            self.policies.setdefault(name, policy)
        self.version += 1

    async def policy_book(self) -> PolicyBook:
        self._call()
        self.books_loaded += 1
        return PolicyBook.of(self.policies, self.version)

    async def policies_version(self) -> int:
        self._call()
        return self.version

    async def register_sites(self, sites: Sequence[str]) -> None:
        self._call()
        self.sites.extend(sites)

    def prepare_fold(
        self, events: Sequence[Event], origins: Sequence[Origin] | None = None
    ) -> PreparedFold:
        return PreparedFold(events, 0, [], frozenset(e.site for e in events), origins)

    async def fold_prepared(
        self, prepared: PreparedFold, book: PolicyBook, applied: AppliedOffsets | None = None
    ) -> list[FoldOutcome]:
        """As the real script: a refused event comes back as an error, or (``refuse_all``)
        the whole call fails, as a script-level error would make it."""
        self._call()
        self.round_trips += 1
        origins = prepared.origins or [None] * len(prepared.events)
        outcomes = [
            FoldOutcome(FOLD_BEHIND, 0, 0, None)
            if origin is not None and origin.partition in self.lost_partitions
            else self._fold(e)
            for e, origin in zip(prepared.events, origins, strict=True)
        ]
        if self.refuse_all and any(o is None for o in outcomes):
            raise ResponseError("ERR user_script:1: bad event")
        return [
            o if o is not None else FoldOutcome(FOLD_ERROR, 0, 0, None, error="bad event")
            for o in outcomes
        ]

    async def fold_many(
        self,
        events: Sequence[Event],
        book: PolicyBook,
        origins: Sequence[Origin] | None = None,
        applied: AppliedOffsets | None = None,
    ) -> list[FoldOutcome]:
        self._call()
        self.round_trips += 1
        outcomes = [self._fold(event) for event in events]
        if any(outcome is None for outcome in outcomes):
            raise ResponseError("ERR user_script:1: bad event")
        return outcomes  # type: ignore[return-value]  # none is None

    def _fold(self, event: Event) -> FoldOutcome | None:
        if event.event_id in self.refused:
            return None
        if event.event_id in self.folded:
            return FoldOutcome("duplicate", 0, 0, None)
        self.folded.append(event.event_id)
        return FoldOutcome("folded", len(self.folded), 0, None)


class FakeDeadLetters:
    def __init__(self, fail_times: int = 0) -> None:
        self.records: list[dict[str, Any]] = []
        self.fail_times = fail_times

    async def send(self, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("broker unreachable")
        self.records.extend(json.loads(value) for _, value in records)


def folder_for(store: FakeStore, letters: FakeDeadLetters, **kw: Any) -> BatchFolder:
    return BatchFolder(
        cast(RedisStore, store),
        letters,
        authority=DEFAULT_AUTHORITY,
        max_backoff_seconds=0.05,
        **kw,
    )


_offsets = iter(range(10**6))


def message(
    event_id: str, *, sku: str = "SKU-1", site: str = "DC-1", bucket: str = "on_hand", qty: int = 1
) -> InboundMessage:
    body = {
        "schema": "inventory.delta.v1", "event_id": event_id, "source": "wms",
        "occurred_at": "2026-11-23T05:00:00Z", "sku": sku, "site": site,
        "bucket": bucket, "delta": qty,
    }  # fmt: skip
    return InboundMessage(
        "wms.inventory.v1", 0, next(_offsets), f"{sku}@{site}".encode(), json.dumps(body).encode()
    )


def garbage(partition: int = 0) -> InboundMessage:
    return InboundMessage("wms.inventory.v1", partition, next(_offsets), b"SKU-1@DC-1", b"{{{")


async def test_good_messages_fold_in_order_in_one_round_trip_and_bad_ones_dead_letter() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    batch = [message("e1"), garbage(), message("e2"), message("e3", bucket="in_transit")]
    await folder_for(store, letters).handle(batch)
    assert store.folded == ["e1", "e2"]
    assert store.round_trips == 1
    assert [(r["offset"], r["code"]) for r in letters.records] == [
        (batch[1].offset, "malformed_json"),
        (batch[3].offset, "not_authoritative"),
    ]


async def test_the_fold_is_told_where_each_event_was_read() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    batch = [message("e1"), garbage(), message("e2")]
    prepared = folder_for(store, letters).prepare(batch)
    assert prepared.fold.origins == [
        Origin("wms.inventory.v1:0", batch[0].offset),
        Origin("wms.inventory.v1:0", batch[2].offset),
    ]


async def test_a_batch_that_finds_redis_behind_dead_letters_its_rejects_then_says_so() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    store.lost_partitions.add("wms.inventory.v1:1")
    kept = message("e1")
    lost = InboundMessage("wms.inventory.v1", 1, 7, kept.key, kept.value.replace(b"e1", b"e2"))
    with pytest.raises(StoreBehind) as behind:
        await folder_for(store, letters).handle([kept, garbage(1), lost])
    assert behind.value.partitions == {"wms.inventory.v1:1"}
    assert store.folded == ["e1"]  # the other partition's events went through
    assert [r["code"] for r in letters.records] == ["malformed_json"]


async def test_a_redis_outage_is_retried_until_the_batch_is_folded() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    folder = folder_for(store, letters)
    await folder.start()
    store.down_for = 4
    await folder.handle([message("e1"), message("e2")])
    assert store.folded == ["e1", "e2"]
    assert store.down_for == 0


async def test_dead_letters_are_resent_until_the_broker_acknowledges_them() -> None:
    store, letters = FakeStore(), FakeDeadLetters(fail_times=3)
    await folder_for(store, letters).handle([garbage()])
    assert [r["code"] for r in letters.records] == ["malformed_json"]
    assert letters.fail_times == 0


async def test_an_event_whose_fold_fails_is_dead_lettered_and_the_others_fold_once() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    store.refused.add("bad")
    await folder_for(store, letters).handle([message("e1"), message("bad"), message("e2")])
    assert store.folded == ["e1", "e2"]
    assert store.round_trips == 1
    assert [(r["code"], r["detail"]) for r in letters.records] == [("fold_failed", "bad event")]


async def test_a_batch_redis_refuses_as_a_whole_is_folded_one_by_one_to_find_the_culprit() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    store.refused.add("bad")
    store.refuse_all = True
    await folder_for(store, letters).handle([message("e1"), message("bad"), message("e2")])
    assert store.folded == ["e1", "e2"]
    assert [(r["code"], r["detail"]) for r in letters.records] == [
        ("fold_failed", "ERR user_script:1: bad event")
    ]


async def test_a_stopping_worker_abandons_a_batch_it_cannot_fold() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    folder = folder_for(store, letters, should_give_up=lambda: True)
    await folder.start()
    store.down_for = 1_000
    with pytest.raises(BatchAbandoned):
        await folder.handle([message("e1")])
    assert store.folded == []


async def test_configured_channel_policies_are_seeded_at_start() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    store.policies["web"] = ChannelPolicy(safety_stock=9)  # an admin's change wins
    folder = folder_for(
        store,
        letters,
        initial_policies={"web": ChannelPolicy(), "b2b": ChannelPolicy(share=50)},
    )
    await folder.start()
    assert folder.book.policies == {
        "web": ChannelPolicy(safety_stock=9),
        "b2b": ChannelPolicy(share=50),
    }


async def test_policies_are_reloaded_only_when_their_version_moved() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    folder = folder_for(store, letters, policy_refresh_seconds=0)
    await folder.start()
    await folder.handle([message("e1")])
    await folder.handle([message("e2")])
    assert store.books_loaded == 1
    store.policies["web"] = ChannelPolicy(share=10)
    store.version += 1
    await folder.handle([message("e3")])
    assert store.books_loaded == 2
    assert folder.book.policy("web") == ChannelPolicy(share=10)


async def test_policies_are_not_looked_up_more_often_than_the_refresh_interval() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    folder = folder_for(store, letters, policy_refresh_seconds=3600)
    await folder.start()
    store.version += 1
    await folder.handle([message("e1")])
    assert store.books_loaded == 1


async def test_each_new_site_is_registered_once() -> None:
    store, letters = FakeStore(), FakeDeadLetters()
    folder = folder_for(store, letters)
    await folder.handle([message("e1", site="DC-1"), message("e2", site="DC-2")])
    await folder.handle([message("e3", site="DC-2"), message("e4", site="DC-3")])
    assert sorted(store.sites) == ["DC-1", "DC-2", "DC-3"]


async def test_preparing_with_turns_of_the_loop_prepares_the_same_batch() -> None:
    folder = folder_for(FakeStore(), FakeDeadLetters())
    batch = [message(f"e{i}") if i % 7 else garbage() for i in range(30)]
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counting = asyncio.create_task(count_turns())
    yielding = await folder.prepare_yielding(batch, every=4)
    counting.cancel()
    plain = folder.prepare(batch)
    assert [m.offset for m, _ in yielding.good] == [m.offset for m, _ in plain.good]
    assert [(r.message.offset, r.code) for r in yielding.rejected] == [
        (r.message.offset, r.code) for r in plain.rejected
    ]
    assert yielding.fold == plain.fold
    assert turns >= 7  # the loop ran between chunks


class Watcher:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []
        self.dead_letters: list[dict[str, Any]] = []
        self.drifts: list[dict[str, Any]] = []

    def folded(self, source: str, outcome: str, n: int) -> None:
        self.seen.append((source, outcome, n))

    def dead_lettered(self, entries: Sequence[Any]) -> None:
        self.dead_letters.extend(entries)

    def drifted(self, entry: Any) -> None:
        self.drifts.append(dict(entry))


async def test_the_watcher_sees_what_was_folded_dead_lettered_and_consumed() -> None:
    from prometheus_client import REGISTRY

    store, letters = FakeStore(), FakeDeadLetters()
    watcher = Watcher()

    original = store._fold

    def consuming(event: Event) -> FoldOutcome | None:
        outcome = original(event)
        if outcome is not None and event.event_id == "alloc":
            return FoldOutcome("folded", outcome.version, 0, None, reservation_consumed=True)
        if outcome is not None and event.event_id == "snap":
            drift = {"event_id": "snap", "buckets": {"on_hand": {"folded": 3, "snapshot": 5}}}
            return FoldOutcome("folded", outcome.version, 0, drift)
        return outcome

    store._fold = consuming  # type: ignore[method-assign]
    before = REGISTRY.get_sample_value("atp_reservations_total", {"status": "consumed"}) or 0
    folder = folder_for(store, letters, watcher=watcher)
    batch = [message("e1"), message("e1"), message("alloc"), message("snap"), garbage()]
    await folder.handle(batch)

    assert sorted(watcher.seen) == [("wms", "duplicate", 1), ("wms", "folded", 3)]
    assert [(d["code"], d["topic"], d["source"], d["key"]) for d in watcher.dead_letters] == [
        ("malformed_json", "wms.inventory.v1", "wms", "SKU-1@DC-1")
    ]
    assert watcher.dead_letters[0]["value"] == "{{{"
    assert watcher.drifts == [
        {"sku": "SKU-1", "site": "DC-1", "event_id": "snap",
         "buckets": {"on_hand": {"folded": 3, "snapshot": 5}}}
    ]  # fmt: skip
    after = REGISTRY.get_sample_value("atp_reservations_total", {"status": "consumed"})
    assert after == before + 1
