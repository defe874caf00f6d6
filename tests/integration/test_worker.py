"""`atp worker` as a separate process on a real Tansu broker and a real redis-server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from atp_service.config import DLQ_TOPIC, EVENTS_TOPIC
from atp_service.domain import ChannelPolicy, ItemSite, ItemSitePosition
from atp_service.embedded import EmbeddedStack
from atp_service.store import RedisStore
from stream_agents._folding import POLICY_REFRESH_SECONDS
from stream_agents.records import original_bytes
from tests.integration._worker_process import (
    WorkerProcess,
    eventually,
    json_value,
    read_topic,
)
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

WMS = "wms.inventory.v1"
ERP = "erp.inventory.v1"


@pytest.fixture(scope="module")
def worker(
    stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker (its own consumer group) for the tests of this module."""
    process = WorkerProcess(stack, tmp_path_factory.mktemp("worker"))
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def producer(stack: EmbeddedStack) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


def delta(sku: str, site: str, bucket: str, qty: int, **fields: Any) -> dict[str, Any]:
    return {
        "schema": "inventory.delta.v1",
        "event_id": random_event_id("wms"),
        "source": "erp" if bucket == "in_transit" else "wms",
        "occurred_at": "2026-11-23T05:00:00Z",
        "sku": sku,
        "site": site,
        "bucket": bucket,
        "delta": qty,
        **fields,
    }


def snapshot(sku: str, site: str, seq: int, **quantities: int) -> dict[str, Any]:
    return {
        "schema": "inventory.snapshot.v1",
        "event_id": random_event_id("wms-snap"),
        "source": "wms",
        "source_seq": seq,
        "occurred_at": "2026-11-23T06:00:00Z",
        "sku": sku,
        "site": site,
        "quantities": quantities,
    }


async def send(producer: AIOKafkaProducer, body: dict[str, Any], topic: str = WMS) -> Any:
    key = f"{body['sku']}@{body['site']}".encode()
    return await producer.send_and_wait(topic, key=key, value=json.dumps(body).encode())


async def position(store: RedisStore, sku: str, site: str) -> ItemSitePosition:
    [pos] = await store.read_positions([ItemSite(sku, site)])
    return pos


async def test_a_stream_of_deltas_folds_into_the_item_sites_position(
    worker: WorkerProcess, producer: AIOKafkaProducer, store: RedisStore
) -> None:
    sku, site = random_sku(), random_site()
    moves = [("on_hand", 40), ("allocated", 5), ("on_hand", -3), ("quarantined", 2),
             ("allocated", -1), ("on_hand", 12), ("quarantined", -2), ("allocated", 3)]  # fmt: skip
    for bucket, qty in moves:
        await send(producer, delta(sku, site, bucket, qty))
    await send(producer, delta(sku, site, "in_transit", 30, eta="2026-12-01"), ERP)
    await send(producer, delta(sku, site, "in_transit", 7), ERP)

    async def all_folded() -> bool:
        return (await position(store, sku, site)).version == len(moves) + 2

    await eventually(all_folded, worker)
    pos = await position(store, sku, site)
    assert (pos.on_hand, pos.allocated, pos.quarantined, pos.in_transit) == (49, 7, 0, 37)
    assert site in await store.known_sites()


async def test_duplicates_and_stale_source_seqs_are_skipped(
    worker: WorkerProcess, producer: AIOKafkaProducer, store: RedisStore
) -> None:
    sku, site = random_sku(), random_site()
    first = delta(sku, site, "on_hand", 10, source_seq=1)
    await send(producer, first)
    await send(producer, first)  # redelivered by the source: same event_id
    await send(producer, delta(sku, site, "on_hand", 5, source_seq=2))
    await send(producer, {**first, "source_seq": 3})  # same event_id, even with a new seq
    await send(producer, delta(sku, site, "on_hand", 100, source_seq=2))  # stale seq
    await send(producer, delta(sku, site, "on_hand", 1000, source_seq=1))  # stale seq
    await send(producer, delta(sku, site, "on_hand", 1, source_seq=3))  # the last word

    async def last_folded() -> bool:
        return (await position(store, sku, site)).version >= 3

    await eventually(last_folded, worker)
    pos = await position(store, sku, site)
    assert (pos.on_hand, pos.version) == (16, 3)


