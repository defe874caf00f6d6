"""Workers killed with SIGKILL in the middle of a stream lose nothing and fold nothing twice:
one restarted, and one of two sharing the partitions as one consumer group."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from atp_service.config import EVENTS_TOPIC
from atp_service.domain import ChannelPolicy, ItemSite
from atp_service.embedded import EmbeddedStack
from atp_service.store import KeySpace, RedisStore, connect
from tests.integration._worker_process import (
    WorkerProcess,
    eventually,
    forget_event_ids,
    in_order_for_a_consumer,
    json_value,
    produce_receipts,
    read_topic,
    versions_folded,
)
from tests.random_refs import random_site, random_sku

pytestmark = pytest.mark.integration

EVENTS = 3000
BEFORE_KILL = 1000


class Receipts:
    """Receipts only, on 40 item-sites: every event raises the item-site's ATP on the
    scenario's channel, so every event must yield one availability.changed, whose version
    says which event it was."""

    def __init__(self, seed: int) -> None:
        sites = [random_site() for _ in range(4)]
        self.sites = tuple(sites)
        self.items = [ItemSite(random_sku(), site) for site in sites for _ in range(10)]
        self.channel = f"k{uuid.uuid4().hex[:10]}"
        rng = random.Random(seed)
        self.stream = [(rng.choice(self.items), rng.randint(1, 5)) for _ in range(EVENTS)]
        #: Per item-site, its on-hand after each of its receipts (the one of version n at n-1).
        self.received: dict[ItemSite, list[int]] = defaultdict(list)
        for item, qty in self.stream:
            totals = self.received[item]
            totals.append((totals[-1] if totals else 0) + qty)

    async def assert_folded_once(self, store: RedisStore) -> None:
        positions = await store.read_positions(self.items)
        for item, pos in zip(self.items, positions, strict=True):
            totals = self.received.get(item, [])
            assert (pos.on_hand, pos.version) == (totals[-1] if totals else 0, len(totals)), item

    async def assert_published_once_each_in_order(self, stack: EmbeddedStack) -> None:
        keys = {f"{item.sku}@{item.site}".encode(): item for item in self.items}

        def ours(record: Any) -> bool:
            return record.key in keys and f'"channel":"{self.channel}"'.encode() in record.value

        def every_version_seen(found: list[Any]) -> bool:
            return len({(r.key, json_value(r)["version"]) for r in found}) >= EVENTS

        published = await read_topic(stack, EVENTS_TOPIC, ours, every_version_seen)
        seen: dict[ItemSite, dict[int, int]] = defaultdict(dict)
        for record in published:
            event = json_value(record)
            assert event["type"] == "availability.changed"
            atp_by_version = seen[keys[record.key]]
            # At least once: a redelivered event is the same event.
            assert atp_by_version.setdefault(event["version"], event["atp"]) == event["atp"]
        for item, totals in self.received.items():
            assert seen[item] == {v: total for v, total in enumerate(totals, start=1)}, item
        # ... and in their order on each key.
        kept = in_order_for_a_consumer(published)
        for key, item in keys.items():
            assert kept[key] == list(range(1, len(self.received[item]) + 1)), item


async def test_a_worker_killed_mid_stream_and_restarted_folds_every_event_exactly_once(
    stack: EmbeddedStack, store: RedisStore, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    receipts = Receipts(seed=20261123)
    await store.put_channel_policy(
        receipts.channel, ChannelPolicy(sites=receipts.sites), changed_by="t"
    )
    stream, items = receipts.stream, receipts.items
    worker = WorkerProcess(stack, tmp_path)
    try:
        worker.start()
        await produce_receipts(producer, stream[:BEFORE_KILL])

        async def folding() -> bool:
            return await versions_folded(store, items) >= BEFORE_KILL // 4

        await eventually(folding, worker, every=0.01)
        worker.kill()
        folded_at_kill = await versions_folded(store, items)
        assert folded_at_kill < EVENTS

        await produce_receipts(producer, stream[BEFORE_KILL:])
        worker.start()  # same app id: the same consumer group, from what Redis recorded

        async def all_folded() -> bool:
            return await versions_folded(store, items) >= EVENTS

        await eventually(all_folded, worker)
        await receipts.assert_folded_once(store)
        await receipts.assert_published_once_each_in_order(stack)
    finally:
        worker.stop()


@pytest.mark.both_redis_kinds
async def test_two_workers_share_the_partitions_and_one_killed_hands_its_over_losing_nothing(
    stack: EmbeddedStack,
    own_redis_or_cluster: tuple[str, bool],
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    url, cluster = own_redis_or_cluster
    client = connect(url, timeout=2.0, max_connections=16, cluster=cluster)
    store = RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    receipts = Receipts(seed=20261204)
    await store.put_channel_policy(
        receipts.channel, ChannelPolicy(sites=receipts.sites), changed_by="t"
    )
    stream, items = receipts.stream, receipts.items
    group = f"test-workers-{uuid.uuid4().hex[:8]}"
    workers = [WorkerProcess(stack, tmp_path / name, app_id=group) for name in ("a", "b")]
    try:
        for worker in workers:
            worker.env["ATP_REDIS_URL"] = url
            worker.env["ATP_REDIS_CLUSTER"] = "true" if cluster else "false"
            worker.start()

        async def both_have_partitions() -> bool:
            return all(worker.assigned() for worker in workers)

        await eventually(both_have_partitions, workers[0])
        await produce_receipts(producer, stream[:BEFORE_KILL])

        async def folding() -> bool:
            return await versions_folded(store, items) >= BEFORE_KILL // 4

        await eventually(folding, workers[0], every=0.01)
        victim, survivor = workers
        victim.kill()
        # What the victim folded and did not commit is read again by the survivor: only the
        # offsets the fold recorded keep it from being folded twice.
        await forget_event_ids(store)
        await produce_receipts(producer, stream[BEFORE_KILL:])

        async def all_folded() -> bool:
            return await versions_folded(store, items) >= EVENTS

        await eventually(all_folded, survivor)
        await receipts.assert_folded_once(store)
        await receipts.assert_published_once_each_in_order(stack)
        survivor.assert_alive()
    finally:
        for worker in workers:
            worker.stop()
        await client.aclose()
