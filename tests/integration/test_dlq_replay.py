"""`atp dlq list|replay`: dead letters go back to their topic after a fix, once each."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from atp_service.config import Settings
from atp_service.dlq import DLQ_TOPIC, DeadLetter, read_dead_letters, replay, run_dlq
from atp_service.domain import ItemSite
from atp_service.embedded import EmbeddedStack
from atp_service.store import RedisStore
from atp_service.store.replay_marks import ReplayMarks
from tests.integration._worker_process import WorkerProcess, eventually
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

ERP = "erp.inventory.v1"
# The "fix": the ERP becomes the authority for on_hand at this distributor.
ERP_OWNS_ON_HAND = {
    "on_hand": "erp", "allocated": "wms", "quarantined": "wms", "in_transit": "erp",
}  # fmt: skip


@pytest.fixture
async def producer(stack: EmbeddedStack) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await p.start()
    yield p
    await p.stop()


def erp_delta(sku: str, site: str, bucket: str, qty: int) -> dict[str, Any]:
    return {
        "schema": "inventory.delta.v1", "event_id": random_event_id("erp"), "source": "erp",
        "occurred_at": "2026-11-23T05:00:00Z", "sku": sku, "site": site, "bucket": bucket,
        "delta": qty,
    }  # fmt: skip


@pytest.fixture
async def marks(redis_client: aioredis.Redis) -> ReplayMarks:
    return ReplayMarks(redis_client)


async def letters_of(stack: EmbeddedStack, sku: str) -> list[DeadLetter]:
    letters = await read_dead_letters(stack.bootstrap)
    return [x for x in letters if sku in str(x.record.get("value"))]


async def dead_lettered_receipt(
    stack: EmbeddedStack,
    producer: AIOKafkaProducer,
    worker: WorkerProcess,
    sku: str,
    site: str,
    qty: int,
) -> DeadLetter:
    """An ERP receipt of on_hand (not the ERP's bucket by default), once the running
    ``worker`` has dead-lettered it."""
    value = json.dumps(erp_delta(sku, site, "on_hand", qty)).encode()
    await producer.send_and_wait(ERP, key=f"{sku}@{site}".encode(), value=value)

    async def dead_lettered() -> bool:
        return len(await letters_of(stack, sku)) == 1

    await eventually(dead_lettered, worker)
    [letter] = await letters_of(stack, sku)
    return letter


async def test_replaying_dead_letters_after_a_fix_sends_them_once_however_often(
    stack: EmbeddedStack,
    store: RedisStore,
    marks: ReplayMarks,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    sku, site = random_sku("dlq"), random_site()
    key = f"{sku}@{site}".encode()
    worker = WorkerProcess(stack, tmp_path)
    worker.start()
    try:
        await dead_lettered_receipt(stack, producer, worker, sku, site, 12)
    finally:
        worker.stop()

    listing = io.StringIO()
    settings = Settings(kafka_brokers=[stack.bootstrap], redis_url=stack.redis_url)
    code = await asyncio.to_thread(run_dlq, settings, "list", code="not_authoritative", out=listing)
    assert code == 0 and sku in listing.getvalue()
    assert listing.getvalue().split("\n")[0].split() == [
        "LETTER", "DEAD-LETTERED", "CODE", "FROM", "KEY", "REPLAYED", "DETAIL",
    ]  # fmt: skip

    # The fix: the same consumer group restarts with the corrected authority map.
    fixed = WorkerProcess(stack, tmp_path, app_id=worker.app_id)
    fixed.env["ATP_AUTHORITY"] = json.dumps(ERP_OWNS_ON_HAND)
    fixed.start()
    try:
        letters = await letters_of(stack, sku)
        dry = await replay(stack.bootstrap, letters, marks, dry_run=True)
        assert dry.counts() == (1, 0, 0)
        assert (await replay(stack.bootstrap, letters, marks)).counts() == (1, 0, 0)

        async def folded() -> bool:
            [pos] = await store.read_positions([ItemSite(sku, site)])
            return pos.on_hand == 12

        await eventually(folded, fixed)

        # Replayed again, twice: nothing is sent, the dead-letter topic holds the one letter.
        assert (await replay(stack.bootstrap, letters, marks)).counts() == (0, 1, 0)
        assert (await replay(stack.bootstrap, letters, marks)).counts() == (0, 1, 0)
        await producer.send_and_wait(
            ERP, key=key, value=json.dumps(erp_delta(sku, site, "in_transit", 1)).encode()
        )

        async def marker_folded() -> bool:
            [pos] = await store.read_positions([ItemSite(sku, site)])
            return pos.in_transit == 1

        await eventually(marker_folded, fixed)
    finally:
        fixed.stop()
    [pos] = await store.read_positions([ItemSite(sku, site)])
    assert pos.on_hand == 12
    assert [x.where for x in await letters_of(stack, sku)] == [x.where for x in letters]


async def test_a_replay_refused_again_adds_no_letter_and_goes_again_after_the_fix(
    stack: EmbeddedStack,
    store: RedisStore,
    marks: ReplayMarks,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    sku, site = random_sku("dlq-again"), random_site()
    worker = WorkerProcess(stack, tmp_path)
    worker.start()
    try:
        letter = await dead_lettered_receipt(stack, producer, worker, sku, site, 5)

        # Replayed before the fix: refused again, and said so on the letter's mark.
        assert (await replay(stack.bootstrap, [letter], marks)).counts() == (1, 0, 0)

        async def refused_again() -> bool:
            mark = (await marks.of([(letter.where, letter.digest)])).get(letter.where)
            return mark is not None and mark.failed_again_at is not None

        await eventually(refused_again, worker)
        assert (await marks.of([(letter.where, letter.digest)]))[letter.where].code == (
            "not_authoritative"
        )
    finally:
        worker.stop()
    assert [x.where for x in await letters_of(stack, sku)] == [letter.where]

    fixed = WorkerProcess(stack, tmp_path, app_id=worker.app_id)
    fixed.env["ATP_AUTHORITY"] = json.dumps(ERP_OWNS_ON_HAND)
    fixed.start()
    try:
        assert (await replay(stack.bootstrap, [letter], marks)).counts() == (1, 0, 0)

        async def folded() -> bool:
            [pos] = await store.read_positions([ItemSite(sku, site)])
            return pos.on_hand == 5

        await eventually(folded, fixed)
        assert (await replay(stack.bootstrap, [letter], marks)).counts() == (0, 1, 0)
    finally:
        fixed.stop()
    assert [x.where for x in await letters_of(stack, sku)] == [letter.where]


async def test_two_replays_at_once_send_a_letter_once(
    stack: EmbeddedStack, marks: ReplayMarks, producer: AIOKafkaProducer
) -> None:
    tag = random_event_id("race")
    record = {
        "code": "not_authoritative", "topic": "wms.inventory.v1", "key": None,
        "key_encoding": "none", "value": tag, "value_encoding": "utf-8",
    }  # fmt: skip
    await producer.send_and_wait(DLQ_TOPIC, value=json.dumps(record).encode(), partition=1)
    [letter] = [x for x in await read_dead_letters(stack.bootstrap) if x.record["value"] == tag]

    results = await asyncio.gather(*(replay(stack.bootstrap, [letter], marks) for _ in range(4)))

    assert sorted(r.counts() for r in results) == [(0, 1, 0)] * 3 + [(1, 0, 0)]


async def test_every_record_of_a_write_of_several_is_read(
    stack: EmbeddedStack, producer: AIOKafkaProducer
) -> None:
    """Tansu reports such a partition's end as one past the write's first record."""
    tag = random_event_id("batch")
    futures = [
        await producer.send(
            DLQ_TOPIC, value=json.dumps({"code": "test", "value": f"{tag}-{i}"}).encode(),
            partition=0,
        )
        for i in range(3)
    ]  # fmt: skip
    await asyncio.gather(*futures)

    letters = await read_dead_letters(stack.bootstrap, code="test")

    assert sorted(str(x.record["value"]) for x in letters if tag in str(x.record["value"])) == [
        f"{tag}-{i}" for i in range(3)
    ]
