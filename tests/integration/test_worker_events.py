"""What a running worker publishes without a fold asking for it, seen on Kafka: ATP moved by
a policy change, changes coalesced, snapshot requests on a schedule and the whole
reconciliation loop (request, snapshots, drift). Its own redis-server: a re-evaluation pass
visits every position there, and policy changes are the dataset's."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from itertools import islice, pairwise
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from atp_service import simulate
from atp_service.config import EVENTS_TOPIC
from atp_service.domain import ChannelPolicy
from atp_service.embedded import EmbeddedStack, ManagedProcess
from atp_service.simulate import SimMessage, TrafficGenerator, answer_requests
from atp_service.store import KeySpace, RedisStore, connect
from tests.catalogue import assert_in_catalogue
from tests.integration._worker_process import WorkerProcess, eventually, json_value, read_topic
from tests.random_refs import random_event_id, random_site, random_sku

pytestmark = pytest.mark.integration

WMS = "wms.inventory.v1"
RECONCILE_EVERY = 2


@pytest.fixture(scope="module")
def worker(
    stack: EmbeddedStack, module_redis: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(stack, tmp_path_factory.mktemp("worker-events"))
    process.env["ATP_REDIS_URL"] = f"redis://127.0.0.1:{module_redis.port}/0"
    process.env["ATP_EVENTS_COALESCE_MS"] = "200"
    process.env["ATP_RECONCILE_EVERY_SECONDS"] = str(RECONCILE_EVERY)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def store(module_redis: ManagedProcess) -> AsyncIterator[RedisStore]:
    client = connect(f"redis://127.0.0.1:{module_redis.port}/0", timeout=2.0, max_connections=8)
    yield RedisStore(client, KeySpace(16), dedup_window_seconds=86_400)
    await client.aclose()


def receipt(sku: str, site: str, qty: int) -> dict[str, Any]:
    return {
        "schema": "inventory.delta.v1", "event_id": random_event_id("wms"), "source": "wms",
        "occurred_at": "2026-11-23T05:00:00Z", "sku": sku, "site": site,
        "bucket": "on_hand", "delta": qty,
    }  # fmt: skip


async def send(producer: AIOKafkaProducer, body: dict[str, Any]) -> None:
    key = f"{body['sku']}@{body['site']}".encode()
    await producer.send_and_wait(WMS, json.dumps(body).encode(), key=key)


async def folded(store: RedisStore, sku: str, site: str, on_hand: int) -> bool:
    raw = await store.redis.hgetall(store.keys.position(sku, site))
    return int(raw.get("oh", 0)) == on_hand


def changes(sku: str, site: str, channel: str) -> Any:
    key = f"{sku}@{site}".encode()
    needle = f'"channel":"{channel}"'.encode()
    return lambda r: r.key == key and b'"availability.changed"' in r.value and needle in r.value


async def test_a_policy_change_reaches_kafka_without_a_fold(
    worker: WorkerProcess, store: RedisStore, producer: AIOKafkaProducer, stack: EmbeddedStack
) -> None:
    sku, site = random_sku(), random_site()
    await send(producer, receipt(sku, site, 9))
    await eventually(lambda: folded(store, sku, site, 9), worker)
    await store.seed_channel_policies({"web": ChannelPolicy()})  # web sells as "*" did

    await store.put_channel_policy(
        "web", ChannelPolicy(safety_stock=3), changed_by="ops", correlation_id="req-19"
    )

    [record] = await read_topic(
        stack, EVENTS_TOPIC, keep=changes(sku, site, "web"), done=lambda found: bool(found),
        patience=60,  # the contract: within a minute
    )  # fmt: skip
    event = json_value(record)
    assert (event["previous_atp"], event["atp"]) == (9, 6)
    assert (event["changed_by"], event["correlation_id"]) == ("ops", "req-19")
    assert_in_catalogue(event)


async def test_a_burst_of_changes_reaches_kafka_coalesced_and_in_order(
    worker: WorkerProcess, store: RedisStore, producer: AIOKafkaProducer, stack: EmbeddedStack
) -> None:
    sku, site = random_sku(), random_site()
    for _ in range(40):
        await send(producer, receipt(sku, site, 1))
    await eventually(lambda: folded(store, sku, site, 40), worker)
    found = await read_topic(
        stack, EVENTS_TOPIC, keep=changes(sku, site, "*"),
        done=lambda found: bool(found) and json_value(found[-1])["atp"] == 40, patience=30,
    )  # fmt: skip
    events = [json_value(r) for r in found]
    assert len(events) < 40  # a 200 ms window: the 40 folds came in a few
    assert events[0]["previous_atp"] == 0 and events[-1]["atp"] == 40
    for before, after in pairwise(events):
        assert after["version"] > before["version"] and after["previous_atp"] == before["atp"]
    assert any(e.get("coalesced", 1) > 1 for e in events)
    for event in events:
        assert_in_catalogue(event)


async def test_the_worker_asks_every_source_for_snapshots_on_its_schedule(
    worker: WorkerProcess, stack: EmbeddedStack
) -> None:
    since = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    found = await read_topic(
        stack, EVENTS_TOPIC,
        keep=lambda r: b'"inventory.snapshot_requested"' in r.value
        and json_value(r)["occurred_at"] >= since,
        done=lambda found: {json_value(r)["source"] for r in found} == {"wms", "erp"},
        patience=30,
    )  # fmt: skip
    for record in found:
        body = json_value(record)
        assert record.key == body["source"].encode()
        assert (body["site"], body["requested_by"]) == (None, "schedule")
        assert_in_catalogue(body)


async def test_a_lost_message_is_found_by_the_loop_request_snapshots_drift(
    worker: WorkerProcess,
    store: RedisStore,
    producer: AIOKafkaProducer,
    stack: EmbeddedStack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulator's WMS sends its traffic, but one of its receipts never arrives; the
    worker's next request is answered with snapshots, and the fold reports the drift."""
    monkeypatch.setattr(simulate, "LOST_PICK_RATE", 0.0)  # the one loss below, no other
    generator = TrafficGenerator(skus=5, sites=1, seed=19)
    generator.sites = [random_site("loop")]
    messages = [m for m in islice(generator, 40) if m.kind not in _BAD]
    for m in messages:
        await producer.send_and_wait(m.topic, m.value, key=m.key)
    (sku, site), pos = next(iter(generator.shadow.items()))
    await eventually(lambda: folded(store, sku, site, pos.on_hand), worker)
    pos.on_hand += 7  # a receipt the WMS counted and the service never heard of

    answers: deque[SimMessage] = deque()
    answered: set[str] = set()
    stop, ready = asyncio.Event(), asyncio.Event()
    listening = asyncio.create_task(
        answer_requests(stack.bootstrap, generator, answers, stop, ready=ready)
    )

    async def forward() -> None:
        while not stop.is_set():
            while answers:
                m = answers.popleft()
                answered.add(json.loads(m.value)["event_id"])
                await producer.send_and_wait(m.topic, m.value, key=m.key)
            await asyncio.sleep(0.05)

    forwarding = asyncio.create_task(forward())
    try:
        await asyncio.wait_for(ready.wait(), 30)
        key = f"{sku}@{site}".encode()
        [record] = await read_topic(
            stack, EVENTS_TOPIC,
            keep=lambda r: r.key == key
            and b'"inventory.drift_detected"' in r.value
            and json_value(r)["snapshot_event_id"] in answered,
            done=lambda found: bool(found), patience=60,
        )  # fmt: skip
    finally:
        stop.set()
        await listening
        await forwarding
    drift = json_value(record)
    assert drift["buckets"]["on_hand"] == {"folded": pos.on_hand - 7, "snapshot": pos.on_hand}
    assert_in_catalogue(drift)


_BAD = ("malformed_json", "unknown_schema", "schema_violation", "not_authoritative")
