"""A worker killed with SIGKILL in the middle of a stream loses nothing and folds nothing twice."""

from __future__ import annotations

import asyncio
import json
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
from atp_service.store import RedisStore
from tests.integration._worker_process import WorkerProcess, eventually, json_value, read_topic
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

EVENTS = 3000
BEFORE_KILL = 1000


async def test_a_worker_killed_mid_stream_and_restarted_folds_every_event_exactly_once(
    stack: EmbeddedStack, store: RedisStore, tmp_path: Path
) -> None:
    sites = [random_site() for _ in range(4)]
    items = [ItemSite(random_sku(), site) for site in sites for _ in range(10)]
    channel = f"k{uuid.uuid4().hex[:10]}"
    await store.put_channel_policy(channel, ChannelPolicy(sites=tuple(sites)), changed_by="t")

    # Receipts only: every event raises the item-site's ATP on our channel, so every event
    # must yield one availability.changed, whose version says which event it was.
    rng = random.Random(20261123)
    stream = [(rng.choice(items), rng.randint(1, 5)) for _ in range(EVENTS)]
    received: dict[ItemSite, list[int]] = defaultdict(list)  # running totals per version
    for item, qty in stream:
        totals = received[item]
        totals.append((totals[-1] if totals else 0) + qty)

    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    worker = WorkerProcess(stack, tmp_path)
    try:
        worker.start()
        await _produce(producer, stream[:BEFORE_KILL])

        async def folding() -> bool:
            return await _folded(store, items) >= BEFORE_KILL // 4

        await eventually(folding, worker, every=0.01)
        worker.kill()
        folded_at_kill = await _folded(store, items)
        assert folded_at_kill < EVENTS

        await _produce(producer, stream[BEFORE_KILL:])
        worker.start()  # same app id: the same consumer group, from its committed offsets

        async def all_folded() -> bool:
            return await _folded(store, items) >= EVENTS

        await eventually(all_folded, worker)
        positions = await store.read_positions(items)
        for item, pos in zip(items, positions, strict=True):
            totals = received.get(item, [])
            assert (pos.on_hand, pos.version) == (totals[-1] if totals else 0, len(totals)), item

        keys = {f"{item.sku}@{item.site}".encode(): item for item in items}

        def ours(record: Any) -> bool:
            return record.key in keys and f'"channel":"{channel}"'.encode() in record.value

        def every_version_seen(found: list[Any]) -> bool:
            return len({(r.key, json_value(r)["version"]) for r in found}) >= EVENTS

        published = await read_topic(stack, EVENTS_TOPIC, ours, every_version_seen)
    finally:
        worker.stop()
        await producer.stop()

    seen: dict[ItemSite, dict[int, int]] = defaultdict(dict)
    for record in published:
        event = json_value(record)
        assert event["type"] == "availability.changed"
        atp_by_version = seen[keys[record.key]]
        # At least once: a redelivered event is the same event.
        assert atp_by_version.setdefault(event["version"], event["atp"]) == event["atp"]
    for item, totals in received.items():
        assert seen[item] == {v: total for v, total in enumerate(totals, start=1)}, item


async def _produce(producer: AIOKafkaProducer, stream: list[tuple[ItemSite, int]]) -> None:
    sends = []
    for item, qty in stream:
        body = {
            "schema": "inventory.delta.v1",
            "event_id": random_event_id("wms"),
            "source": "wms",
            "occurred_at": "2026-11-23T05:00:00Z",
            "sku": item.sku,
            "site": item.site,
            "bucket": "on_hand",
            "delta": qty,
        }
        key = f"{item.sku}@{item.site}".encode()
        sends.append(
            await producer.send("wms.inventory.v1", key=key, value=json.dumps(body).encode())
        )
    await asyncio.gather(*sends)


async def _folded(store: RedisStore, items: list[ItemSite]) -> int:
    """Events folded so far: each receipt bumps its item-site's version by one."""
    return sum(pos.version for pos in await store.read_positions(items))