async def test_bad_input_is_dead_lettered_and_the_good_events_behind_it_still_fold(
    worker: WorkerProcess, producer: AIOKafkaProducer, store: RedisStore, stack: EmbeddedStack
) -> None:
    sku, site = random_sku(), random_site()
    key = f"{sku}@{site}".encode()
    first = await send(producer, delta(sku, site, "on_hand", 3))
    partition = first.partition  # everything below goes to the same partition, in order
    bad: list[tuple[bytes | None, bytes | None, str, str]] = [
        (key, b"\xff\xfe not json", WMS, "malformed_json"),
        (key, None, WMS, "malformed_json"),
        (key, json.dumps({**delta(sku, site, "on_hand", 1), "schema": "x.v9"}).encode(), WMS,
         "unknown_schema"),
        (key, json.dumps(delta(sku, site, "on_hand", 10**9 + 1)).encode(), WMS,
         "schema_violation"),
        (key, json.dumps(delta(sku, site, "on_hand", 1, eta="2026-12-01")).encode(), WMS,
         "schema_violation"),
        (key, json.dumps(delta(sku, site, "in_transit", 4)).encode(), WMS, "schema_violation"),
        (f"{sku}@ELSEWHERE".encode(), json.dumps(delta(sku, site, "on_hand", 1)).encode(), WMS,
         "key_mismatch"),
        (key, json.dumps(delta(sku, site, "in_transit", 4, source="wms")).encode(), WMS,
         "not_authoritative"),
        (key, json.dumps({**snapshot(sku, site, 9, on_hand=1), "source": "erp"}).encode(), ERP,
         "not_authoritative"),
    ]  # fmt: skip
    sent: dict[tuple[str, int], tuple[bytes | None, bytes | None, str]] = {}
    for k, v, topic, code in bad:
        meta = await producer.send_and_wait(topic, key=k, value=v, partition=partition)
        sent[(topic, meta.offset)] = (k, v, code)
    await send(producer, delta(sku, site, "on_hand", 4))  # behind all of them

    async def good_ones_folded() -> bool:
        return (await position(store, sku, site)).on_hand == 7

    await eventually(good_ones_folded, worker)

    def ours(record: Any) -> bool:
        return record.key is not None and record.key.startswith(sku.encode())

    letters = [json_value(r) for r in await read_topic(stack, DLQ_TOPIC, ours, _at_least(len(bad)))]
    assert len(letters) == len(bad)
    for letter in letters:
        k, v, code = sent[(letter["topic"], letter["offset"])]
        assert letter["partition"] == partition
        assert letter["code"] == code, letter
        assert letter["detail"]
        assert original_bytes(letter["key"], letter["key_encoding"]) == k
        assert original_bytes(letter["value"], letter["value_encoding"]) == v
        assert letter["dead_lettered_at"].endswith("Z")


async def test_a_disagreeing_snapshot_reports_drift_and_an_older_one_is_skipped(
    worker: WorkerProcess, producer: AIOKafkaProducer, store: RedisStore, stack: EmbeddedStack
) -> None:
    sku, site = random_sku(), random_site()
    await send(producer, delta(sku, site, "on_hand", 4, source_seq=1))
    await send(producer, delta(sku, site, "on_hand", 6, source_seq=2))
    drifting = snapshot(sku, site, 5, on_hand=7, allocated=0, quarantined=0)
    await send(producer, drifting)
    await send(producer, snapshot(sku, site, 3, on_hand=100, allocated=50, quarantined=0))
    await send(producer, delta(sku, site, "on_hand", 1, source_seq=6))

    async def last_folded() -> bool:
        return (await position(store, sku, site)).on_hand == 8

    await eventually(last_folded, worker)
    pos = await position(store, sku, site)
    assert (pos.on_hand, pos.allocated) == (8, 0)

    key = f"{sku}@{site}".encode()
    drift = [
        json_value(r)
        for r in await read_topic(
            stack, EVENTS_TOPIC, lambda r: r.key == key and b"drift" in r.value,
            _at_least(1),
        )
    ]  # fmt: skip
    assert len(drift) == 1
    assert drift[0]["type"] == "inventory.drift_detected"
    assert drift[0]["snapshot_event_id"] == drifting["event_id"]
    assert drift[0]["buckets"] == {"on_hand": {"folded": 10, "snapshot": 7}}


async def test_availability_changes_are_published_for_a_channel_an_admin_adds(
    worker: WorkerProcess, producer: AIOKafkaProducer, store: RedisStore, stack: EmbeddedStack
) -> None:
    sku, site = random_sku(), random_site()
    channel = f"t{uuid.uuid4().hex[:10]}"
    await store.put_channel_policy(
        channel, ChannelPolicy(sites=(site,), safety_stock=2), changed_by="t"
    )
    key = f"{sku}@{site}".encode()

    def ours(record: Any) -> bool:
        return bool(record.key == key and json_value(record).get("channel") == channel)

    # The worker looks for policy changes at most every half second, before a batch: a
    # receipt sent after that has to be folded under the new policy.
    await asyncio.sleep(POLICY_REFRESH_SECONDS + 0.1)
    await send(producer, delta(sku, site, "on_hand", 5))
    await send(producer, delta(sku, site, "on_hand", 5))
    changes = await read_topic(stack, EVENTS_TOPIC, ours, lambda found: len(found) >= 2)
    assert len(changes) == 2
    event = json_value(changes[0])
    assert event["type"] == "availability.changed"
    assert (event["sku"], event["site"], event["version"]) == (sku, site, 1)
    assert (event["atp"], event["previous_atp"]) == (3, 0)  # 5 received, 2 held back
    assert json_value(changes[1])["atp"] == 8


# -- helpers --------------------------------------------------------------------------------


def _at_least(n: int) -> Any:
    return lambda found: len(found) >= n
